"""Each kind of bad input stops with one clear line, a non-zero exit, and no half-written results."""
import gzip
import shutil

import pytest

from data.mnist import load_mnist
from cl.errors import DatasetError
from tests.conftest import SHARED_DATA, run_cli


def error_line(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["approach.lr=abc"], "approach.lr='abc' has the wrong type: expected float"),
    (["trainer.max_epochs=many"], "trainer.max_epochs='many' has the wrong type"),
    (["seed=x"], "seed='x' must be an integer"),
    (["approach=independent", "model.head=shared"], "use model.head=multi"),
    (["model.head=both"], "model.head='both' is not one of"),
    (["approach.lr=1e38"], "the training loss became nan in task 0"),
    (["stream.tasks=[[0,1],[1,2]]"], "must be disjoint groups"),
])
def test_bad_values_stop_with_one_line(args, expected, tmp_path):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path}"])
    assert expected in error_line(proc)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("args,expected", [
    (["approach.no_such_knob=1"], "Key 'no_such_knob' is not in struct"),
    (["stream=no_such_stream"], "Could not find 'stream/no_such_stream'"),
])
def test_unknown_options_fail_in_hydra_before_any_work(args, expected, tmp_path):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path}"])
    assert proc.returncode != 0 and expected in proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_missing_mnist_names_the_path(tmp_path):
    proc = run_cli(["stream=mnist5", f"paths.data_dir={tmp_path}", "stream.download=false",
                    f"hydra.run.dir={tmp_path / 'run'}"])
    line = error_line(proc)
    assert f"{tmp_path}/mnist" in line and "CL_DATA_DIR" in line


def corrupt_copy(tmp_path, stem: str, mutate) -> None:
    dst = tmp_path / "mnist"
    shutil.copytree(SHARED_DATA / "mnist", dst)
    path = dst / f"{stem}.gz"
    path.write_bytes(mutate(path.read_bytes()))


def test_corrupt_gzip_is_reported(mnist_dir, tmp_path):
    corrupt_copy(tmp_path, "t10k-labels-idx1-ubyte", lambda b: b[: len(b) // 2])
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is not a valid gzip file"):
        load_mnist(tmp_path, allow_download=False)


def test_wrong_content_is_reported(mnist_dir, tmp_path):
    def flip_a_label(blob: bytes) -> bytes:
        raw = bytearray(gzip.decompress(blob))
        raw[100] = (raw[100] + 1) % 10
        return gzip.compress(bytes(raw))

    corrupt_copy(tmp_path, "t10k-labels-idx1-ubyte", flip_a_label)
    with pytest.raises(DatasetError, match="does not match the canonical MNIST file"):
        load_mnist(tmp_path, allow_download=False)


def test_longer_file_is_reported(mnist_dir, tmp_path):
    corrupt_copy(tmp_path, "t10k-labels-idx1-ubyte", lambda b: gzip.compress(gzip.decompress(b) + bytes(3)))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        load_mnist(tmp_path, allow_download=False)


def test_corrupt_dataset_via_cli_keeps_earlier_results(mnist_dir, tmp_path):
    corrupt_copy(tmp_path, "train-labels-idx1-ubyte", lambda b: gzip.compress(gzip.decompress(b)[:-10]))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"kept": true}')
    proc = run_cli(["stream=mnist5", f"paths.data_dir={tmp_path}", f"hydra.run.dir={run_dir}"])
    assert "truncated or corrupt" in error_line(proc)
    assert (run_dir / "results.json").read_text() == '{"kept": true}'
