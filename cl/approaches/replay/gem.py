"""GEM, gradient episodic memory (Lopez-Paz & Ranzato, NeurIPS 2017), as its code does it: before each step, the
gradient g_u of the loss on each earlier task's whole memory; when the incoming batch's gradient g has a negative
dot product with any of them, the step uses g̃ = Gᵀv + g, v solving GEM's dual QP
    min_v ½ vᵀ(GGᵀ + εI)v + (Gg)ᵀv  subject to v ≥ margin   (ε = 1e-3, margin = memory_strength)
with quadprog, the code's own solver.

The earlier tasks' gradients are computed together: `torch.func.vmap` over the tasks of the gradient of each task's
mean memory loss, i.e. one batched forward and backward over all memories, reduced per task (not one backward per
task). A network with BatchNorm normalizes each task's memory with its own batch statistics, as GEM's per-task
passes do, and (`update_bn_on_memory: true`, as the code's passes in train mode) its running statistics then hold
what those passes, one task after the other, would have left; false discards their updates. Dropout draws a mask
per task's pass."""
from __future__ import annotations

import numpy as np
import quadprog
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from cl.approaches.replay.base import ReplayApproach
from cl.config.options import Bool, Float, options
from cl.errors import ConfigError
from cl.models.network import TaskNetwork

EPS = 1e-3


def gem_dual(G: torch.Tensor, g: torch.Tensor, margin: float) -> np.ndarray:
    """v = argmin ½vᵀ(GGᵀ + εI)v + (Gg)ᵀv subject to v ≥ margin, in float64 with quadprog, as the GEM code.
    Its optimality conditions give G(Gᵀv + g) + εv ≥ 0: the projected gradient's dot products are ≥ −εv."""
    memories = G.detach().cpu().double().numpy()
    gradient = g.detach().cpu().double().numpy()
    t = memories.shape[0]
    P = memories @ memories.T
    P = 0.5 * (P + P.T) + EPS * np.eye(t)
    # quadprog minimizes ½vᵀPv − aᵀv subject to Cᵀv ≥ b
    return quadprog.solve_qp(P, memories @ gradient * -1, np.eye(t), np.zeros(t) + margin)[0]


def project_to_cone(g: torch.Tensor, G: torch.Tensor, margin: float) -> torch.Tensor:
    """GEM's projected gradient g̃ = Gᵀv + g."""
    v = torch.from_numpy(gem_dual(G, g, margin)).to(g)
    return v @ G + g


