"""bits.png: where BLIP froze its bits, as two heatmaps that stay readable for any number of layers and tasks:
layers × frozen bits (share of the layer's parameters, after the last finished task) and layers × tasks (capacity
used after each task)."""
from __future__ import annotations

import numpy as np

from cl.results import figure_png, pyplot


def bits_png(history: list[dict[str, list[int]]], max_bit: int) -> bytes:
    """`history[t][layer][b]` = number of the layer's parameters with b frozen bits after task t (layers by
    their labels, in network order)."""
    from matplotlib.colors import LogNorm

    plt = pyplot()

    layers = list(history[-1])
    counts = np.array([history[-1][layer] for layer in layers], dtype=float)
    share = 100 * counts / counts.sum(1, keepdims=True)
    bits = np.arange(max_bit + 1)
    capacity = np.array([[100 * (np.asarray(h[layer]) * bits).sum() / (max_bit * sum(h[layer])) for h in history]
                         for layer in layers])
    T = len(history)
    height = 1.6 + 0.32 * len(layers)
    fig, (ax_bits, ax_tasks) = plt.subplots(1, 2, figsize=(12, height), dpi=100,
                                            gridspec_kw={"width_ratios": [max_bit + 1, max(T, 8)]})
    im = ax_bits.imshow(np.where(share > 0, share, np.nan), aspect="auto", cmap="viridis",
                        norm=LogNorm(vmin=max(1e-3, np.nanmin(share[share > 0])), vmax=100))
    ax_bits.set_xticks(range(0, max_bit + 1, max(1, max_bit // 10)))
    ax_bits.set_yticks(range(len(layers)), layers, fontsize=8)
    ax_bits.set_xlabel("frozen bits")
    ax_bits.set_title(f"parameters by frozen bits after task {T} (% of the layer)", fontsize=9)
    fig.colorbar(im, ax=ax_bits, fraction=0.04, pad=0.02)
    im2 = ax_tasks.imshow(capacity, aspect="auto", cmap="magma", vmin=0, vmax=max(1e-9, capacity.max()))
    ax_tasks.set_xticks(range(T), [str(t + 1) for t in range(T)], fontsize=8)
    ax_tasks.set_yticks(range(len(layers)), [""] * len(layers))
    ax_tasks.set_xlabel("after task")
    ax_tasks.set_title("capacity used (%)", fontsize=9)
    if T * len(layers) <= 400:  # annotate while the numbers fit their cells
        for i in range(len(layers)):
            for t in range(T):
                ax_tasks.text(t, i, f"{capacity[i, t]:.1f}", ha="center", va="center", fontsize=7,
                              color="white" if capacity[i, t] < 0.6 * capacity.max() else "black")
    fig.colorbar(im2, ax=ax_tasks, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return figure_png(fig)
