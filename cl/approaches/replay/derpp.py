"""DER++ (Buzzega et al., NeurIPS 2020): DER (der.py) plus beta · CE on the labels of a second replay batch, drawn
independently of the first:
    loss = CE(incoming batch) + alpha · MSE(net(x_mem), stored logits) + beta · CE(net(x_mem'), y_mem')."""
from __future__ import annotations

import torch

from cl.approaches.replay.der import DER
from cl.config.options import Float, options
from cl.models.network import TaskNetwork


@options(beta=Float(ge=0))
class DERPP(DER):
    def __init__(self, net: TaskNetwork, beta: float = 0.5, **kwargs):
        super().__init__(net, **kwargs)
        self.beta = beta

    def replay_terms(self, t: int) -> torch.Tensor | float:
        """DER's term, then beta · CE on a second replay batch, each sample through its own task's head."""
        dark = super().replay_terms(t)
        return dark + self.beta * self.replay_loss(self.replay_batch(t))

    def approach_info(self) -> dict:
        return {**super().approach_info(), "beta": self.beta}
