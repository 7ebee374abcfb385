"""BLIP: train the trunk in float, keep every trunk parameter inside the tolerance box of its frozen bits after each
optimizer step, and at task end freeze as many more bits as the task's Fisher information gain asks for
(Shi et al., CVPR 2021; docs/blip.md). Task heads stay float and unprotected (each task owns its head)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cl.approaches.base import ContinualApproach
from cl.blip.export import NETWORK_KEY
from cl.config.options import options
from cl.stats.fisher import FisherSettings, estimate_fisher
from cl.outputs.bits_plot import bits_png
from cl.blip.quant import QUANT_OPTIONS, QuantSettings, TrunkQuantizer
from cl.models.network import TaskNetwork, layer_labels
from cl.outputs.results import atomic_write
from data.tensor_loader import BatchSource

if TYPE_CHECKING:
    from data.device_stream import DeviceStream

log = logging.getLogger(__name__)
BITS_PLOT = "bits.png"


@options(**QUANT_OPTIONS)
class BLIP(ContinualApproach):
    def __init__(self, net: TaskNetwork, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 batch_size: int = 64, eval_batch_size: int = 1000, name: str | None = None,
                 F_prior: float = 1e-15, max_bit: int = 20, bound_scale: float = 6.0, init: str = "normal",
                 prior_fan: str = "fan_in", fisher: FisherSettings | None = None):
        super().__init__(net, lr=lr, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                         eval_batch_size=eval_batch_size, name=name or "blip")
        self.fisher_settings = fisher or FisherSettings()
        self.quantizer = TrunkQuantizer(net.trunk, QuantSettings(F_prior, max_bit, bound_scale, init, prior_fan))
        self.quantizer.initialize()
        self.layer_labels = layer_labels(net.trunk)  # module path → "fc1 784→1200" for reports
        self.bit_history: list[dict[str, list[int]]] = []  # per finished task: per-layer histogram of bits
        self._fisher_source: BatchSource | None = None

    def train_sources(self, data: "DeviceStream", t: int) -> list[BatchSource]:
        self._fisher_source = data.source(t, "train")  # the task's training inputs, for the task-end Fisher
        return super().train_sources(data, t)

    # --- every optimizer step ---------------------------------------------------------------------------------
    def on_train_start(self):
        self.quantizer.prepare_box()

    def on_after_optimizer_step(self):
        self.quantizer.project_()

    # --- task end ---------------------------------------------------------------------------------------------
    def on_train_end(self):
        """Runs after the schedule callback restored the best-validation weights: Fisher on the float weights →
        bit growth → re-quantization → running-mean Fisher (docs/blip.md, "What happens")."""
        if self._fisher_source is None:
            raise RuntimeError("BLIP needs the task's training data for its Fisher: train through cl.run.supervised, "
                               "which calls train_sources() before fit")
        t, source = self.task_id, self._fisher_source
        fisher = estimate_fisher(self.net, dict(self.quantizer.layers), lambda x: self(x, t), source.x,
                                 self.fisher_settings, source.transform)
        self._fisher_source = source = None  # lets the stream free this task's device copy (data/device_stream.py)
        self.quantizer.freeze(fisher, t)
        self.quantizer.drop_box()
        self.bit_history.append(self.quantizer.bit_histograms())
        self._report(t)

    def _report(self, t: int):
        per_layer = self.quantizer.capacity_per_layer()
        capacity = self.quantizer.capacity()
        short = {path: label.split()[0] for path, label in self.layer_labels.items()}  # "fc1": a metric-name part
        self.log_to_loggers({"blip/capacity": capacity,
                             **{f"blip/capacity/{short[k]}": v for k, v in per_layer.items()}})
        if not self.trainer.is_global_zero:
            return
        layers = ", ".join(f"{self.layer_labels[k]}: {100 * v:.2f}%" for k, v in per_layer.items())
        log.info("task %d: BLIP capacity used %.2f%% (%s)", t + 1, 100 * capacity, layers)

    def figure_files(self) -> list[str]:
        return [BITS_PLOT]

    def write_figures(self, run_dir):
        if self.bit_history:
            labelled = [{self.layer_labels[k]: v for k, v in hist.items()} for hist in self.bit_history]
            atomic_write(Path(run_dir) / BITS_PLOT, bits_png(labelled, self.quantizer.settings.max_bit))

    def approach_info(self) -> dict:
        per_layer = self.quantizer.capacity_per_layer()
        hist = self.quantizer.bit_histograms()
        max_bit = self.quantizer.settings.max_bit
        return {
            "capacity": self.quantizer.capacity(),
            # after each finished task, from its histograms: Σ bits ÷ (max_bit × parameters)
            "capacity_per_task": [sum(b * c for h in hist.values() for b, c in enumerate(h)) /
                                  (max_bit * sum(sum(h) for h in hist.values())) for hist in self.bit_history],
            "bits_per_layer": {self.layer_labels[layer]: {
                "module": layer, "capacity": per_layer[layer],
                "mean_bits": sum(b * c for b, c in enumerate(hist[layer])) / sum(hist[layer]),
                "histogram": hist[layer]} for layer in per_layer},
        }

    # --- checkpoints ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["blip_bit_history"] = self.bit_history
        heads = [h.out_features for h in self.net.heads]
        checkpoint[NETWORK_KEY] = {  # what the bit-packed export needs to rebuild the network without the data
            "shapes": {"input_shape": list(self.net.input_shape), "task_classes": heads,
                       "n_shared_classes": None if self.net.multi_head else heads[0]},
            "bounds": {name: state.bound for name, _, state in self.quantizer.named_states()}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.bit_history = list(checkpoint.get("blip_bit_history", []))
