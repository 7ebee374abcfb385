"""Each kind of bad input stops with one clear line, a non-zero exit, and no half-written results."""
import gzip
import json
import shutil

import pytest

from data.mnist import load_mnist
from cl.errors import DatasetError, first_cl_error
from tests.conftest import SHARED_DATA, run_cli, run_pipeline


def error_line(proc) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["approach.lr=abc"], "approach.lr='abc' has the wrong type: expected float"),
    (["trainer.max_epochs=many"], "trainer.max_epochs='many' has the wrong type"),
    (["seed=x"], "seed='x' has the wrong type: expected int"),
    (["model.head=both"], "model.head='both' is not one of 'multi', 'shared'"),
    (["approach.momentum=1.5"], "approach.momentum=1.5 is out of range: must be a number >= 0 and < 1"),
])
def test_bad_values_stop_with_one_line_and_leave_no_run_dir(args, expected, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*args, f"hydra.run.dir={run_dir}"])
    assert expected in error_line(proc)
    assert not run_dir.exists()  # Hydra made it for this run, and nothing was saved


@pytest.mark.parametrize("args,expected", [
    (["approach=independent", "model.head=shared"], "use model.head=multi"),
    (["stream.tasks=[[0,1],[1,2]]"], "must be disjoint groups"),
    (["trainer=gpu"], "no GPU is visible"),
    (["stream.pc_valid=0", "callbacks=hat_schedule"], "no validation split"),
])
def test_impossible_combinations_stop_before_training(args, expected, tmp_path):
    with pytest.raises(Exception) as err:
        run_pipeline(args, tmp_path)
    assert expected in str(first_cl_error(err.value))
    assert not (tmp_path / "results.json").exists() or json.loads((tmp_path / "results.json").read_text())["tasks_done"] == 0


def test_a_failed_run_leaves_no_run_dir_and_one_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["approach.lr=1e38", "approach=sgd", f"hydra.run.dir={run_dir}"])
    assert "the training loss became nan in task 1" in error_line(proc)
    assert not run_dir.exists()


def test_missing_mnist_names_the_path_and_creates_nothing(tmp_path):
    missing = tmp_path / "no" / "such" / "root"
    with pytest.raises(DatasetError) as err:
        load_mnist(missing, allow_download=False)
    assert f"{missing}/mnist" in str(err.value) and "CL_DATA_DIR" in str(err.value)
    assert not (tmp_path / "no").exists()


def test_a_failed_download_creates_no_folders(tmp_path, monkeypatch):
    import data.download

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data.download.urllib.request, "urlopen", offline)
    dest = tmp_path / "no" / "such" / "root" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DatasetError, match="could not download t10k-labels-idx1-ubyte.gz"):
        data.download.download(["http://127.0.0.1:9/x"], dest)
    assert not (tmp_path / "no").exists()


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


def test_a_failed_run_keeps_what_was_in_its_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text('{"kept": true}')
    proc = run_cli(["approach.lr=abc", f"hydra.run.dir={run_dir}"])
    assert "approach.lr='abc' has the wrong type" in error_line(proc)
    assert (run_dir / "results.json").read_text() == '{"kept": true}'
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "results.json", "train.log"]


# urllib takes these: every download fails at once, as on a machine without a network
OFFLINE = {key: "http://127.0.0.1:9" for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
OFFLINE.update(no_proxy="", NO_PROXY="")


def test_a_missing_data_dir_offline_says_where_to_put_which_files_and_leaves_nothing(tmp_path):
    data_root = tmp_path / "no_data"
    proc = run_cli(["stream=mnist5", "approach=ewc", f"paths.data_dir={data_root}"], cwd=tmp_path, env=OFFLINE)
    line = error_line(proc)
    assert proc.returncode == 1
    assert f"{data_root}/mnist" in line
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz", "<data root>/mnist/", "CL_DATA_DIR=", "paths.data_dir="):
        assert name in line, name
    assert "online" not in line
    assert "run dir:" not in proc.stdout + proc.stderr  # the run never started
    assert list(tmp_path.iterdir()) == []  # no outputs/mnist5/ewc/, no data root
