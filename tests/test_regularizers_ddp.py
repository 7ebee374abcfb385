"""Under DDP the regularizers' task-end statistics are all-reduced: 2 gloo processes give the same Fisher, MAS Ω and
MAS-local Ω as 1 process on the same data. Kept in its own light module: spawned workers import only torch and
cl.stats.importance."""
import torch
from torch import nn

from cl.stats.importance import FisherOptions, fisher_diagonal, hebbian_omega, mas_omega
from data.tensor_loader import BatchSource
from tests.gloo import on_two_ranks


def _model() -> nn.Sequential:
    """Conv, BatchNorm (eval-mode running statistics), linear and a head, in float64; the same in every process."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def _importances() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 2, 6, 6, generator=g, dtype=torch.float64)
    source = BatchSource(x, torch.randint(0, 3, (30,), generator=g), 0, lambda v: v)
    torch.manual_seed(5)  # the task's seed: the Fisher's samples and labels are drawn from it
    estimates = {
        "fisher": lambda m, mods: fisher_diagonal(m, mods, m, source, FisherOptions("exact", 25, 7)),
        "fisher_hat_legacy": lambda m, mods: fisher_diagonal(m, mods, m, source, FisherOptions("hat_legacy", None, 7)),
        "mas_l2": lambda m, mods: mas_omega(m, mods, m, source, "l2", True, 4, None),
        "mas_l1_per_batch": lambda m, mods: mas_omega(m, mods, m, source, "l1", False, 4, None),
        "mas_vector": lambda m, mods: mas_omega(m, mods, m, source, "vector", True, 4, 20),
        "mas_local": lambda m, mods: hebbian_omega(m, mods, m, source, {"0", "4"}, 4, None),
    }
    out = {}
    for kind, estimate in estimates.items():
        model = _model()  # fresh: a train-mode estimate moves BatchNorm's running statistics
        modules = {name: m for name, m in model.named_children() if any(True for _ in m.parameters())}
        out[kind] = estimate(model, modules)
    return out


def _importances_as_arrays() -> dict:
    return {kind: {k: v.numpy() for k, v in values.items()} for kind, values in _importances().items()}


def test_two_processes_give_the_importances_of_one():
    results = on_two_ranks(_importances_as_arrays)
    single = _importances()
    for rank in (0, 1):
        assert set(results[rank]) == set(single)
        for kind, values in single.items():
            assert set(results[rank][kind]) == set(values) == {"0.weight", "0.bias", "1.weight", "1.bias",
                                                                "4.weight", "4.bias", "6.weight", "6.bias"}
            for name, value in values.items():
                torch.testing.assert_close(torch.from_numpy(results[rank][kind][name]), value, rtol=1e-12,
                                           atol=1e-15, msg=f"{kind} {name} rank {rank}")
                assert value.abs().sum() > 0, (kind, name)
