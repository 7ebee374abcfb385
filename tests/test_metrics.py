"""The metric formulas against matrices computed by hand."""
import pytest

from cl.outputs import metrics

# R[t][j]: accuracy on task j after training task t; b: accuracy at random initialisation
R = [[0.90, 0.20, 0.10],
     [0.70, 0.80, 0.30],
     [0.60, 0.75, 0.95]]
B = [0.10, 0.25, 0.05]


def test_acc_is_the_mean_of_the_last_row():
    assert metrics.acc(R) == pytest.approx((0.60 + 0.75 + 0.95) / 3)


def test_bwt_gem_divides_by_t_minus_1():
    assert metrics.bwt(R) == pytest.approx(((0.60 - 0.90) + (0.75 - 0.80)) / 2)


def test_bwt_blip_divides_by_t_and_includes_the_last_task():
    assert metrics.bwt_blip(R) == pytest.approx(((0.60 - 0.90) + (0.75 - 0.80) + 0.0) / 3)
    assert metrics.bwt_blip(R) == pytest.approx(metrics.bwt(R) * 2 / 3)


def test_fwt_against_random_init():
    assert metrics.fwt(R, B) == pytest.approx(((0.20 - 0.25) + (0.30 - 0.05)) / 2)


def test_forgetting_uses_the_best_earlier_accuracy():
    # task 0: best earlier 0.90, final 0.60; task 1: best earlier max(0.20, 0.80), final 0.75
    assert metrics.forgetting(R) == pytest.approx(((0.90 - 0.60) + (0.80 - 0.75)) / 2)


def test_learning_accuracy_is_the_mean_of_the_diagonal():
    assert metrics.learning_accuracy(R) == pytest.approx((0.90 + 0.80 + 0.95) / 3)


def test_single_task_stream_has_zero_transfer_metrics():
    m = metrics.all_metrics([[0.8]], [0.1])
    assert m == {"acc": 0.8, "bwt": 0.0, "bwt_blip": 0.0, "fwt": 0.0, "forgetting": 0.0, "la": 0.8}
