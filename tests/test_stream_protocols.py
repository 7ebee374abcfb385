"""The GEM/BCL data protocols: `stream.use` (part of each task's training set, any stream) and the -val/-cl split
(`stream.n_val_tasks`, `stream.part`) of the MNIST streams, which shares its task selection with cifar100_split."""
from __future__ import annotations

import json

import pytest
import torch

from cl.errors import ConfigError, first_cl_error
from data.device_stream import DeviceStream
from data import streams
from data.cifar import cifar100_split
from data.stream import Split, Stream, Task, part_tasks
from tests.conftest import compose_config, run_cli, run_pipeline
from tests.test_bad_input import error_line

TWO_TASKS = "stream.tasks=[[0,1],[2,3]]"


def same_split(a, b) -> bool:
    return torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


# --- stream.use ----------------------------------------------------------------------------------------------------

def test_use_fraction_and_count_give_the_sizes_and_leave_valid_and_test_alone():
    full = streams.digits5(seed=0)
    half = full.subsample_train(0.5, seed=0)
    count = full.subsample_train(20, seed=0)
    for t, task in enumerate(full.tasks):
        assert len(half.tasks[t].train) == round(0.5 * len(task.train)) and len(count.tasks[t].train) == 20
        for part in (half, count):
            assert part.tasks[t].valid is task.valid and part.tasks[t].test is task.test
            assert part.tasks[t].name == task.name and part.tasks[t].transform is task.transform
    assert full.subsample_train(None, seed=0) is full
    assert [len(t.train) for t in full.subsample_train(1.0, seed=0).tasks] == [len(t.train) for t in full.tasks]
    assert all(len(t.train) == 1 for t in full.subsample_train(1e-9, seed=0).tasks)  # never an empty task


def positions(sizes: list[int], use, seed: int) -> list[list[int]]:
    """Which positions of each task's training split `use` keeps, read off a stream whose inputs are positions."""
    empty = Split(torch.arange(0), torch.arange(0))
    tasks = [Task(f"t{t}", [0, 1], Split(torch.arange(n), torch.zeros(n, dtype=torch.long)), empty, empty)
             for t, n in enumerate(sizes)]
    return [t.train.x.tolist() for t in Stream("s", tasks, (1,)).subsample_train(use, seed).tasks]


def test_use_draws_are_reproducible_differ_across_seeds_and_depend_on_nothing_else():
    a, b, c = (positions([100, 50, 80], 30, seed) for seed in (0, 0, 1))
    assert a == b and all(p != q for p, q in zip(a, c))
    assert all(len(set(p)) == 30 and p == sorted(p) for p in a)  # distinct samples, in the task's order
    assert positions([40, 50], 30, 0)[1] == a[1] == positions([10, 50], 0.6, 0)[1]  # (seed, task, size) only
    full = streams.digits5(seed=0)
    for sub, task, pos in zip(full.subsample_train(0.5, seed=3).tasks, full.tasks,
                              positions([len(t.train) for t in full.tasks], 0.5, 3)):
        assert same_split(sub.train, Split(task.train.x[pos], task.train.y[pos]))


def test_use_on_pmnist_gives_each_task_its_own_tensors(mnist_dir):
    full = streams.permuted_mnist(mnist_dir, n_tasks=3, seed=0)
    assert full.tasks[0].train.x is full.tasks[1].train.x  # shared while every task has all samples
    sub = full.subsample_train(100, seed=0)
    assert len({id(t.train.x) for t in sub.tasks}) == 3 and all(len(t.train) == 100 for t in sub.tasks)
    assert not same_split(sub.tasks[0].train, sub.tasks[1].train)
    for s, f in zip(sub.tasks, full.tasks):  # the permutations and the other splits are the stream's own
        assert torch.equal(s.transform.permutation, f.transform.permutation)
        assert s.valid is f.valid and s.test is f.test
    data = DeviceStream(sub, "cpu", shared_head=True)
    sources = [data.source(t, "train") for t in range(3)]
    assert [len(s.y) for s in sources] == [100] * 3
    assert not torch.equal(sources[0].x, sources[1].x)  # device copies keyed by each task's own tensor


