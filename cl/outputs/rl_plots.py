"""The figures of a continual RL run: learning curves, the normalized-return matrix and the GIF matrix of the
agent playing every game after every task (as in the BLIP README)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cl.outputs.results import atomic_write, figure_png, matrix_png, pyplot

# MinAtar has at most 10 object channels (Seaquest); index 0 is the background
_PALETTE = np.array([
    (0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (255, 255, 255)], dtype=np.uint8)
_GRID = (128, 128, 128)
_LABEL = (230, 230, 230)


def returns_png(curves: list[dict], task_names: list[str], steps_per_task: int, title: str) -> bytes:
    """One subplot per game, sharing the step axis: returns of different games have very different scales, so
    one shared y axis would flatten all but the highest-scoring game."""
    plt = pyplot()

    games = list(dict.fromkeys(task_names))
    games += [g for c in curves for g in c["returns"] if g not in games]
    games = [g for g in games if any(g in c["returns"] for c in curves)] or games[:1]
    x_end = max([len(task_names) * steps_per_task] + [c["step"] for c in curves])
    scale, unit = (1e6, "millions") if x_end >= 1e6 else (1e3, "thousands")
    n = max(1, len(games))
    fig, axes = plt.subplots(n, 1, sharex=True, squeeze=False, figsize=(8, 1.0 + 1.8 * n), dpi=100,
                             layout="constrained")
    colours = plt.get_cmap("tab10")
    for g, (game, ax) in enumerate(zip(games, axes[:, 0])):
        colour = colours(g % 10)
        for k, name in enumerate(task_names):
            if name == game:  # shade the spans where this game is trained
                ax.axvspan(k * steps_per_task / scale, (k + 1) * steps_per_task / scale, color=colour, alpha=0.08)
        for k in range(1, len(task_names)):
            ax.axvline(k * steps_per_task / scale, color="grey", linestyle="--", linewidth=0.8)
        points = sorted((c["step"], c["returns"][game]) for c in curves if game in c["returns"])
        if points:
            xs, ys = zip(*points)
            ax.plot(np.asarray(xs) / scale, ys, color=colour, marker="o", markersize=3, linewidth=1.2, label=game)
            ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    top = axes[0, 0]
    top.set_xlim(0, x_end / scale)
    for k, name in enumerate(task_names):
        top.text((k + 0.5) * steps_per_task / scale, 1.02, name, transform=top.get_xaxis_transform(),
                 ha="center", va="bottom", fontsize=8)
    axes[-1, 0].set_xlabel(f"environment steps ({unit})")
    fig.supylabel("mean greedy return", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return figure_png(fig)


def normalized_matrix_png(matrix: list[list[float | None]], task_names: list[str], title: str) -> bytes:
    """Like acc_matrix_png, but the scale is open-ended: a normalized return can beat the reference (> 1)."""
    T = len(task_names)
    R = np.full((T, T), np.nan)
    for i, row in enumerate(matrix):
        R[i, :len(row)] = [np.nan if v is None else v for v in row]
    vmax = max(1.0, float(np.nanmax(R))) if np.isfinite(R).any() else 1.0
    return matrix_png(R, task_names, title, vmax=vmax, digits=2, label="normalized return",
                      xlabel="evaluated on game")


def frame_to_rgb(frame: np.ndarray, scale: int) -> np.ndarray:
    """A greyscale Atari frame or MinAtar's one-hot object channels as an RGB image; the 10×10 MinAtar grid is
    upscaled (nearest neighbour, so cells stay sharp) to be visible in a GIF."""
    frame = np.asarray(frame)
    if frame.ndim == 2:
        rgb = np.repeat(frame.astype(np.uint8)[:, :, None], 3, axis=2)
    elif frame.ndim == 3:
        on = frame.astype(bool)
        C = on.shape[2]
        if C >= len(_PALETTE):
            raise ValueError(f"{C} channels: the palette has colours for {len(_PALETTE) - 1}")
        top = np.where(on.any(axis=2), C - np.argmax(on[:, :, ::-1], axis=2), 0)  # highest set channel + 1
        rgb = _PALETTE[top]
    else:
        raise ValueError(f"frame of shape {frame.shape}: expected (H, W) or (H, W, C)")
    return np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)


def write_gif(path: Path, frames: list[np.ndarray], fps: int = 15) -> None:
    """Pillow merges identical consecutive frames into one longer frame, so `n_frames` can be below
    len(frames) while the animation plays the same."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    if len({im.size for im in images}) > 1:
        raise ValueError(f"frames of different sizes: {sorted({im.size for im in images})}")
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    atomic_write(Path(path), buf.getvalue())


