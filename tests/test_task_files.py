"""The MAS re-implementation's run-folder files (cl/callbacks/task_files.py) and its step decay (cl/callbacks/schedule.py)."""
from __future__ import annotations

import csv
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cl.callbacks.task_files import TaskFiles
from tests.conftest import run_pipeline


def test_task_files_layout_and_step_decay(tmp_path):
    results = run_pipeline(["approach=sgd", "callbacks=mas_reimpl", "callbacks.lr_schedule.step_size=1",
                            "callbacks.lr_schedule.gamma=0.5", "stream.tasks=[[0,1],[2,3]]", "debug=default",
                            "trainer.max_epochs=2"], tmp_path)
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == ["Task_1", "Task_2", "shared_model.pth"]
    for n in (1, 2):
        task = models / f"Task_{n}"
        assert sorted(p.name for p in task.iterdir()) == ["classes.txt", "head.pth", "performance.txt"]
        head = torch.load(task / "head.pth", weights_only=True)
        assert {k: tuple(v.shape) for k, v in head.items()} == {"fc.weight": (2, 1200), "fc.bias": (2,)}
        assert (task / "classes.txt").read_text() == "2"
        assert float((task / "performance.txt").read_text()) == results["acc_matrix"][n - 1][n - 1]
    trunk = torch.load(models / "shared_model.pth", weights_only=True)
    assert list(trunk) == ["1.weight", "1.bias"] and trunk["1.weight"].shape == (1200, 64)
    assert not (models / "importances.pt").exists()  # sgd has no importances
    # lr × 0.5 at each epoch of each task, from the task's own lr
    with open(tmp_path / "csv" / "metrics.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")]
    assert lrs == pytest.approx([0.01, 0.005] * 2)


def test_importances_are_a_plain_tensor_file_keyed_by_parameter_name(tmp_path):
    net = SimpleNamespace(head_for=lambda t: nn.Linear(4, 3), trunk=nn.Linear(5, 4))
    omega = {"trunk.weight": torch.rand(4, 5), "trunk.bias": torch.rand(4)}
    approach = SimpleNamespace(net=net, importances=lambda: omega)
    TaskFiles().on_task_evaluated(approach, 0, [0.75, 0.1], tmp_path)
    saved = torch.load(tmp_path / "models" / "importances.pt", weights_only=True)
    assert saved.keys() == omega.keys() and all(torch.equal(saved[k], omega[k]) for k in omega)
    assert (tmp_path / "models" / "Task_1" / "classes.txt").read_text() == "3"
    assert (tmp_path / "models" / "Task_1" / "performance.txt").read_text() == "0.75"
