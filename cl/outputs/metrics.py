"""Continual-learning metrics from the accuracy matrix R (R[t][j]: accuracy on task j after training task t).

Conventions (see docs/metrics.md): `bwt` divides by T-1 (GEM paper, BCL); `bwt_blip` divides by T and includes
the last task's zero term (BLIP/HAT code); `fwt` is measured against the accuracy at random initialisation;
`forgetting` is the mean over old tasks of the best earlier accuracy minus the final one (positive = forgot).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def acc(R) -> float:
    R = np.asarray(R, dtype=float)
    return float(R[-1].mean())


def learning_accuracy(R) -> float:
    R = np.asarray(R, dtype=float)
    return float(np.diag(R).mean())


def bwt(R) -> float:
    R = np.asarray(R, dtype=float)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def bwt_blip(R) -> float:
    R = np.asarray(R, dtype=float)
    T = len(R)
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T)]))


def fwt(R, random_init: Sequence[float]) -> float:
    R = np.asarray(R, dtype=float)
    b = np.asarray(random_init, dtype=float)
    T = len(R)
    if T < 2:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting_per_task(R) -> np.ndarray:
    """Per task j: the best accuracy before the last row minus the final one (positive = forgot); 0 for the last
    task, which has no earlier row after its training."""
    R = np.asarray(R, dtype=float)
    T = len(R)
    out = np.zeros(T)
    for j in range(T - 1):
        out[j] = R[: T - 1, j].max() - R[-1, j]
    return out


def forgetting(R) -> float:
    R = np.asarray(R, dtype=float)
    T = len(R)
    if T < 2:
        return 0.0
    return float(forgetting_per_task(R)[: T - 1].mean())


def all_metrics(R, random_init: Sequence[float]) -> dict[str, float]:
    """Metrics of the square matrix R (pass R[:k, :k] for the first k tasks of a stream still running)."""
    return {"acc": acc(R), "bwt": bwt(R), "bwt_blip": bwt_blip(R), "fwt": fwt(R, random_init),
            "forgetting": forgetting(R), "la": learning_accuracy(R)}