def test_use_is_a_key_of_every_stream_and_the_pipeline_applies_it(tmp_path):
    from cl.run.supervised import build

    for stream in ("digits5", "pmnist", "rotmnist", "cifar100_split", "gem_file", "cub_split"):
        assert compose_config([f"stream={stream}", "stream.use=0.5"], tmp_path).stream.use == 0.5
    cfg = compose_config(["stream=digits5", TWO_TASKS, "stream.use=25", "approach=sgd", "seed=4"], tmp_path)
    stream, _ = build(cfg)
    expected = streams.digits5(tasks=((0, 1), (2, 3)), seed=4).subsample_train(25, seed=4)
    assert [len(t.train) for t in stream.tasks] == [25, 25]
    assert all(same_split(p.train, q.train) for p, q in zip(stream.tasks, expected.tasks))
    assert cfg.stream.use == 25  # the config keeps it (results.json, resume)


def test_a_run_with_use_trains_and_records_it(tmp_path):
    results = run_pipeline(["stream=digits5", TWO_TASKS, "stream.use=0.25", "approach=sgd", "debug=default"],
                           tmp_path / "run")
    assert len(results["acc_matrix"]) == 2 and results["config"]["stream"]["use"] == 0.25
    assert json.loads((tmp_path / "run" / "results.json").read_text())["complete"]


@pytest.mark.parametrize("value,expected", [
    ("2.5", "stream.use=2.5 must be a number > 0 and <= 1, or an integer > 1, or null"),
    ("0", "stream.use=0 must be a number > 0 and <= 1, or an integer > 1, or null"),
])
def test_bad_use_stops_with_one_line_before_training(value, expected, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["stream=digits5", f"stream.use={value}", f"hydra.run.dir={run_dir}"])
    assert expected in error_line(proc)
    assert not run_dir.exists()


def test_bad_use_is_refused_before_the_run(tmp_path):
    from cl.config.options import check_options

    for bad in (0, -0.5, 2.5, float("inf"), True):
        with pytest.raises(ConfigError, match="stream.use="):
            check_options(compose_config(["stream=digits5", f"stream.use={bad}"], tmp_path))
    n = len(streams.digits5().tasks[0].train)
    with pytest.raises(Exception) as err:  # a count above a task's training set: before training, one line
        run_pipeline(["stream=digits5", "stream.use=1000", "approach=sgd"], tmp_path / "run")
    message = str(first_cl_error(err.value))
    assert message == (f"stream.use=1000 asks for 1000 training samples per task, but task 1 (0-1) has only {n}; "
                       f"use a count <= {n} or a fraction in (0, 1]")
    assert not (tmp_path / "run" / "results.json").exists()


# --- the -val/-cl protocol -------------------------------------------------------------------------------------

def test_part_tasks_ranges_and_checks():
    assert part_tasks("all", 3, 10) == range(10)
    assert part_tasks("val", 3, 10) == range(3) and part_tasks("cl", 3, 10) == range(3, 10)
    assert part_tasks("cl", 0, 10) == range(10)
    for part, n_val, n_tasks, message in (("val", 0, 5, "stream.n_val_tasks=0 must be below stream.n_tasks=5"),
                                          ("cl", 5, 5, "stream.n_val_tasks=5 must be below stream.n_tasks=5")):
        with pytest.raises(ConfigError) as err:
            part_tasks(part, n_val, n_tasks)
        assert message in str(err.value) and "\n" not in str(err.value)


def assert_same_tasks(part, whole):
    assert [t.name for t in part] == [t.name for t in whole]
    for p, w in zip(part, whole):
        assert same_split(p.train, w.train) and same_split(p.valid, w.valid) and same_split(p.test, w.test)
        assert p.classes == w.classes == list(range(10))
        if w.transform.permutation is None:
            assert p.transform.permutation is None
        else:
            assert torch.equal(p.transform.permutation, w.transform.permutation)