@options(memory_strength=Float(ge=0), update_bn_on_memory=Bool())
class GEM(ReplayApproach):
    def __init__(self, net: TaskNetwork, memory_strength: float = 0.5, update_bn_on_memory: bool = True, **kwargs):
        super().__init__(net, **kwargs)
        self.memory_strength, self.update_bn_on_memory = memory_strength, update_bn_on_memory
        self._past_memories: torch.Tensor | None = None

    def observe(self, x, y, t):
        G = self.memory_gradients(t) if t > 0 else None
        loss = F.cross_entropy(self(x, t), y)
        self.sgd_step(loss, adjust=(lambda: self.constrain(G)) if G is not None else None)
        return loss.detach()

    def past_memories(self, t: int) -> torch.Tensor:
        """[t, M, *input]: the memories of the tasks before t as model inputs. Task t writes only its own memory, so
        they are decoded once per task, not at every step."""
        if self._past_memories is None or len(self._past_memories) != t:
            self._past_memories = torch.stack([self.memory.decode(u, self.memory.x[u]) for u in range(t)])
        return self._past_memories

    def constrain(self, G: torch.Tensor) -> None:
        g = self.flat_gradient()
        if bool((G @ g < 0).any()):
            self.set_gradient(project_to_cone(g, G, self.memory_strength))

    def memory_gradients(self, t: int) -> torch.Tensor:
        """[t, P]: row u is the gradient of task u's mean loss on its memory, over the trained parameters (in
        `self.trained()` order, as `flat_gradient`)."""
        mem, net = self.memory, self.net
        x = self.past_memories(t)
        filled = torch.tensor(mem.filled[:t], device=x.device)
        weight = (torch.arange(mem.per_task, device=x.device) < filled[:, None]) / filled.clamp_min(1)[:, None]
        trunk = {k: p.detach() for k, p in net.trunk.named_parameters()}
        buffers = {k: v.expand(t, *v.shape).clone() for k, v in net.trunk.named_buffers()}  # one copy per task
        heads = [net.head_for(u) for u in range(t)]
        if net.multi_head:  # stacked, narrower heads padded with classes that never win (zero weights, bias −1e9)
            width = max(h.out_features for h in heads)
            head_w = torch.stack([F.pad(h.weight.detach(), (0, 0, 0, width - h.out_features)) for h in heads])
            head_b = torch.stack([F.pad(h.bias.detach(), (0, width - h.out_features), value=-1e9) for h in heads])
        else:
            head_w, head_b = heads[0].weight.detach(), heads[0].bias.detach()

        def task_loss(trunk_params, w, b, task_buffers, x_u, y_u, weight_u):
            features = functional_call(net.trunk, {**trunk_params, **task_buffers}, (x_u,))
            losses = F.cross_entropy(F.linear(features, w, b), y_u, reduction="none")
            return (losses * weight_u).sum()

        head_dim = 0 if net.multi_head else None
        # dropout draws its own mask for each task's pass, as separate passes would
        trunk_g, w_g, b_g = vmap(grad(task_loss, argnums=(0, 1, 2)), in_dims=(None, head_dim, head_dim, 0, 0, 0, 0),
                                 randomness="different")(
            trunk, head_w, head_b, buffers, x, mem.y[:t], weight)
        if self.update_bn_on_memory and net.training:
            self.apply_sequential_updates(buffers, t)
        by_param = {id(p): trunk_g[k] for k, p in net.trunk.named_parameters()}
        if net.multi_head:  # row u holds head u's gradient; the other heads' rows are zero
            for u, h in enumerate(heads):
                for p, g in ((h.weight, w_g), (h.bias, b_g)):
                    full = torch.zeros(t, *p.shape, device=x.device)
                    full[u] = g[u, :len(p)]
                    by_param[id(p)] = full
        else:
            by_param[id(heads[0].weight)], by_param[id(heads[0].bias)] = w_g, b_g
        return torch.cat([by_param[id(p)].reshape(t, -1) if id(p) in by_param else x.new_zeros(t, p.numel())
                          for p in self.trained()], dim=1)

    @torch.no_grad()
    def apply_sequential_updates(self, per_task: dict[str, torch.Tensor], t: int) -> None:
        """Set the trunk's BatchNorm running statistics to what t passes over the memories, task 0 first, leave: each
        pass moved them from r to (1 − m)·r + m·s_u (`per_task[k][u]`, all from the same r), so the chain of the t
        passes gives (1 − m)ᵗ·r + Σ_u (1 − m)^(t−1−u)·m·s_u; the batch counters advance by t."""
        trunk = self.net.trunk
        for key, stats in per_task.items():
            owner, name = key.rsplit(".", 1) if "." in key else ("", key)
            running = trunk.get_buffer(key)
            if name == "num_batches_tracked":
                running.add_(t)
                continue
            m = trunk.get_submodule(owner).momentum
            if m is None:  # a cumulative average: each pass weighs by its own batch count, no closed form kept here
                raise ConfigError("approach.update_bn_on_memory=true needs BatchNorm layers with a momentum; set it "
                                  "to false for layers built with momentum=None")
            keep = 1.0 - m
            weights = keep ** torch.arange(t - 1, -1, -1, dtype=stats.dtype, device=stats.device)
            moved = stats - keep * running  # m·s_u
            running.mul_(keep ** t).add_((weights.view(-1, *[1] * running.dim()) * moved).sum(0))
