"""Under DDP the Fisher sums are all-reduced: 2 gloo processes allocate the same bits as 1 process.
Kept in its own light module: spawned workers import only torch and cl.blip."""
import torch
from torch import nn

from cl.stats.fisher import FisherSettings, estimate_fisher
from cl.blip.quant import QuantSettings, TrunkQuantizer
from tests.gloo import on_two_ranks


class ConvTrunk(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, padding=1, bias=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 5))


def _fisher_bits_as_arrays() -> dict:
    return {k: v.numpy() for k, v in _fisher_bits().items()}


def _fisher_bits() -> dict[str, torch.Tensor]:
    """Fisher → bits of a fixed tiny model on fixed data (the same in every process)."""
    torch.manual_seed(0)
    trunk = ConvTrunk().eval()
    model = nn.Sequential(trunk, nn.Linear(5, 3))
    quantizer = TrunkQuantizer(trunk, QuantSettings(F_prior=1e-12))
    x = torch.randn(90, 2, 8, 8)
    torch.manual_seed(5)
    fisher = estimate_fisher(model, dict(quantizer.layers), model, x, FisherSettings(num_samples=80, batch_size=16))
    quantizer.freeze(fisher, 0)
    return {name: state.bits.clone() for name, _, state in quantizer.named_states()}


def test_two_process_fisher_allocates_the_same_bits():
    results = on_two_ranks(_fisher_bits_as_arrays, timeout=60)
    single = _fisher_bits()
    for rank in (0, 1):
        assert set(results[rank]) == set(single)
        for name in single:
            assert torch.equal(torch.from_numpy(results[rank][name]), single[name]), (rank, name)
    assert any(v.sum() > 0 for v in single.values())
