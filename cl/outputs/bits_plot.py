"""bits.png: where BLIP froze its bits, as two annotated heatmaps that stay readable for one quantized layer (an MLP)
as for twenty (a ResNet): layers × frozen bits (share of the layer's parameters with b frozen bits, after the last
finished task; every cell carries its number) and layers × tasks (capacity used after each task)."""
from __future__ import annotations

import numpy as np

from cl.outputs.results import figure_png, pyplot

MAX_ANNOTATED_CELLS = 1500  # more cells than this (a very deep trunk): colours only, the numbers would not fit


def share_text(percent: float) -> str:
    """A share in % as a cell shows it: 100, 37, 4.2, 0.3, <0.1; "" for none."""
    if not percent > 0:
        return ""
    if percent >= 99.95:
        return "100"
    if percent >= 9.95:
        return f"{percent:.0f}"
    if percent >= 0.095:
        return f"{percent:.1f}"
    return "<0.1"


def log_ticks(vmin: float, vmax: float) -> list[float]:
    """Colour-bar ticks on a log scale: 1, 2, 5 × 10^k inside [vmin, vmax] (whole decades alone when those would be
    more than 12)."""
    decades = range(int(np.floor(np.log10(vmin))), int(np.ceil(np.log10(vmax))) + 1)
    ticks = [m * 10.0 ** k for k in decades for m in (1, 2, 5)
             if vmin * (1 - 1e-9) <= m * 10.0 ** k <= vmax * (1 + 1e-9)]
    return ticks if len(ticks) <= 12 else [t for t in ticks if np.isclose(t, 10.0 ** np.round(np.log10(t)))]


def _floor_125(value: float) -> float:
    """The largest 1, 2, 5 × 10^k at or below `value`."""
    k = np.floor(np.log10(value))
    return max(m * 10.0 ** k for m in (1, 2, 5) if m * 10.0 ** k <= value * (1 + 1e-9))


def bits_png(history: list[dict[str, list[int]]], max_bit: int) -> bytes:
    """`history[t][layer][b]` = number of the layer's parameters with b frozen bits after task t (layers by
    their labels, in network order)."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    plt = pyplot()

    layers = list(history[-1])
    L, T = len(layers), len(history)
    counts = np.array([history[-1][layer] for layer in layers], dtype=float)
    share = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    bits = np.arange(max_bit + 1)
    mean_bits = (counts * bits).sum(1) / np.maximum(counts.sum(1), 1)
    capacity = np.array([[100 * (np.asarray(h[layer]) * bits).sum() / (max_bit * max(sum(h[layer]), 1))
                          for h in history] for layer in layers])
    labels = [f"{layer}\nmean {m:.1f} bits" for layer, m in zip(layers, mean_bits)]

    cell_w, row_h = 0.42, 0.4  # inches: room for a number in every cell
    bits_w, tasks_w = max(5.0, cell_w * (max_bit + 1)), 0.5 * max(T, 6)
    fig, (ax_bits, ax_tasks) = plt.subplots(1, 2, figsize=(bits_w + tasks_w + 2.6, 2.3 + row_h * L), dpi=100,
                                            layout="constrained", gridspec_kw={"width_ratios": [bits_w, tasks_w]})

    positive = share[share > 0]
    vmin = min(1.0, _floor_125(max(1e-3, positive.min()))) if positive.size else 1.0
    norm = LogNorm(vmin=vmin, vmax=100)
    im = ax_bits.imshow(np.where(share > 0, share, np.nan), aspect="auto", cmap="viridis", norm=norm)
    ax_bits.set_xticks(range(0, max_bit + 1, 1 if max_bit <= 24 else 2))
    ax_bits.tick_params(axis="x", labelsize=8)
    ax_bits.set_yticks(range(L), labels, fontsize=8)
    ax_bits.set_xlabel("frozen bits")
    ax_bits.set_title(f"parameters by frozen bits after task {T} (% of the layer's parameters; blank: none)",
                      fontsize=9)
    annotate = L * (max_bit + 1) <= MAX_ANNOTATED_CELLS
    for i in range(L):
        for b in range(max_bit + 1):
            if annotate and share[i, b] > 0:
                ax_bits.text(b, i, share_text(share[i, b]), ha="center", va="center", fontsize=7,
                             color="white" if norm(share[i, b]) < 0.55 else "black")
    bar = fig.colorbar(im, ax=ax_bits, orientation="horizontal", fraction=0.08, aspect=50,
                       label="% of the layer's parameters (log scale)")
    bar.ax.xaxis.set_major_locator(FixedLocator(log_ticks(vmin, 100)))
    bar.ax.xaxis.set_minor_locator(NullLocator())
    bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.tick_params(labelsize=8)

    top = max(1e-9, capacity.max())
    im2 = ax_tasks.imshow(capacity, aspect="auto", cmap="magma", vmin=0, vmax=top)
    ax_tasks.set_xticks(range(T), [str(t + 1) for t in range(T)], fontsize=8)
    ax_tasks.set_yticks(range(L), [""] * L)
    ax_tasks.set_xlabel("after task")
    ax_tasks.set_title("capacity used (% of the layer's bits)", fontsize=9)
    if T * L <= MAX_ANNOTATED_CELLS and T <= 30:
        for i in range(L):
            for t in range(T):
                ax_tasks.text(t, i, f"{capacity[i, t]:.1f}", ha="center", va="center", fontsize=7,
                              color="white" if capacity[i, t] < 0.6 * top else "black")
    bar2 = fig.colorbar(im2, ax=ax_tasks, orientation="horizontal", fraction=0.08, aspect=25, label="capacity (%)")
    bar2.ax.tick_params(labelsize=8)
    return figure_png(fig)
