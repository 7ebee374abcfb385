"""bits.png: the histogram of frozen bits of every trunk layer, one curve per finished task."""
from __future__ import annotations

import io


def bits_png(history: list[dict[str, list[int]]], max_bit: int) -> bytes:
    """`history[t][layer][b]` = number of the layer's parameters with b frozen bits after task t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(history[-1])
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 1.2 + 2.0 * len(layers)), dpi=100, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, layer in zip(axes[:, 0], layers):
        for t, hist in enumerate(history):
            counts = hist[layer]
            total = sum(counts)
            ax.step(range(max_bit + 1), [100 * c / total for c in counts], where="mid",
                    color=cmap(t / max(1, len(history) - 1)), label=f"after task {t + 1}")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_xlim(-0.5, max_bit + 0.5)
        ax.set_xticks(range(0, max_bit + 1, max(1, max_bit // 10)))
        ax.set_ylabel("% of params")
        ax.set_title(f"trunk layer {layer or '(trunk)'}", fontsize=9)
    axes[-1, 0].set_xlabel("frozen bits")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
