"""The continual-RL approaches: what happens around PPO's optimizer steps and at the end of each game, in hooks named
as the supervised approaches' for the same moments (`on_train_start`, `on_before_optimizer_step`,
`on_after_optimizer_step`, `on_train_end`, `penalty`, `approach_info`; cl/approaches/base.py). They reuse the
supervised side's pieces: BLIP's quantizer (cl/blip), the one Fisher sampler (cl/stats/fisher.py), the folded
quadratic penalty of the regularizers (cl/approaches/regularization/regularizer.py) and online EWC's update
(cl/approaches/regularization/online_ewc.py).

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

from cl.approaches.regularization.online_ewc import online_update
from cl.approaches.regularization.regularizer import FoldedQuadratic, QuadraticTerms
from cl.config.options import Choice, Float, Int, options
from cl.stats.fisher import FisherSampling, sample_fisher
from cl.blip.quant import QUANT_OPTIONS, QuantSettings, TrunkQuantizer, quantized_layers
from cl.errors import ConfigError
from cl.models.network import layer_labels
from rl.network import ActorCritic


FISHER_ESTIMATORS = ("per_sample", "minibatch_mean")


# each estimator as a sampling of the one Fisher sampler: (per-sample gradients, normalization)
_POLICY_FISHERS = {"per_sample": (True, "mean"), "minibatch_mean": (False, "minibatch_mean"),
                   "official_scale": (True, "official_scale")}


def policy_fisher(agent: ActorCritic, t: int, obs: torch.Tensor, minibatches: int,
                  estimator: str) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of the trunk's Linear/Conv2d parameters (names in the trunk) for game t's policy on the
    states `obs`: g_i is the gradient of −log π_t(a_i|s_i), a_i sampled from the policy itself, over K =
    `minibatches` equal minibatches of B shuffled states (the remainder dropped, as the official code), N = K·B; the
    permutation and the actions' noise come from the global RNG of the states' device, the agent's mode is left as
    it is.
    - per_sample: (1/N) Σ_i g_i², the textbook (per-sample) Fisher;
    - minibatch_mean: (1/K) Σ_k ḡ_k², ḡ_k the gradient of minibatch k's mean loss −(1/B) Σ_{i∈k} log π(a_i|s_i):
      BLIP's official online-EWC baseline (RL/rl_module/ppo_ewc.py estimate_fisher: 32 minibatches of the last
      rollout, F += B·ḡ² per minibatch, then F /= N). For the score function ḡ_k averages out to about 1/B of the
      per-sample Fisher;
    - official_scale: BLIP's, (1/N) Σ_i g_i² / B², the official 1/B² scale (cl/stats/fisher.py) with B the
      minibatch size."""
    layers = dict(quantized_layers(agent.trunk))
    size = len(obs) // minibatches
    if size < 1:
        raise ConfigError(f"the Fisher needs at least fisher_minibatches={minibatches} states in the last rollout "
                          f"(it has {len(obs)})")
    per_sample, normalize = _POLICY_FISHERS[estimator]
    sampling = FisherSampling(size * minibatches, size, per_sample=per_sample, draws="device", training=None,
                              normalize=normalize)
    return sample_fisher(agent, layers, lambda x: agent.logits(x, t), obs, sampling)


class RLApproach(nn.Module):
    """Fine-tuning, and the hooks the others override, named as the supervised approaches' hooks for the same
    moments (cl/approaches/base.py, cl/approaches/regularization/regularizer.py), with what PPO's loop hands them.
    Its buffers (the approach's state) are checkpointed beside the agent's."""

    name = "finetune"

    def attach(self, agent: ActorCritic) -> None:
        """Called once, after the agent is built."""

    def trainable_parameters(self, agent: ActorCritic, t: int) -> list[nn.Parameter]:
        return list(agent.parameters())

    def on_train_start(self, t: int) -> None:
        """Before game t trains."""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """After backward, before the gradient is clipped and `optimizer` steps (online EWC's penalty gradient)."""

    def on_after_optimizer_step(self) -> None:
        """After every optimizer step (BLIP's projection)."""

    def on_train_end(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        """After game t, with the states of its last rollout (the task-end consolidation)."""

    def penalty(self) -> torch.Tensor | float:
        """The penalty's value at the current parameters (0: none)."""
        return 0.0

    def approach_info(self) -> dict:
        """A JSON-able dict stored in results.json under approach_info."""
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


@options(**QUANT_OPTIONS, fisher_minibatches=Int(ge=1))
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

    def on_train_start(self, t: int) -> None:
        self.quantizer.prepare_box()

    def on_after_optimizer_step(self) -> None:
        self.quantizer.project_()

    def on_train_end(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        """The official order: Fisher at the trained (float) weights, bit growth, re-quantization, running mean."""
        self.quantizer.freeze(policy_fisher(agent, t, states, self.fisher_minibatches, "official_scale"), t)
        self.quantizer.drop_box()
        self.capacity_history = torch.cat([self.capacity_history.cpu(), torch.tensor([self.quantizer.capacity()])])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        history = state_dict.get(prefix + "capacity_history")
        if history is not None:  # one entry per finished game: take the saved length
            self.capacity_history = torch.zeros_like(history)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def approach_info(self) -> dict:
        per_layer = self.quantizer.capacity_per_layer()
        return {"capacity": self.quantizer.capacity(), "capacity_per_task": self.capacity_history.tolist(),
                "capacity_per_layer": {self.labels[k]: v for k, v in per_layer.items()}}


@options(lamb=Float(ge=0), gamma=Float(ge=0, le=1), fisher_minibatches=Int(ge=1),
         fisher_estimator=Choice(FISHER_ESTIMATORS))
class OnlineEWC(RLApproach):
    name = "online_ewc"

    def __init__(self, lamb: float = 5000.0, gamma: float = 1.0, fisher_minibatches: int = 32,
                 fisher_estimator: str = "per_sample"):
        super().__init__()
        self.lamb, self.gamma, self.fisher_minibatches = lamb, gamma, fisher_minibatches
        self.fisher_estimator = fisher_estimator
        self.register_buffer("tasks_consolidated", torch.zeros((), dtype=torch.long))
        self.terms: QuadraticTerms | None = None
        self._folded: FoldedQuadratic | None = None

    def attach(self, agent: ActorCritic) -> None:
        self.regularized = dict(agent.trunk.named_parameters())  # the trunk only, as the official baseline
        self.terms = QuadraticTerms(self.regularized)
        self.terms.add()

    def on_train_start(self, t: int) -> None:
        self._folded = (FoldedQuadratic(list(self.regularized.values()), list(self.terms), self.lamb / 2)
                        if int(self.tasks_consolidated) else None)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._folded is not None:  # into p.grad: the gradient is clipped and Adam steps after
            self._folded.add_gradient()

    def on_train_end(self, agent: ActorCritic, t: int, states: torch.Tensor) -> None:
        fisher = policy_fisher(agent, t, states, self.fisher_minibatches, self.fisher_estimator)
        online_update(self.terms[0], fisher, self.gamma, [p.detach() for p in self.regularized.values()])
        self.tasks_consolidated += 1
        self._folded = None

    def penalty(self) -> torch.Tensor | float:
        return self._folded.value() if self._folded is not None else 0.0

    def approach_info(self) -> dict:
        return {"penalty": float(self.penalty())}
