"""Per-sample statistics of a network's parameters, computed fast: the Fisher of EWC and BLIP, MAS's Ω, and the
Hebbian Ω of MAS-local all come from here.

`gradient_statistics` gives, for every parameter of the given modules, Σ_i r(g_i): g_i is the gradient of sample i's
own objective (cross-entropy against a label sampled from the model for a Fisher, ‖F(x_i)‖² for MAS), and r is
`square` (a Fisher) or `abs` (MAS). With `per_sample=False` it gives Σ_batches r(g_batch) instead, g_batch being
the gradient of the batch's objective: what the official MAS code and the legacy EWC codes compute.

How it is fast. Forward hooks record each module's input x and output; one `torch.autograd.grad` per objective and
batch gives δ, the gradient at every recorded output (of the objective summed over the batch, so δ_i is sample i's
own). Per-sample parameter gradients are never all formed at once:
- nn.Linear: g_i = δ_i x_iᵀ, and r is multiplicative (r(ab) = r(a)·r(b)), so Σ_i r(g_i) = r(δ)ᵀ r(x): one matrix
  product per batch;
- nn.Conv2d: g_i = δ_i (C_out×L) @ unfold(x_i)ᵀ (L×C_in·k·k): a batched matmul over chunks of the batch;
- any other module with parameters (BatchNorm's affine weight and bias, LayerNorm, ...): per-sample vector-Jacobian
  products of the module's own forward at its recorded input (`torch.func.vmap`, in chunks). That needs a module that
  treats samples independently, as BatchNorm does in eval mode (running statistics).

`hebbian_sums` is MAS-local's statistic: forward passes only, Σ |y_out|·|y_in| over the two ends of each connection.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_BYTES = 256 * 2**20  # bound on the per-sample gradients (or unfolded inputs) held at once
REDUCTIONS = ("square", "abs")
OUTPUT_NORMS = ("l2", "l1", "vector")

# objective(logits, extra) -> objectives summed (or averaged) over the batch, one autograd pass each; `extra` is what
# the batch carries besides its inputs (label noise, true labels, or None)
Objective = Callable[[torch.Tensor, object], list[torch.Tensor]]
Batches = Iterable[tuple[torch.Tensor, object]]


def _reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
    """r(t), in place: only ever called on a temporary."""
    return t.square_() if reduction == "square" else t.abs_()


def _join(prefix: str, kind: str) -> str:
    return f"{prefix}.{kind}" if prefix else kind


def direct_parameters(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """'<module name>.<parameter>' → parameter, for the parameters each module owns itself (not its children's)."""
    return {_join(name, kind): p for name, m in modules.items() for kind, p in m.named_parameters(recurse=False)}


def _chunks(n: int, per_sample_bytes: int) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // max(1, per_sample_bytes))
    return (slice(start, start + step) for start in range(0, n, step))


# --- objectives ------------------------------------------------------------------------------------------------------
def sample_labels(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """y_i ~ softmax(logits_i), drawn by inverse CDF from the uniform `noise[i]`: a sample's label depends on its
    own noise only, so splitting the samples over ranks draws the same labels as one process."""
    cdf = torch.softmax(logits.detach().double(), dim=1).cumsum(1)
    return (cdf < noise.double().unsqueeze(1)).sum(1).clamp_(max=logits.shape[1] - 1)


def sampled_label_nll(logits: torch.Tensor, noise: torch.Tensor) -> list[torch.Tensor]:
    """The true Fisher's objective: Σ_i −log p(y_i | x_i), y_i sampled from the model with the noise of sample i."""
    return [F.cross_entropy(logits, sample_labels(logits, noise), reduction="sum")]


def true_label_mean_ce(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The legacy (empirical) Fisher's objective: the batch-mean cross-entropy against the true labels."""
    return [F.cross_entropy(logits, labels)]


def output_norm(norm: str) -> Objective:
    """MAS's objectives on the logits F, no labels: ‖F‖₂² (l2), ‖F‖₁ (l1), or each output F_j on its own (vector:
    one autograd pass per output; their |gradients| add up)."""
    if norm == "l2":
        return lambda logits, _: [logits.square().sum()]
    if norm == "l1":
        return lambda logits, _: [logits.abs().sum()]
    if norm == "vector":
        return lambda logits, _: [logits[:, j].sum() for j in range(logits.shape[1])]
    raise ValueError(f"norm must be one of {OUTPUT_NORMS}, got {norm!r}")


# --- recording inputs and outputs ------------------------------------------------------------------------------------
class LayerRecorder:
    """Forward hooks that keep each module's input and output for one batch."""

    def __init__(self, modules: dict[str, nn.Module]):
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.recording = True  # off while per-sample sums re-run a module's forward
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, args, output):
            if not self.recording:
                return None
            if name in self.outputs:
                raise RuntimeError(f"module {name!r} ran twice in one forward pass (shared weights); per-sample "
                                   f"statistics need each module to run once per pass")
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output
            # hand on a copy: an in-place op downstream (ReLU(inplace=True)) must not overwrite the tensor whose
            # gradient we take
            return output.clone()
        return hook

    def clear(self):
        self.inputs.clear()
        self.outputs.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def requiring_grad(params: Iterable[nn.Parameter]):
    """Differentiate w.r.t. these parameters whatever the current task froze; restored afterwards."""
    params = list(params)
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


# --- Σ_i r(g_i) for one module, from its recorded input x and output gradient δ --------------------------------------
def _linear_sums(module: nn.Linear, x: torch.Tensor, delta: torch.Tensor, reduction: str) -> dict[str, torch.Tensor]:
    sums = {}
    if x.dim() == 2:
        r_delta = _reduce(delta.clone(), reduction)
        sums["weight"] = r_delta.t() @ _reduce(x.clone(), reduction)
        if module.bias is not None:
            sums["bias"] = r_delta.sum(0)
        return sums
    # extra dims (e.g. tokens): the per-sample gradient is a sum over them, so it no longer factorizes
    x, delta = x.flatten(1, -2), delta.flatten(1, -2)
    weight = torch.zeros_like(module.weight)
    for part in _chunks(len(x), weight.numel() * x.element_size()):
        weight += _reduce(torch.einsum("bto,bti->boi", delta[part], x[part]), reduction).sum(0)
    sums["weight"] = weight
    if module.bias is not None:
        sums["bias"] = _reduce(delta.sum(1), reduction).sum(0)
    return sums


def conv_input_columns(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """unfold(x) as the convolution reads it: B × (C_in·k·k) × L, L being the number of output positions."""
    if module.padding_mode != "zeros":
        raise ValueError(f"per-sample statistics support Conv2d with padding_mode='zeros' only (got "
                         f"{module.padding_mode!r}); use zero padding in the model")
    padding = module.padding
    if isinstance(padding, str):  # 'valid' or 'same': pad explicitly, then unfold without padding
        x = F.pad(x, module._reversed_padding_repeated_twice)
        padding = 0
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)


def _conv_sums(module: nn.Conv2d, x: torch.Tensor, delta: torch.Tensor, reduction: str) -> dict[str, torch.Tensor]:
    groups = module.groups
    cols = conv_input_columns(module, x)
    B, L = cols.shape[0], cols.shape[2]
    cols = cols.view(B, groups, -1, L)
    delta = delta.reshape(B, groups, -1, L)  # B × G × C_out/G × L
    weight = torch.zeros(groups, delta.shape[2], cols.shape[2], dtype=x.dtype, device=x.device)
    for part in _chunks(B, weight.numel() * x.element_size()):
        weight += _reduce(torch.einsum("bgol,bgil->bgoi", delta[part], cols[part]), reduction).sum(0)
    sums = {"weight": weight.view(module.weight.shape)}
    if module.bias is not None:
        sums["bias"] = _reduce(delta.sum(3), reduction).sum(0).flatten()
    return sums


def _generic_sums(module: nn.Module, x: torch.Tensor, delta: torch.Tensor, reduction: str) -> dict[str, torch.Tensor]:
    """Per-sample vector-Jacobian products of the module's own forward, vectorized over the samples of a chunk."""
    params = {kind: p.detach() for kind, p in module.named_parameters(recurse=False)}

    def sample_gradient(x_i, delta_i):
        _, vjp = torch.func.vjp(lambda p: torch.func.functional_call(module, p, (x_i.unsqueeze(0),)), params)
        return vjp(delta_i.unsqueeze(0))[0]

    sums = {kind: torch.zeros_like(p) for kind, p in params.items()}
    per_sample_bytes = sum(p.numel() for p in params.values()) * x.element_size()
    for part in _chunks(len(x), per_sample_bytes):
        grads = torch.func.vmap(sample_gradient)(x[part], delta[part])
        for kind in sums:
            sums[kind] += _reduce(grads[kind], reduction).sum(0)
    return sums


def module_sums(module: nn.Module, x: torch.Tensor, delta: torch.Tensor, reduction: str) -> dict[str, torch.Tensor]:
    """Σ_i r(g_i) for each parameter the module owns, keyed 'weight', 'bias', ..."""
    if isinstance(module, nn.Linear):
        return _linear_sums(module, x, delta, reduction)
    if isinstance(module, nn.Conv2d):
        return _conv_sums(module, x, delta, reduction)
    return _generic_sums(module, x, delta, reduction)


# --- over batches ----------------------------------------------------------------------------------------------------
def gradient_statistics(modules: dict[str, nn.Module], logits_fn: Callable[[torch.Tensor], torch.Tensor],
                        batches: Batches, objective: Objective, reduction: str,
                        per_sample: bool = True) -> tuple[dict[str, torch.Tensor], int]:
    """Σ_i r(g_i) (or Σ_batches r(g_batch) with `per_sample=False`) for every parameter the `modules` (name →
    module) own, over `batches` of (inputs, extra). `logits_fn(x)` runs the model so that the modules see the batch.
    Returns ({"<module>.<parameter>": sum, …}, number of samples)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    params = direct_parameters(modules)
    sums = {k: torch.zeros_like(p) for k, p in params.items()}  # every key, even of a module the forward skipped
    count = 0
    recorder = LayerRecorder(modules) if per_sample else None
    try:
        with requiring_grad(params.values()):
            for x, extra in batches:
                with torch.enable_grad():
                    objectives = objective(logits_fn(x), extra)
                    for i, loss in enumerate(objectives):
                        retain = i + 1 < len(objectives)
                        if per_sample:
                            _add_per_sample(sums, modules, recorder, loss, reduction, retain)
                        else:
                            grads = torch.autograd.grad(loss, list(params.values()), retain_graph=retain,
                                                        allow_unused=True)
                            for key, g in zip(params, grads):
                                if g is not None:
                                    sums[key] += _reduce(g, reduction)
                count += len(x)
                if recorder is not None:
                    recorder.clear()
    finally:
        if recorder is not None:
            recorder.remove()
    return sums, count


def _add_per_sample(sums: dict[str, torch.Tensor], modules: dict[str, nn.Module], recorder: LayerRecorder,
                    loss: torch.Tensor, reduction: str, retain: bool):
    names = list(recorder.outputs)
    deltas = torch.autograd.grad(loss, [recorder.outputs[n] for n in names], retain_graph=retain, allow_unused=True)
    recorder.recording = False
    try:
        for name, delta in zip(names, deltas):
            if delta is None:  # the module ran but does not reach this objective
                continue
            for kind, value in module_sums(modules[name], recorder.inputs[name], delta, reduction).items():
                sums[_join(name, kind)] += value
    finally:
        recorder.recording = True


# --- MAS-local: Hebbian products of the activations at both ends of each connection ----------------------------------
BatchNorm = nn.modules.batchnorm._BatchNorm
HEBBIAN_TYPES = (nn.Linear, nn.Conv2d, BatchNorm)


def _hebbian_linear(module: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    positions = x[0].numel() // x.shape[-1]  # 1 for a [B, features] input
    x, y = x.reshape(-1, x.shape[-1]).abs(), y.reshape(-1, y.shape[-1]).abs()
    sums = {"weight": y.t() @ x}
    if module.bias is not None:
        sums["bias"] = y.sum(0)
    return sums, positions


def _hebbian_conv(module: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    groups = module.groups
    B, L = y.shape[0], y.shape[2] * y.shape[3]
    out = y.reshape(B, groups, -1, L).abs()
    weight = torch.zeros(groups, out.shape[2], module.weight[0].numel(), dtype=x.dtype, device=x.device)
    for part in _chunks(B, module.weight[0].numel() * groups * L * x.element_size()):  # unfolded inputs are big
        cols = conv_input_columns(module, x[part]).abs_()
        weight += torch.einsum("bgol,bgil->goi", out[part], cols.view(len(cols), groups, -1, L))
    sums = {"weight": weight.view(module.weight.shape)}
    if module.bias is not None:
        sums["bias"] = out.sum((0, 3)).flatten()
    return sums, L


def _hebbian_batchnorm(module: BatchNorm, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    if module.running_mean is None:
        raise ValueError("MAS-local needs BatchNorm layers with running statistics (track_running_stats=True)")
    shape = (1, -1) + (1,) * (x.dim() - 2)
    normalized = (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
    dims = [0] + list(range(2, x.dim()))
    out = y.abs()
    sums = {"weight": (normalized.abs_() * out).sum(dims)} if module.weight is not None else {}
    if module.bias is not None:
        sums["bias"] = out.sum(dims)
    return sums, x[0, 0].numel()


def _hebbian_module_sums(module: nn.Module, x: torch.Tensor, y: torch.Tensor):
    if isinstance(module, nn.Linear):
        return _hebbian_linear(module, x, y)
    if isinstance(module, nn.Conv2d):
        return _hebbian_conv(module, x, y)
    if isinstance(module, BatchNorm):
        return _hebbian_batchnorm(module, x, y)
    raise TypeError(f"MAS-local handles {', '.join(t.__name__ for t in HEBBIAN_TYPES)}; got {type(module).__name__}")


def hebbian_sums(modules: dict[str, nn.Module], forward_fn: Callable[[torch.Tensor], object], batches: Batches,
                 fires: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, int], int]:
    """MAS-local's sums over samples and positions of |y_i · y_j| for every connection: y_j the module's input, y_i
    its output, passed through a ReLU for the modules in `fires` (those an nn.ReLU follows). A bias connects a
    constant 1 to y_i; BatchNorm's weight connects the normalized input to the output, channel by channel.
    Returns ({"<module>.<parameter>": sum}, {module: positions per sample}, number of samples)."""
    sums = {k: torch.zeros_like(p) for k, p in direct_parameters(modules).items()}
    positions: dict[str, int] = {name: 1 for name in modules}

    def hook_for(name: str):
        def hook(module, args, output):
            x, y = args[0].detach(), output.detach()
            if name in fires:
                y = y.clamp(min=0)
            layer_sums, positions[name] = _hebbian_module_sums(module, x, y)
            for kind, value in layer_sums.items():
                sums[_join(name, kind)] += value
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    count = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                forward_fn(x)
                count += len(x)
    finally:
        for h in handles:
            h.remove()
    return sums, positions, count