@pytest.mark.parametrize("train_per_task", [200, None])
def test_pmnist_val_and_cl_parts_are_the_tasks_of_all(train_per_task, mnist_dir):
    kw = dict(n_tasks=5, seed=2, train_per_task=train_per_task, pc_valid=0.1)
    whole = streams.permuted_mnist(mnist_dir, **kw)
    val = streams.permuted_mnist(mnist_dir, n_val_tasks=2, part="val", **kw)
    cl = streams.permuted_mnist(mnist_dir, n_val_tasks=2, part="cl", **kw)
    assert len(val) == 2 and len(cl) == 3 and [t.name for t in cl.tasks] == ["p2", "p3", "p4"]
    assert_same_tasks(val.tasks, whole.tasks[:2])
    assert_same_tasks(cl.tasks, whole.tasks[2:])
    assert not {t.name for t in val.tasks} & {t.name for t in cl.tasks}
    if train_per_task:  # each task drew its own samples
        assert not same_split(cl.tasks[0].train, cl.tasks[1].train)


def test_rotmnist_val_and_cl_parts_are_the_tasks_of_all(mnist_dir):
    kw = dict(n_tasks=4, seed=1, train_per_task=100, pc_valid=0.2)
    whole = streams.rotated_mnist(mnist_dir, **kw)
    val = streams.rotated_mnist(mnist_dir, n_val_tasks=1, part="val", **kw)
    cl = streams.rotated_mnist(mnist_dir, n_val_tasks=1, part="cl", **kw)
    assert len(val) == 1 and len(cl) == 3
    assert_same_tasks(val.tasks + cl.tasks, whole.tasks)
    assert len(cl.tasks[0].train) == 80 and len(cl.tasks[0].valid) == 20


@pytest.mark.parametrize("build", [streams.permuted_mnist, streams.rotated_mnist])
def test_mnist_parts_are_checked(build, mnist_dir):
    with pytest.raises(ConfigError, match=r"stream.n_val_tasks=0 must be below stream.n_tasks=3 \(and >= 1 for part=val\)"):
        build(mnist_dir, n_tasks=3, part="val")
    with pytest.raises(ConfigError, match="stream.n_val_tasks=3"):
        build(mnist_dir, n_tasks=3, n_val_tasks=3, part="cl")


def test_cifar100_split_reports_its_part_errors_as_before(data_root):
    with pytest.raises(ConfigError, match=r"stream.n_val_tasks=20 must be below stream.n_tasks=20"):
        cifar100_split(str(data_root), n_val_tasks=20, part="cl")
    with pytest.raises(ConfigError, match="must divide the 100 CIFAR-100 classes"):
        cifar100_split(str(data_root), n_tasks=7)


# --- pixel scaling -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    lambda root, **kw: streams.permuted_mnist(root, n_tasks=2, train_per_task=50, download=False, **kw),
    lambda root, **kw: streams.rotated_mnist(root, n_tasks=2, train_per_task=50, download=False, **kw),
    lambda root, **kw: streams.split_mnist(root, tasks=[[0, 1], [2, 3]], download=False, **kw),
])
def test_mnist_streams_feed_raw_pixels_without_normalize(build, mnist_dir):
    """GEM's and BCL's data files hold pixels / 255: `normalize=false` gives exactly those (still permuted per task);
    the default standardizes them with MNIST's mean and std."""
    raw, standard = build(str(mnist_dir), normalize=False), build(str(mnist_dir))
    for kind in (raw, standard):
        assert torch.equal(kind.tasks[1].train.x, raw.tasks[1].train.x)  # the stored uint8 images are the same
    task = raw.tasks[1]
    pixels = task.transform(task.train.x[:20])
    expected = task.train.x[:20].float() / 255.0
    if task.transform.permutation is not None:
        expected = expected.flatten(1)[:, task.transform.permutation].view(expected.shape)
    assert torch.equal(pixels, expected) and 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    standardized = standard.tasks[1].transform(task.train.x[:20])
    torch.testing.assert_close(standardized, (expected - 0.1307) / 0.3081)
