"""Bit-packed export of a BLIP model, and the loader that rebuilds it.

    python -m cl.blip.export <run_dir | checkpoint.ckpt> [-o model.blip] [--heads float16|float32]

The model exported is the network as it is after the last finished task's re-quantization (the run's last
checkpoint), where every quantized trunk parameter sits exactly on its grid.

Encoding of a quantized tensor with per-element frozen bits b (lossless):
- the bit map: every b in a fixed width of ceil(log2(max_bit+1)) bits (5 for max_bit 20);
- each element with b > 0 is bound·k/2^b for an integer k in [-2^b, 2^b]; it is stored as k in (b+1)-bit two's
  complement (a sign and b bits, so [-2^b, 2^b-1]), all elements' codes concatenated in element order into one
  bit stream. The one value that does not fit, k = +2^b (the parameter exactly at +bound, possible when it sat on
  the clip limit), is listed instead by element index (uint32) and stored as code 0;
- elements with b = 0 are exactly 0 and take no bits beyond the bit map.
The value is rebuilt with the float32 operations of the quantizer (k / 2^b · bound), so it is bit-identical.
Task heads are stored as float16 or float32 (--heads; float32 gives identical predictions); other trunk tensors
(BatchNorm parameters and statistics) as they are.

File layout: b"BLIPPACK1\\n", an 8-byte little-endian header length, a UTF-8 JSON header (model config, input
shape, head widths, tensor table with offsets), then the tensors' bytes.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from cl.errors import ConfigError
from cl.models.network import TaskNetwork
from cl.outputs.results import atomic_write, read_results

MAGIC = b"BLIPPACK1\n"
NET_PREFIX = "net."
STATE_PREFIX = "quantizer.state."
NETWORK_KEY = "blip_network"  # what the checkpoint says about the network's shapes (BLIP.on_save_checkpoint)


# --- variable-width bit packing -----------------------------------------------------------------------------------
def pack_codes(codes: np.ndarray, widths: np.ndarray) -> bytes:
    """Concatenate the low `widths[i]` bits of every `codes[i]` (LSB first) into a byte string."""
    starts = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)[:-1]])
    stream = np.zeros(int(widths.sum()), dtype=np.uint8)
    for j in range(int(widths.max(initial=0))):
        has = widths > j
        stream[starts[has] + j] = (codes[has] >> j) & 1
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_codes(data: bytes, widths: np.ndarray) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    starts = np.concatenate([[0], np.cumsum(widths, dtype=np.int64)[:-1]])
    codes = np.zeros(len(widths), dtype=np.int64)
    for j in range(int(widths.max(initial=0))):
        has = widths > j
        codes[has] |= stream[starts[has] + j].astype(np.int64) << j
    return codes


def map_width(max_bit: int) -> int:
    return max(1, math.ceil(math.log2(max_bit + 1)))


def encode_quantized(value: torch.Tensor, bits: torch.Tensor, bound: float, max_bit: int) -> dict[str, bytes]:
    from cl.blip.quant import grid_index, quantize

    if not torch.equal(quantize(value.float(), bits, bound), value.float()):
        raise ConfigError("the checkpoint's trunk is not on its quantization grid; export a checkpoint written "
                          "after a task ended (run_dir/checkpoints/task_<t>.ckpt)")
    b = bits.flatten().long().numpy()
    k = grid_index(value, bits, bound).flatten().numpy()
    overflow = np.flatnonzero((b > 0) & (k == (1 << b)))
    k[overflow] = 0
    frozen = b > 0
    codes = np.where(k < 0, k + (1 << (b + 1)), k)[frozen]
    return {"bits": pack_codes(b, np.full(len(b), map_width(max_bit))),
            "codes": pack_codes(codes, b[frozen] + 1),
            "overflow": overflow.astype("<u4").tobytes()}


def decode_quantized(blobs: dict[str, bytes], shape: list[int], bound: float, max_bit: int) -> torch.Tensor:
    n = math.prod(shape)
    b = unpack_codes(blobs["bits"], np.full(n, map_width(max_bit)))
    frozen = b > 0
    codes = unpack_codes(blobs["codes"], b[frozen] + 1)
    k = np.zeros(n, dtype=np.int64)
    k[frozen] = np.where(codes >= (1 << b[frozen]), codes - (1 << (b[frozen] + 1)), codes)
    overflow = np.frombuffer(blobs["overflow"], dtype="<u4").astype(np.int64)
    k[overflow] = 1 << b[overflow]
    bits = torch.from_numpy(b).view(shape)
    scale = torch.exp2(bits.float())
    return (torch.from_numpy(k).float().view(shape) / scale * bound).masked_fill_(bits == 0, 0.0)


# --- reading a run ------------------------------------------------------------------------------------------------
def locate(path: Path) -> tuple[Path, dict]:
    """(checkpoint, composed config) for a run dir (its last task's checkpoint) or a checkpoint inside one."""
    path = Path(path)
    if path.is_dir():
        ckpts = sorted((path / "checkpoints").glob("task_*.ckpt"), key=lambda p: int(p.stem.split("_")[1]))
        if not ckpts:
            raise ConfigError(f"{path} holds no checkpoints/task_<t>.ckpt; pass a BLIP run dir or a checkpoint")
        ckpt, run_dir = ckpts[-1], path
    elif path.is_file():
        ckpt, run_dir = path, path.parent.parent
    else:
        raise ConfigError(f"{path} does not exist; pass a BLIP run dir or run_dir/checkpoints/task_<t>.ckpt")
    results = read_results(run_dir)
    if results is None:
        raise ConfigError(f"{run_dir} holds no results.json (needed for the model config)")
    return ckpt, results["config"]


def export(path: Path, out: Path | None = None, heads: str = "float32") -> tuple[Path, int, int]:
    """Write the packed model; returns (file, its size in bytes, the float32 size of the network)."""
    if heads not in ("float16", "float32"):
        raise ConfigError(f"--heads {heads!r} must be float16 or float32")
    ckpt_path, config = locate(path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if NETWORK_KEY not in ckpt or config["approach"]["_target_"] != "cl.approaches.isolation.blip.BLIP":
        raise ConfigError(f"{ckpt_path} is not a BLIP checkpoint")
    state = ckpt["state_dict"]
    max_bit = config["approach"]["max_bit"]
    bounds = ckpt[NETWORK_KEY]["bounds"]
    table, payload = [], bytearray()

    def add(entry: dict, blobs: dict[str, bytes]):
        entry["blobs"] = {}
        for key, data in blobs.items():
            entry["blobs"][key] = [len(payload), len(data)]
            payload.extend(data)
        table.append(entry)

    float32_bytes = 0
    for key, value in state.items():
        if not key.startswith(NET_PREFIX):
            continue
        name = key[len(NET_PREFIX):]
        float32_bytes += value.numel() * 4
        trunk_name = name[len("trunk."):] if name.startswith("trunk.") else None
        if trunk_name in bounds:
            bits = state[f"{STATE_PREFIX}{trunk_name.replace('.', '__')}.bits"]
            add({"name": name, "kind": "quantized", "shape": list(value.shape), "bound": bounds[trunk_name]},
                encode_quantized(value, bits, bounds[trunk_name], max_bit))
            continue
        stored = value.to(getattr(torch, heads)) if name.startswith("heads.") else value
        add({"name": name, "kind": "raw", "shape": list(value.shape), "dtype": str(stored.dtype).split(".")[1]},
            {"data": stored.contiguous().numpy().tobytes()})
    header = {"model": config["model"], "network": ckpt[NETWORK_KEY]["shapes"], "max_bit": max_bit,
              "heads": heads, "tensors": table}
    header_bytes = json.dumps(header).encode()
    out = Path(out) if out else ckpt_path.parent.parent / "model.blip"
    atomic_write(out, MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + bytes(payload))
    return out, out.stat().st_size, float32_bytes


def load(path: Path) -> TaskNetwork:
    """Rebuild the network of a packed file (eval mode), ready for `net(x, task)`."""
    raw = Path(path).read_bytes()
    if not raw.startswith(MAGIC):
        raise ConfigError(f"{path} is not a BLIP packed model (made by python -m cl.blip.export)")
    (n,) = struct.unpack_from("<Q", raw, len(MAGIC))
    start = len(MAGIC) + 8
    header = json.loads(raw[start:start + n])
    payload = memoryview(raw)[start + n:]
    shapes = header["network"]
    net: TaskNetwork = hydra.utils.instantiate(OmegaConf.create(header["model"]), input_shape=shapes["input_shape"],
                                               task_classes=shapes["task_classes"],
                                               n_shared_classes=shapes["n_shared_classes"])
    state = {}
    for entry in header["tensors"]:
        blobs = {k: bytes(payload[o:o + size]) for k, (o, size) in entry["blobs"].items()}
        if entry["kind"] == "quantized":
            state[entry["name"]] = decode_quantized(blobs, entry["shape"], entry["bound"], header["max_bit"])
        else:
            dtype = getattr(torch, entry["dtype"])
            tensor = torch.frombuffer(bytearray(blobs["data"]), dtype=dtype) if blobs["data"] else \
                torch.empty(0, dtype=dtype)
            state[entry["name"]] = tensor.view(entry["shape"])
    own = net.state_dict()
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return net.eval()


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m cl.blip.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a BLIP run dir, or one of its checkpoints/task_<t>.ckpt")
    parser.add_argument("-o", "--output", type=Path, help="output file (default: <run_dir>/model.blip)")
    parser.add_argument("--heads", default="float32", choices=["float16", "float32"],
                        help="precision of the task heads (float32 gives identical predictions)")
    args = parser.parse_args(argv)
    try:
        out, size, float32_size = export(args.path, args.output, args.heads)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")
    print(f"{out}: {size:,} bytes (float32 network: {float32_size:,} bytes, {float32_size / size:.1f}x smaller)")


if __name__ == "__main__":
    main()
