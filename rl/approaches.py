"""The continual-RL approaches: what happens around PPO's optimizer steps and at the end of each game. They reuse
the supervised side's pieces: BLIP's quantizer and Fisher scale (cl/blip), the exact per-sample Fisher
(cl/stats/per_sample.py) and the folded quadratic penalty of the regularizers (cl/approaches/regularization/regularizer.py).

- finetune: plain PPO on every game (the trunk is shared, each game has its own heads).
- ft_fix: the trunk trains on the first game only, then stays as it is; later games train their heads.
- blip: BLIP with the official RL settings (bound 6/√max(fan_in, fan_out), orthogonal init, F_prior 5e-18): the
  trunk is projected into its frozen bits' box after every Adam step; at the end of a game the Fisher of the
  policy's log-likelihood of sampled actions on the last rollout grows the bits.
- online_ewc: the trunk is pulled toward the last game's parameters by (λ/2)·Σ F (θ − θ*)², F the summed Fisher of
  the same policy log-likelihood (γ = 1 sums, as the official baseline). `fisher_estimator` picks how F is estimated
  from the minibatches: `per_sample`, the textbook mean of squared per-sample gradients, or `minibatch_mean`, the
  official baseline's mean over minibatches of the squared minibatch-mean gradient (about 1/B of the former).
"""
from __future__ import annotations

import torch
from torch import nn

from cl.approaches.regularization.regularizer import FoldedQuadratic, QuadraticTerms
from cl.stats.fisher import official_scale_fisher
from cl.blip.quant import QuantSettings, TrunkQuantizer, quantized_layers
from cl.errors import ConfigError
from cl.models.network import layer_labels
from cl.stats.per_sample import gradient_statistics, sampled_label_nll
from rl.network import ActorCritic


FISHER_ESTIMATORS = ("per_sample", "minibatch_mean")


def policy_fisher_sums(agent: ActorCritic, t: int, obs: torch.Tensor, minibatches: int,
                       per_sample: bool = True) -> tuple[dict[str, torch.Tensor], int, int]:
    """Σ_i g_i² over the trunk's Linear/Conv2d parameters (names in the trunk), g_i the gradient of
    −log π_t(a_i|s_i) with a_i sampled from the policy itself, over `minibatches` equal minibatches of the states
    `obs` (the remainder dropped, as the official code). With `per_sample=False`, Σ_k (Σ_{i∈k} g_i)² over the
    minibatches k instead. Returns (sums, samples, minibatch size)."""
    layers = dict(quantized_layers(agent.trunk))
    size = len(obs) // minibatches
    if size < 1:
        raise ConfigError(f"the Fisher needs at least fisher_minibatches={minibatches} states in the last rollout "
                          f"(it has {len(obs)})")
    order = torch.randperm(len(obs), device=obs.device)[:size * minibatches]
    noise = torch.rand(len(order), device=obs.device)
    batches = ((obs[order[i:i + size]], noise[i:i + size]) for i in range(0, len(order), size))
    sums, count = gradient_statistics(layers, lambda x: agent.logits(x, t), batches, sampled_label_nll, "square",
                                      per_sample=per_sample)
    return sums, count, size