def _pad(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, 3), dtype=np.uint8)
    fh, fw = frame.shape[:2]
    top, left = (h - fh) // 2, (w - fw) // 2
    out[top:top + fh, left:left + fw] = frame
    return out


def gif_matrix(frames: list[list[list[np.ndarray]]], task_names: list[str], out_dir: Path,
               fps: int = 15) -> list[Path]:
    """One GIF per (after task i, game j) cell, and all of them side by side in one GIF: forgetting shows as an
    agent that played a game well in an earlier row and fumbles it in a later one."""
    from PIL import Image, ImageDraw, ImageFont

    out_dir = Path(out_dir)
    cells = {(i, j): cell for i, row in enumerate(frames) for j, cell in enumerate(row) if len(cell)}
    if not cells:
        raise ValueError("no frames")
    paths = []
    for (i, j), cell in cells.items():
        path = out_dir / f"after{i + 1}_{task_names[i]}__plays_{task_names[j]}.gif"
        write_gif(path, cell, fps)
        paths.append(path)

    rows, cols = len(frames), max(len(row) for row in frames)
    row_labels = [f"after {task_names[i]}" for i in range(rows)]
    col_labels = task_names[:cols]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    def put(draw: ImageDraw.ImageDraw, text: str, x: int, y: int, align: str) -> None:
        """Draw `text` centred vertically on y, centred on x (align "c") or ending at x ("r"): placed from its
        bounding box, since Pillow ignores anchors for bitmap fonts and the default font may be one."""
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x0 = x - (right - left) // 2 if align == "c" else x - (right - left)
        draw.text((x0 - left, y - (bottom - top) // 2 - top), text, font=font, fill=_LABEL)

    fh = max(f.shape[0] for cell in cells.values() for f in cell)
    fw = max(f.shape[1] for cell in cells.values() for f in cell)
    cw = max([fw] + [size(t)[0] + 4 for t in col_labels])  # a column is at least as wide as its label
    margin_left = max(size(t)[0] for t in row_labels) + 12
    margin_top = max(size(t)[1] for t in col_labels) + 8
    width, height = margin_left + cols * (cw + 1) + 1, margin_top + rows * (fh + 1) + 1

    background = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(background)
    for j in range(cols + 1):
        draw.line([(margin_left + j * (cw + 1), margin_top), (margin_left + j * (cw + 1), height - 1)], fill=_GRID)
    for i in range(rows + 1):
        draw.line([(margin_left, margin_top + i * (fh + 1)), (width - 1, margin_top + i * (fh + 1))], fill=_GRID)
    for j, text in enumerate(col_labels):
        put(draw, text, margin_left + j * (cw + 1) + 1 + cw // 2, margin_top // 2, "c")
    for i, text in enumerate(row_labels):
        put(draw, text, margin_left - 6, margin_top + i * (fh + 1) + 1 + fh // 2, "r")
    canvas = np.asarray(background)

    combined = []
    for t in range(max(len(cell) for cell in cells.values())):
        image = canvas.copy()
        for (i, j), cell in cells.items():
            y, x = margin_top + i * (fh + 1) + 1, margin_left + j * (cw + 1) + 1
            image[y:y + fh, x:x + cw] = _pad(np.asarray(cell[min(t, len(cell) - 1)], dtype=np.uint8), fh, cw)
        combined.append(image)
    matrix_path = out_dir / "gif_matrix.gif"
    write_gif(matrix_path, combined, fps)
    return paths + [matrix_path]
