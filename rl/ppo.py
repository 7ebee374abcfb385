"""PPO on one game of the stream, readable top to bottom (Schulman et al. 2017; the settings and loss of BLIP's
official RL code, itself from ikostrikov's pytorch-a2c-ppo-acktr):

    for each update:
        learning rate ← lr · (1 − update / updates)                 linear decay within the task
        roll out `num_steps` steps of `num_envs` games with the sampling policy of head t
        advantages by GAE(γ, λ), bootstrapped from the last value; returns = advantages + values
        advantages normalized over the whole rollout
        `epochs` times, over `minibatches` shuffled minibatches:
            ratio = π(a|s) / π_old(a|s)
            policy loss  = −mean(min(ratio·A, clip(ratio, 1 ± clip)·A))
            value loss   = ½·mean(max((V − R)², (V_old + clip(V − V_old, ± clip) − R)²))
            loss = policy loss + value_coef · value loss − entropy_coef · entropy
            backward → approach.on_before_optimizer_step (EWC's penalty gradient) → clip the gradient norm
            → Adam step → approach.on_after_optimizer_step (BLIP's projection)

Rewards are clipped to their sign for training; `done` (a lost life or the end of a game) stops the bootstrap.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cl.config.options import Bool, Float, Int, options
from cl.errors import ConfigError
from rl.approaches import RLApproach
from rl.envs import AtariGames, MinAtarGames
from rl.network import ActorCritic


@options(lr=Float(gt=0), adam_eps=Float(gt=0), linear_lr_decay=Bool(), num_envs=Int(ge=1), num_steps=Int(ge=1),
         epochs=Int(ge=1), minibatches=Int(ge=1), clip=Float(gt=0), clip_value_loss=Bool(), value_coef=Float(ge=0),
         entropy_coef=Float(ge=0), gamma=Float(ge=0, le=1), gae_lambda=Float(ge=0, le=1), max_grad_norm=Float(gt=0))
@dataclass
class PPOSettings:
    lr: float = 2.5e-4
    adam_eps: float = 1e-5
    linear_lr_decay: bool = True
    num_envs: int = 16
    num_steps: int = 125
    epochs: int = 4
    minibatches: int = 8
    clip: float = 0.1
    clip_value_loss: bool = True
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_grad_norm: float = 0.5

    def __post_init__(self):
        if (self.num_envs * self.num_steps) % self.minibatches:
            raise ConfigError(f"ppo: num_envs·num_steps = {self.num_envs * self.num_steps} is not divisible by "
                              f"ppo.minibatches={self.minibatches}; pick sizes that divide")

    @property
    def batch(self) -> int:
        return self.num_envs * self.num_steps

    def updates(self, steps: int) -> int:
        if steps < self.batch:
            raise ConfigError(f"rl_stream.steps_per_task={steps} is less than one rollout of ppo.num_envs × "
                              f"ppo.num_steps = {self.batch} steps")
        return steps // self.batch


@dataclass
class UpdateStats:
    update: int  # 1-based within the task
    env_steps: int  # within the task
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    lr: float
    episode_returns: list[float]  # raw returns of the games finished during this rollout
    rollout_seconds: float
    update_seconds: float


class Rollout:
    """One rollout's tensors on the training device; observations stay uint8."""

    def __init__(self, s: PPOSettings, obs_shape: tuple[int, ...], device: torch.device):
        S, N = s.num_steps, s.num_envs
        self.obs = torch.zeros((S, N, *obs_shape), dtype=torch.uint8, device=device)
        self.actions = torch.zeros((S, N), dtype=torch.long, device=device)
        self.logprobs = torch.zeros((S, N), device=device)
        self.rewards = torch.zeros((S, N), device=device)
        self.dones = torch.zeros((S, N), device=device)  # 1 where the step ended a life or a game
        self.values = torch.zeros((S, N), device=device)

    def advantages(self, last_value: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
        adv = torch.zeros_like(self.rewards)
        running = torch.zeros_like(last_value)
        for step in reversed(range(len(self.rewards))):
            next_value = last_value if step + 1 == len(self.rewards) else self.values[step + 1]
            live = 1.0 - self.dones[step]
            delta = self.rewards[step] + gamma * next_value * live - self.values[step]
            running = delta + gamma * lam * live * running
            adv[step] = running
        return adv


def train_game(agent: ActorCritic, approach: RLApproach, envs: AtariGames | MinAtarGames, t: int, updates: int,
               s: PPOSettings, device: torch.device, on_update: Callable[[UpdateStats], None]) -> Rollout:
    """`updates` PPO updates on game t; calls `on_update` after each. Returns the last rollout (BLIP's and EWC's
    task-end Fisher reads its observations)."""
    params = approach.trainable_parameters(agent, t)
    optimizer = torch.optim.Adam(params, lr=s.lr, eps=s.adam_eps)  # a fresh Adam per task, as the official code
    rollout = Rollout(s, envs.obs_shape, device)
    obs = torch.as_tensor(envs.reset(), device=device)
    for update in range(1, updates + 1):
        lr = s.lr * (1.0 - (update - 1) / updates) if s.linear_lr_decay else s.lr
        optimizer.param_groups[0]["lr"] = lr

        # --- rollout -------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        finished: list[float] = []
        with torch.no_grad():
            for step in range(s.num_steps):
                logits, value = agent(obs, t)
                dist = torch.distributions.Categorical(logits=logits)
                action = dist.sample()
                rollout.obs[step], rollout.actions[step] = obs, action
                rollout.logprobs[step], rollout.values[step] = dist.log_prob(action), value
                result = envs.step(action.cpu().numpy())
                rollout.rewards[step] = torch.as_tensor(np.sign(result.reward), device=device)
                rollout.dones[step] = torch.as_tensor(result.done, device=device, dtype=torch.float32)
                finished += result.finished_returns
                obs = torch.as_tensor(result.obs, device=device)
            _, last_value = agent(obs, t)
            advantages = rollout.advantages(last_value, s.gamma, s.gae_lambda)
        returns = advantages + rollout.values
        t1 = time.perf_counter()

        # --- update --------------------------------------------------------------------------------------------
        b_obs = rollout.obs.flatten(0, 1)
        b_actions, b_logprobs = rollout.actions.flatten(), rollout.logprobs.flatten()
        b_values, b_returns = rollout.values.flatten(), returns.flatten()
        b_adv = advantages.flatten()
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-5)
        size = s.batch // s.minibatches
        sums = torch.zeros(5, device=device)  # policy loss, value loss, entropy, approx. KL, clip fraction
        for _ in range(s.epochs):
            order = torch.randperm(s.batch, device=device)
            for start in range(0, s.batch, size):
                mb = order[start:start + size]
                logits, value = agent(b_obs[mb], t)
                dist = torch.distributions.Categorical(logits=logits)
                log_ratio = dist.log_prob(b_actions[mb]) - b_logprobs[mb]
                ratio = log_ratio.exp()
                adv = b_adv[mb]
                policy_loss = -torch.min(ratio * adv, ratio.clamp(1 - s.clip, 1 + s.clip) * adv).mean()
                value_loss = (value - b_returns[mb]).square()
                if s.clip_value_loss:
                    clipped = b_values[mb] + (value - b_values[mb]).clamp(-s.clip, s.clip)
                    value_loss = torch.max(value_loss, (clipped - b_returns[mb]).square())
                value_loss = 0.5 * value_loss.mean()
                entropy = dist.entropy().mean()
                loss = policy_loss + s.value_coef * value_loss - s.entropy_coef * entropy

                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                approach.on_before_optimizer_step(optimizer)
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                optimizer.step()
                approach.on_after_optimizer_step()
                with torch.no_grad():
                    sums += torch.stack([policy_loss, value_loss, entropy, ((ratio - 1) - log_ratio).mean(),
                                         ((ratio - 1).abs() > s.clip).float().mean()]).detach()
        t2 = time.perf_counter()
        means = (sums / (s.epochs * s.minibatches)).tolist()
        on_update(UpdateStats(update, update * s.batch, *means, lr, finished, t1 - t0, t2 - t1))
    return rollout
