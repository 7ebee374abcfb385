"""The RL figures and GIFs: they decode, have the expected sizes and frame counts, and colour what they should."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from cl.outputs.results import matrix_png
from cl.outputs.rl_plots import frame_to_rgb, gif_matrix, normalized_matrix_png, returns_png, write_gif

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GAMES = ["breakout", "freeway", "space_invaders"]


def _decode_png(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _frames(n: int, h: int = 8, w: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Distinct random frames: Pillow would merge identical consecutive ones."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_returns_png_one_subplot_per_game():
    steps = 1_000_000
    curves = []
    for k in range(3):
        for s in range(1, 4):
            step = k * steps + s * steps // 3
            curves.append({"step": step, "task": k,
                           "returns": {g: float(step % 7 + j) for j, g in enumerate(GAMES[:k + 1])}})
    three = _decode_png(returns_png(curves, GAMES, steps, "ewc on minatar"))
    one = _decode_png(returns_png(curves[:1], GAMES, steps, "ewc on minatar"))
    assert three.width == one.width == 800
    assert three.height > one.height + 250  # three stacked subplots against one


def test_returns_png_single_point_in_thousands():
    curves = [{"step": 5000, "task": 0, "returns": {"pong": -21.0}}]
    assert _decode_png(returns_png(curves, ["pong", "breakout"], 10_000, "t")).width == 800


def test_normalized_matrix_png_with_blank_cells():
    matrix = [[0.9, None, float("nan")], [0.5, 1.2, None], [0.4, 0.8, 1.0]]
    image = _decode_png(normalized_matrix_png(matrix, GAMES, "normalized return"))
    # cl.outputs.results.matrix_png's size for 3 tasks with labels of 14 characters (0.84 in):
    # (1.6 + 0.84 + 0.7·3, 1.2 + 0.84 + 0.6·3) inches at 100 dpi
    assert image.size == (454, 384)
    _decode_png(normalized_matrix_png([[None] * 3], GAMES, "nothing finite yet"))


def test_matrix_png_fits_tasks_named_by_many_classes():
    """Two CUB tasks of 10 shuffled classes each: the tick labels are shortened and given room, so tight_layout can
    lay the figure out (it warns when it cannot, and the heatmap shrinks to a few pixels)."""
    names = ["98-194-107-10-66-130-124-103-77-122", "91-149-55-129-35-12-160-4-188-71"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = _decode_png(matrix_png(np.array([[50.0, 0.0], [50.0, 50.0]]), names, "sgd on cub_split\nACC 50.00%",
                                       vmax=100, digits=1, label="accuracy (%)"))
    assert image.size == (408, 348)  # labels shortened to 18 characters (1.08 in)


def test_frame_to_rgb_greyscale_atari():
    frame = np.random.default_rng(0).integers(0, 256, (84, 84), dtype=np.uint8)
    rgb = frame_to_rgb(frame, 2)
    assert rgb.shape == (168, 168, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[::2, ::2, 0] == frame).all() and (rgb[1::2, 1::2, 0] == frame).all()


def test_frame_to_rgb_minatar_channels():
    frame = np.zeros((10, 10, 4), dtype=bool)
    for c in range(4):
        frame[c, c, c] = True
    frame[5, 5, [0, 3]] = True  # overlap: the highest channel wins
    rgb = frame_to_rgb(frame, 3)
    assert rgb.shape == (30, 30, 3) and rgb.dtype == np.uint8
    colours = [tuple(rgb[3 * c + 1, 3 * c + 1]) for c in range(4)]
    assert len(set(colours)) == 4 and (0, 0, 0) not in colours
    assert tuple(rgb[16, 16]) == colours[3]
    assert (rgb[27:, :27] == 0).all()  # background is black
    assert (frame_to_rgb(frame.astype(np.float32), 1) == frame_to_rgb(frame, 1)).all()  # 0/1 floats alike


def test_write_gif_round_trip(tmp_path):
    path = tmp_path / "sub" / "a.gif"
    write_gif(path, _frames(5, 12, 20), fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (20, 12)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 100


def test_write_gif_rejects_no_frames(tmp_path):
    with pytest.raises(ValueError, match="no frames"):
        write_gif(tmp_path / "a.gif", [])
    assert not (tmp_path / "a.gif").exists()


def test_gif_matrix_lower_triangular(tmp_path):
    names = ["pong", "breakout"]
    frames = [[_frames(3, seed=1), []],
              [_frames(5, seed=2), _frames(4, 10, 6, seed=3)]]  # a smaller frame: padded to the largest
    paths = gif_matrix(frames, names, tmp_path)
    assert [p.name for p in paths] == ["after1_pong__plays_pong.gif", "after2_breakout__plays_pong.gif",
                                       "after2_breakout__plays_breakout.gif", "gif_matrix.gif"]
    assert all(p.exists() for p in paths)
    assert not (tmp_path / "after1_pong__plays_breakout.gif").exists()
    with Image.open(paths[1]) as gif:
        assert gif.n_frames == 5 and gif.size == (8, 8)
    with Image.open(paths[-1]) as gif:
        assert gif.n_frames == 5  # the longest cell
        assert gif.width >= 2 * 8 + 1 and gif.height >= 2 * 10 + 1
        gif.seek(4)
        last = np.asarray(gif.convert("RGB"))
    assert (last > 0).any()
