"""BLIP (Shi et al., CVPR 2021): quantized trunk parameters, Fisher information gain, frozen bits.
See docs/blip.md; the LightningModule is `cl.approaches.BLIP`."""
from cl.blip.fisher import FisherSettings, estimate_fisher, squared_gradient_sums
from cl.blip.quant import QuantSettings, TrunkQuantizer, bit_growth, quantize

__all__ = ["FisherSettings", "QuantSettings", "TrunkQuantizer", "bit_growth", "estimate_fisher", "quantize",
           "squared_gradient_sums"]
