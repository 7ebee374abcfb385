"""The Atari recipes against BLIP's official RL command: online EWC's Fisher estimator (RL/rl_module/ppo_ewc.py),
the episode cap of gym's NoFrameskip-v4 ids, and the official evaluation (RL/rl_module/evaluation.py)."""
from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl.config.options import check_options
from cl.errors import ConfigError
from cl.stats.per_sample import sample_labels
from rl.approaches import OnlineEWC, policy_fisher
from rl.envs import AtariGames, StepResult, gym_v4_max_frames
from rl.evaluate import EvalSettings, play
from rl.network import ActorCritic, minatar_cnn
from tests.conftest import compose_config

ATARI6 = ["kung_fu_master", "boxing", "jamesbond", "krull", "riverraid", "space_invaders"]


def tiny_agent(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    return ActorCritic(minatar_cnn(2, filters=3, features=8), (2, 10, 10), [4, 3], obs_scale=1.0)


def states(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 2, 10, 10), generator=g) < 0.3).to(torch.uint8)


def fisher_by_hand(agent: ActorCritic, t: int, obs: torch.Tensor, minibatches: int, seed: int,
                   per_sample: bool) -> dict[str, torch.Tensor]:
    """The official estimate written out: K minibatches of B = N // K shuffled states, actions sampled from the
    policy, loss −mean log π(a|s), F = (1/K) Σ_k (∂loss_k/∂θ)² (per_sample: the mean of each sample's own g²),
    drawing the same permutation, noise and actions as `policy_fisher` under the same seed."""
    torch.manual_seed(seed)
    size = len(obs) // minibatches
    order = torch.randperm(len(obs))[:size * minibatches]
    noise = torch.rand(len(order))
    params = dict(agent.trunk.named_parameters())
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    for k in range(minibatches):
        idx = order[k * size:(k + 1) * size]
        logits = agent.logits(obs[idx], t)
        actions = sample_labels(logits, noise[k * size:(k + 1) * size])
        nll = -F.log_softmax(logits, 1).gather(1, actions[:, None]).squeeze(1)
        losses = [nll.mean()] if not per_sample else list(nll)
        for loss in losses:
            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
            for name, g in zip(params, grads):
                fisher[name] += g.square()
    count = minibatches if not per_sample else size * minibatches
    return {k: v / count for k, v in fisher.items()}


# --- 1. online EWC's Fisher -------------------------------------------------------------------------------------------
def test_minibatch_mean_fisher_is_the_mean_square_of_minibatch_mean_gradients():
    agent, obs = tiny_agent(), states(50)
    torch.manual_seed(7)
    ours = policy_fisher(agent, 1, obs, 4, "minibatch_mean")  # 4 minibatches of 12, 2 states dropped
    official = fisher_by_hand(agent, 1, obs, 4, seed=7, per_sample=False)
    per_sample = fisher_by_hand(agent, 1, obs, 4, seed=7, per_sample=True)
    assert set(ours) == set(official) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    for name in ours:
        torch.testing.assert_close(ours[name], official[name], rtol=1e-4, atol=1e-12)
    # the two estimators differ by about the minibatch size (the score's mean is zero): the old one was not this
    ratio = sum(v.sum() for v in per_sample.values()) / sum(v.sum() for v in official.values())
    assert ratio > 3


def test_per_sample_fisher_is_the_mean_of_per_sample_squares():
    agent, obs = tiny_agent(), states(48)
    torch.manual_seed(3)
    ours = policy_fisher(agent, 0, obs, 3, "per_sample")
    by_hand = fisher_by_hand(agent, 0, obs, 3, seed=3, per_sample=True)
    for name in ours:
        torch.testing.assert_close(ours[name], by_hand[name], rtol=1e-4, atol=1e-12)


def test_online_ewc_sums_the_official_fishers_and_penalizes_half_lambda():
    agent, obs = tiny_agent(), states(40)
    ewc = OnlineEWC(lamb=5000.0, gamma=1.0, fisher_minibatches=4, fisher_estimator="minibatch_mean")
    ewc.attach(agent)
    expected = {k: torch.zeros_like(p) for k, p in agent.trunk.named_parameters()}
    for t in range(2):
        torch.manual_seed(11 + t)
        ewc.on_train_end(agent, t, obs)
        for name, value in fisher_by_hand(agent, t, obs, 4, seed=11 + t, per_sample=False).items():
            expected[name] += value  # γ = 1: the Fishers add up (ppo_ewc.py store_fisher_n_params)
        with torch.no_grad():
            for p in agent.trunk.parameters():
                p.add_(0.01)
    importance = ewc.terms[0].importance.as_dict()
    for name in expected:
        torch.testing.assert_close(importance[name], expected[name], rtol=1e-4, atol=1e-12)
    ewc.on_train_start(2)
    anchor = ewc.terms[0].anchor.as_dict()
    penalty = sum((expected[n] * (p.detach() - anchor[n]).square()).sum() for n, p in agent.trunk.named_parameters())
    assert ewc.approach_info()["penalty"] == pytest.approx(float(5000.0 / 2 * penalty), rel=1e-4)


@pytest.mark.parametrize("key,value", [("rl_approach.fisher_estimator", "exact"),
                                       ("rl_stream.max_frames_per_episode", "gym")])