def policy_fisher(agent: ActorCritic, t: int, obs: torch.Tensor, minibatches: int,
                  estimator: str) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the trunk for game t's policy on the states `obs` (see `policy_fisher_sums`), with
    K = `minibatches` minibatches of B states, N = K·B:
    - per_sample: (1/N) Σ_i g_i², the textbook (per-sample) Fisher;
    - minibatch_mean: (1/K) Σ_k ḡ_k², ḡ_k the gradient of minibatch k's mean loss −(1/B) Σ_{i∈k} log π(a_i|s_i):
      BLIP's official online-EWC baseline (RL/rl_module/ppo_ewc.py estimate_fisher: 32 minibatches of the last
      rollout, F += B·ḡ² per minibatch, then F /= N). For the score function ḡ_k averages out to about 1/B of the
      per-sample Fisher."""
    per_sample = estimator == "per_sample"
    sums, count, size = policy_fisher_sums(agent, t, obs, minibatches, per_sample=per_sample)
    # minibatch_mean: the sums hold (B·ḡ_k)², so Σ_k ḡ_k² / K = sums / (B²·K) = sums / (B·N)
    scale = count if per_sample else count * size
    return {k: v / scale for k, v in sums.items()}


class RLApproach(nn.Module):
    """Fine-tuning, and the hooks the others override. Its buffers (the approach's state) are checkpointed beside
    the agent's."""

    name = "finetune"

    def attach(self, agent: ActorCritic) -> None:
        """Called once, after the agent is built."""

    def trainable_parameters(self, agent: ActorCritic, t: int) -> list[nn.Parameter]:
        return list(agent.parameters())

    def start_task(self, t: int) -> None:
        pass

    def before_optimizer_step(self) -> None:
        pass

    def after_optimizer_step(self) -> None:
        pass

    def end_task(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        """After game t, with the states of its last rollout."""

    def info(self) -> dict:
        return {}


class FineTune(RLApproach):
    name = "finetune"


class FineTuneFixed(RLApproach):
    name = "ft_fix"

    def trainable_parameters(self, agent: ActorCritic, t: int) -> list[nn.Parameter]:
        if t == 0:
            return list(agent.parameters())
        for p in agent.trunk.parameters():
            p.requires_grad_(False)  # no gradient computed for it: the trunk stays bit-exact
        return [*agent.actors[t].parameters(), *agent.critics[t].parameters()]


class BLIP(RLApproach):
    name = "blip"

    def __init__(self, F_prior: float = 5e-18, max_bit: int = 20, bound_scale: float = 6.0, init: str = "orthogonal",
                 prior_fan: str = "max", fisher_minibatches: int = 32):
        super().__init__()
        self.settings = QuantSettings(F_prior, max_bit, bound_scale, init, prior_fan)
        self.fisher_minibatches = fisher_minibatches
        self.quantizer: TrunkQuantizer | None = None
        self.register_buffer("capacity_history", torch.zeros(0))  # capacity after each finished game (checkpointed)

    def attach(self, agent: ActorCritic) -> None:
        self.quantizer = TrunkQuantizer(agent.trunk, self.settings)
        self.quantizer.initialize()
        self.labels = layer_labels(agent.trunk)

    def start_task(self, t: int) -> None:
        self.quantizer.prepare_box()

    def after_optimizer_step(self) -> None:
        self.quantizer.project_()

    def end_task(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        """The official order: Fisher at the trained (float) weights, bit growth, re-quantization, running mean."""
        sums, count, size = policy_fisher_sums(agent, t, states, self.fisher_minibatches)
        self.quantizer.freeze(official_scale_fisher(sums, count, size), t)
        self.quantizer.drop_box()
        self.capacity_history = torch.cat([self.capacity_history.cpu(), torch.tensor([self.quantizer.capacity()])])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        history = state_dict.get(prefix + "capacity_history")
        if history is not None:  # one entry per finished game: take the saved length
            self.capacity_history = torch.zeros_like(history)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def info(self) -> dict:
        per_layer = self.quantizer.capacity_per_layer()
        return {"capacity": self.quantizer.capacity(), "capacity_per_task": self.capacity_history.tolist(),
                "capacity_per_layer": {self.labels[k]: v for k, v in per_layer.items()}}


class OnlineEWC(RLApproach):
    name = "online_ewc"

    def __init__(self, lamb: float = 5000.0, gamma: float = 1.0, fisher_minibatches: int = 32,
                 fisher_estimator: str = "per_sample"):
        super().__init__()
        if lamb < 0 or not 0 <= gamma <= 1:
            raise ConfigError(f"rl_approach: online_ewc needs lamb >= 0 and gamma in [0, 1] (got {lamb}, {gamma})")
        if fisher_estimator not in FISHER_ESTIMATORS:
            raise ConfigError(f"rl_approach.fisher_estimator={fisher_estimator!r} is not one of "
                              f"{', '.join(FISHER_ESTIMATORS)}")
        self.lamb, self.gamma, self.fisher_minibatches = lamb, gamma, fisher_minibatches
        self.fisher_estimator = fisher_estimator
        self.register_buffer("tasks_consolidated", torch.zeros((), dtype=torch.long))
        self.terms: QuadraticTerms | None = None
        self._folded: FoldedQuadratic | None = None

    def attach(self, agent: ActorCritic) -> None:
        self.regularized = dict(agent.trunk.named_parameters())  # the trunk only, as the official baseline
        self.terms = QuadraticTerms(self.regularized)
        self.terms.add()

    def start_task(self, t: int) -> None:
        self._folded = (FoldedQuadratic(list(self.regularized.values()), list(self.terms), self.lamb / 2)
                        if int(self.tasks_consolidated) else None)

    def before_optimizer_step(self) -> None:
        if self._folded is not None:
            self._folded.add_gradient()

    def end_task(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        fisher = policy_fisher(agent, t, states, self.fisher_minibatches, self.fisher_estimator)
        term = self.terms[0]
        with torch.no_grad():
            for name, value in term.importance.as_dict().items():
                value.mul_(self.gamma).add_(fisher[name])
            term.anchor.copy_([p.detach() for p in self.regularized.values()])
        self.tasks_consolidated += 1
        self._folded = None

    def info(self) -> dict:
        return {"penalty": float(self._folded.value()) if self._folded is not None else 0.0}