def test_an_unknown_estimator_or_frame_cap_is_refused_before_the_run(key, value, tmp_path):
    cfg = compose_config(["experiment=rl_atari6_ewc", f"{key}={value}"], tmp_path)
    with pytest.raises(ConfigError, match=f"^{key}='{value}' (is not|must be)"):
        check_options(cfg)


def test_only_the_atari6_ewc_recipe_takes_the_official_estimator(tmp_path):
    def approach(recipe):
        return hydra.utils.instantiate(compose_config([f"experiment={recipe}"], tmp_path).rl_approach)

    assert approach("rl_atari6_ewc").fisher_estimator == "minibatch_mean"
    assert approach("rl_minatar_ewc").fisher_estimator == "per_sample"  # our own stream: the textbook Fisher


# --- 2. the episode cap -----------------------------------------------------------------------------------------------
def test_gym_v4_caps_as_gym_registered_noframeskip_v4():
    # 100,000 × the Deterministic frame skip: 4, but 3 for SpaceInvaders (gym/envs/__init__.py, gym 0.18.3)
    assert [gym_v4_max_frames(g) for g in ATARI6] == [400_000] * 5 + [300_000]


def test_the_atari6_caps_reach_the_environments(tmp_path):
    cfg = compose_config(["experiment=rl_atari6_ft"], tmp_path)
    stream = hydra.utils.instantiate(cfg.rl_stream)
    for t, game in enumerate(ATARI6):
        for train in (True, False):
            envs = stream.make(t, 1, 0, train=train)
            assert envs.max_frames_per_episode == gym_v4_max_frames(game), (game, train)
            envs.close()


def test_the_frame_cap_ends_games_in_ale():
    envs = AtariGames("pong", 2, 0, max_frames_per_episode=40)  # 10 agent steps at frame skip 4
    try:
        envs.reset()
        ends = [envs.step(np.zeros(2, dtype=np.int64)).game_over.all() for _ in range(10)]
        assert ends == [False] * 9 + [True]
    finally:
        envs.close()


# --- 3. the evaluation ------------------------------------------------------------------------------------------------
class ScriptedGames:
    """Environments whose games last `lengths[i]` steps and score `returns[i][k]` for environment i's k-th game
    (cyclically), in equal rewards at every step."""

    def __init__(self, lengths: list[int], returns: list[list[float]]):
        self.lengths, self.returns, self.num_envs = lengths, returns, len(lengths)

    def reset(self) -> np.ndarray:
        self.steps, self.games = np.zeros(self.num_envs, int), np.zeros(self.num_envs, int)
        return np.zeros((self.num_envs, 1, 1, 1), np.uint8)

    def step(self, actions) -> StepResult:
        self.steps += 1
        over = self.steps == np.array(self.lengths)
        score = np.array([r[k % len(r)] for r, k in zip(self.returns, self.games)])
        reward = (score / np.array(self.lengths)).astype(np.float32)
        final = np.where(over, score, 0.0)
        self.games[over] += 1
        self.steps[over] = 0
        return StepResult(np.zeros((self.num_envs, 1, 1, 1), np.uint8), reward, over, over, final)

    @staticmethod
    def frame(obs):
        return obs[0]


def test_first_to_finish_takes_the_first_games_to_end_across_environments():
    envs = ScriptedGames([5, 100, 3], [[1.0, 1.5], [10.0], [2.0, 4.0, 8.0]])
    settings = EvalSettings(episodes=3, episodes_from="first_to_finish", max_steps=None)
    scores, _ = play(lambda obs: np.zeros(len(obs), int), envs, settings)
    assert scores == [2.0, 1.0, 4.0]  # steps 3 (env 2), 5 (env 0), 6 (env 2); env 1's long game never counts
    each, _ = play(lambda obs: np.zeros(len(obs), int), envs, EvalSettings(episodes=3, max_steps=None))
    assert each == [1.0, 10.0, 2.0]  # each_env: every environment's first game


def test_first_to_finish_keeps_the_later_environments_of_the_last_step_as_the_official_deque():
    envs = ScriptedGames([4, 4, 2], [[1.0], [2.0], [3.0, 4.0]])
    scores, _ = play(lambda obs: np.zeros(len(obs), int), envs,
                     EvalSettings(episodes=2, episodes_from="first_to_finish", max_steps=None))
    # step 2: env 2 (3.0); step 4: envs 0, 1, 2 end together (1.0, 2.0, 4.0); a deque of 2 keeps the last two
    assert scores == [2.0, 4.0]


def test_max_steps_counts_the_games_it_still_needs_as_they_stand():
    envs = ScriptedGames([2, 50], [[1.0, 1.0, 1.0], [9.0]])
    scores, _ = play(lambda obs: np.zeros(len(obs), int), envs,
                     EvalSettings(episodes=2, episodes_from="first_to_finish", max_steps=3))
    assert scores == [1.0, 0.5]  # one game finished within 3 steps; env 0's running game counts its 0.5 so far


def test_the_official_eval_config_is_the_official_protocol(tmp_path):
    settings = hydra.utils.instantiate(compose_config(["experiment=rl_atari6_blip"], tmp_path).rl_eval)
    assert (settings.episodes, settings.episodes_from, settings.every_updates, settings.max_steps) == \
        (10, "first_to_finish", 100, None)
    with pytest.raises(ConfigError, match="episodes_from"):
        EvalSettings(episodes_from="all")
