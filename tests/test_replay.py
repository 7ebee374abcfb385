"""The episodic memory and the replay approaches (ER, A-GEM, GEM, BCL-Single, BCL-Dual): their defining invariants,
checked so that a broken implementation fails."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl.approaches.replay.bcl_dual import BCLDual
from cl.approaches.replay.gem import GEM
from cl.approaches.replay.agem import project_on_reference
from cl.approaches.replay.gem import EPS, gem_dual, project_to_cone
from cl.approaches.replay.icarl import herding
from cl.errors import ConfigError, first_cl_error
from cl.approaches.replay.memory import EpisodicMemory
from cl.models.mlp import MLP
from cl.models.network import TaskNetwork
from data.device_stream import DeviceStream
from data.streams import digits5, permuted_mnist
from tests.conftest import SHARED_DATA, run_pipeline

ONLINE = ["stream.tasks=[[0,1],[2,3],[4,5]]", "trainer.max_epochs=1", "approach.batch_size=10",
          "approach.n_memories=20", "approach.chunk_batches=7", "eval_max_samples=100", "seed=2"]


# --- the memory ------------------------------------------------------------------------------------------------------
def batches(n: int, size: int):
    """digits5-shaped batches (1×8×8) whose every pixel is the sample's number (float inputs: stored as they are)."""
    for i in range(n):
        x = torch.arange(i * size, (i + 1) * size, dtype=torch.float32).view(-1, 1, 1, 1).expand(size, 1, 8, 8)
        yield x.contiguous(), torch.arange(i * size, (i + 1) * size) % 7


@pytest.mark.parametrize("policy", ["ring", "reservoir"])
def test_memory_keeps_its_size_per_task_and_ring_keeps_the_last_samples(policy):
    stream = digits5()
    memory = EpisodicMemory(stream, per_task=25, policy=policy, seed=1)
    for x, y in batches(13, 10):
        memory.add(1, x, y)
    assert memory.filled == [0, 25, 0, 0, 0] and memory.seen[1] == 130
    held = sorted(memory.task(1)[0][:, 0, 0, 0].long().tolist())
    assert len(set(held)) == 25 and all(0 <= v < 130 for v in held)
    if policy == "ring":
        assert held == list(range(105, 130))
    else:  # a uniform sample of the stream: not just its end
        assert min(held) < 105


def test_memory_state_survives_a_reload_bit_for_bit_and_continues_identically():
    stream = digits5()
    a = EpisodicMemory(stream, per_task=16, policy="reservoir", seed=3)
    data = list(batches(9, 10))
    for x, y in data[:5]:
        a.add(0, x, y)
    b = EpisodicMemory(stream, per_task=16, policy="reservoir", seed=3)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.filled == b.filled and a.seen == b.seen
    for x, y in data[5:]:
        a.add(0, x, y)
        b.add(0, x, y)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_memory_storage_float_or_uint8_gives_back_the_model_inputs_bit_for_bit():
    stream = permuted_mnist(str(SHARED_DATA), n_tasks=2, train_per_task=300, download=False)
    source = DeviceStream(stream, "cpu", shared_head=True).source(1, "train")
    x = source.transform(source.x[:50])
    for limit, dtype in ((0, torch.uint8), (64 << 20, torch.float32)):  # uint8 only where floats would be large
        memory = EpisodicMemory(stream, per_task=64, max_float_bytes=limit)
        memory.add(1, x, source.y[:50])
        assert memory.x.dtype == dtype
        assert torch.equal(memory.task(1)[0], x)
        assert torch.equal(memory.sample(range(2), 64).x.sort(0).values, x.sort(0).values)


# --- the projections -------------------------------------------------------------------------------------------------
def test_agem_projection_removes_the_conflict_and_keeps_an_agreeing_gradient():
    g, ref = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    if torch.dot(g, ref) > 0:
        ref = -ref
    projected = project_on_reference(g, ref)
    assert abs(float(torch.dot(projected, ref))) < 1e-10
    assert torch.equal(project_on_reference(g, -ref), g)


@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_gem_projection_satisfies_every_memory_constraint(margin):
    rng = np.random.default_rng(0)
    G = torch.from_numpy(rng.normal(size=(6, 40)))
    g = -G.sum(0) + torch.from_numpy(rng.normal(size=40))  # conflicts with most memories
    assert (G @ g < 0).sum() >= 3
    v = gem_dual(G, g, margin)
    g_tilde = project_to_cone(g, G, margin)
    # the QP's optimality: G g̃ + ε v ≥ 0, so every dot product is ≥ −ε·v (and v ≥ margin)
    assert (v >= margin - 1e-9).all()
    assert (G @ g_tilde + EPS * torch.from_numpy(v) >= -1e-8).all()
    assert (G @ g_tilde).min() >= -EPS * v.max() - 1e-8


def tiny_gem(head: str, t: int) -> GEM:
    stream = digits5()
    # heads of unequal width (the batched pass pads them)
    net = TaskNetwork(lambda input_shape: MLP(input_shape, hidden_sizes=[16]), stream.input_shape,
                      [2, 3, 2, 2, 2], head=head, n_shared_classes=10)
    approach = GEM(net, n_memories=12, memory_strength=0.0)
    approach.setup_stream(stream)
    approach.task_id = t
    approach.setup("fit")
    data = DeviceStream(stream, "cpu", shared_head=head == "shared")
    for u in range(t):
        s = data.source(u, "train")
        approach.memory.add(u, s.transform(s.x[:12 if u else 7]), s.y[:12 if u else 7])  # task 0 partly filled
    return approach


@pytest.mark.parametrize("head", ["multi", "shared"])
def test_gem_memory_gradients_equal_one_backward_per_task(head):
    approach = tiny_gem(head, t=3)
    G = approach.memory_gradients(3)
    for u in range(3):
        x, y = approach.memory.task(u)
        expected = approach.flat_gradient(F.cross_entropy(approach(x, u), y))
        torch.testing.assert_close(G[u], expected, rtol=1e-5, atol=1e-6)


class BatchNormTrunk(torch.nn.Sequential):
    def __init__(self, input_shape):
        super().__init__(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU())
        self.out_dim = 12


@pytest.mark.parametrize("update", [True, False])
def test_gem_memory_passes_leave_batchnorm_statistics_as_the_codes_passes(update):
    """update_bn_on_memory=true: after the batched memory pass, the running statistics are those of GEM's one pass
    per earlier task in train mode, task 0 first; false: untouched. The gradients are the same either way."""
    stream = digits5()
    net = TaskNetwork(BatchNormTrunk, stream.input_shape, [2, 2, 2, 2, 2])
    approach = GEM(net, n_memories=12, memory_strength=0.0, update_bn_on_memory=update)
    approach.setup_stream(stream)
    data = DeviceStream(stream, "cpu", shared_head=False)
    for u in range(3):
        s = data.source(u, "train")
        approach.memory.add(u, s.transform(s.x[:12]), s.y[:12])
    approach.train()
    expected = copy.deepcopy(net.trunk)
    if update:
        for u in range(3):
            expected(approach.memory.task(u)[0])
    before = copy.deepcopy(net.trunk)
    G = approach.memory_gradients(3)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(net.trunk.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    assert update != all(torch.equal(a, b) for a, b in zip(before.state_dict().values(),
                                                            net.trunk.state_dict().values()))
    net.trunk.load_state_dict(before.state_dict())
    assert torch.allclose(approach.memory_gradients(3), G, atol=1e-6)


def test_gem_leaves_an_agreeing_gradient_alone_and_projects_a_conflicting_one():
    approach = tiny_gem("multi", t=2)
    G = approach.memory_gradients(2)
    approach.set_gradient(G.sum(0))  # agrees with both memories
    approach.constrain(G)
    assert torch.equal(approach.flat_gradient(), G.sum(0))
    conflicting = -G[0] + 0.1 * G[1]
    approach.set_gradient(conflicting)
    approach.constrain(G)
    v = torch.from_numpy(gem_dual(G, conflicting, 0.0)).float()
    assert (G @ conflicting).min() < 0 and (G @ approach.flat_gradient() + EPS * v).min() >= -1e-6


# --- BCL -------------------------------------------------------------------------------------------------------------
def test_bcl_dual_never_trains_on_what_its_evaluation_memory_holds(monkeypatch, tmp_path):
    seen = []
    inner = BCLDual.inner_loss

    def recording(self, x, y, t):
        held = self.eval_memory.task(t)[0]
        seen.append(bool((x[:, None] == held[None]).flatten(2).all(-1).any()))
        return inner(self, x, y, t)

    monkeypatch.setattr(BCLDual, "inner_loss", recording)
    run_pipeline(["approach=bcl_dual", *ONLINE, "approach.n_val=0.2"], tmp_path)
    assert len(seen) > 100 and not any(seen)


def code_training_batches(incoming: list[torch.Tensor], n_val: int) -> list[torch.Tensor]:
    """BCL's `model/bcl_dual.py` observe, its memory part only: x[0] of every batch is held out; on a task's first
    batch it fills every one of the n_val evaluation slots, and afterwards the slot at the ring position is evicted
    into the training batch and takes the new sample."""
    slots, position, trained = None, 0, []
    for x in incoming:
        if slots is None:
            slots = [x[0]] * n_val
            trained.append(x[1:])
        else:
            trained.append(torch.cat([x[1:], slots[position][None]]))
            slots[position] = x[0]
        position = (position + 1) % n_val
    return trained


def test_bcl_dual_fill_with_first_sample_trains_what_the_code_trains(monkeypatch, tmp_path):
    """fill_with_first_sample=true: the training batches are the code's, batch for batch (the first sample of each
    task trained again by the first n_val − 1 evictions); false: no copies, every sample held out once."""
    calls = []
    observe, inner = BCLDual.observe, BCLDual.inner_loss
    monkeypatch.setattr(BCLDual, "observe", lambda self, x, y, t: calls.append(["in", t, x.clone()]) or
                        observe(self, x, y, t))
    monkeypatch.setattr(BCLDual, "inner_loss", lambda self, x, y, t: calls.append(["train", t, x.clone()]) or
                        inner(self, x, y, t))
    options = ["approach=bcl_dual", *ONLINE, "approach.n_meta=1", "approach.inner_steps=1", "approach.n_memories=20"]
    for fill in (True, False):
        calls.clear()
        run_pipeline([*options, f"approach.fill_with_first_sample={str(fill).lower()}"], tmp_path / str(fill))
        for t in range(3):
            incoming = [x for kind, u, x in calls if kind == "in" and u == t]
            trained = [x for kind, u, x in calls if kind == "train" and u == t]
            assert len(incoming) == len(trained) > 10
            if fill:
                expected = code_training_batches(incoming, n_val=4)
                assert all(torch.equal(a, b) for a, b in zip(trained, expected))
                first = incoming[0][0]
                assert sum(bool((x == first).flatten(1).all(1).any()) for x in trained[1:4]) == 3
            else:  # the ring starts empty: the first 4 batches train 9 samples, later ones 10
                assert [len(x) for x in trained[:6]] == [9, 9, 9, 9, 10, 10]


def test_bcl_single_with_beta_1_one_inner_step_and_no_distillation_is_er(tmp_path):
    er = run_pipeline(["approach=er", *ONLINE, "approach.replay_batch_size=10"], tmp_path / "er")
    bcl = run_pipeline(["approach=bcl_single", *ONLINE, "approach.replay_batch_size=10", "approach.beta=1.0",
                        "approach.inner_steps=1", "approach.memory_strength=0"], tmp_path / "bcl")
    assert bcl["acc_matrix"] == er["acc_matrix"]
    other = run_pipeline(["approach=bcl_single", *ONLINE, "approach.replay_batch_size=10", "approach.beta=0.5",
                          "approach.memory_strength=0"], tmp_path / "bcl_half")
    assert other["acc_matrix"] != er["acc_matrix"]


@pytest.mark.parametrize("approach", ["bcl_single", "ftml"])
def test_test_time_adaptation_leaves_the_stored_model_unchanged(approach, tmp_path):
    plain = run_pipeline([f"approach={approach}", *ONLINE], tmp_path / "plain")
    adapted = run_pipeline([f"approach={approach}", *ONLINE, "approach.adapt=true", "approach.adapt_lr=0.5"],
                           tmp_path / "adapt")
    # the same training (adaptation only changes evaluation): the checkpointed networks are identical
    ckpts = [torch.load(next((d / "checkpoints").glob("task_2.ckpt")), weights_only=False)["state_dict"]
             for d in (tmp_path / "plain", tmp_path / "adapt")]
    assert ckpts[0].keys() == ckpts[1].keys()
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
               for a, b in zip(ckpts[0].values(), ckpts[1].values()))
    assert adapted["acc_matrix"] != plain["acc_matrix"]


@pytest.mark.parametrize("overrides,says", [
    (["approach=er", "approach.n_memories=0"], "approach.n_memories=0"),
    (["approach=bcl_dual", "approach.n_val=1.0"], "approach.n_val=1.0"),
    (["approach=bcl_dual", "approach.n_memories=3", "approach.n_val=0.2"], "both need at least 1"),
    (["approach=gem", "trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val=null"),
    (["approach=er", "+trainer.precision=16-mixed"], "trainer.precision=32"),
    # an option of another approach, through the base classes' **kwargs: named in one line with the valid ones
    (["approach=er", "+approach.memory_strength=1"], "approach has no option 'memory_strength'; its options are: "
                                                     "n_memories"),
])
def test_impossible_memory_settings_stop_before_training(overrides, says, tmp_path):
    with pytest.raises(Exception) as err:
        run_pipeline([*overrides, "debug=default"], tmp_path)
    error = first_cl_error(err.value)
    assert isinstance(error, ConfigError) and says in str(error) and "\n" not in str(error)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("approach", ["er", "bcl_dual"])
def test_two_process_cpu_ddp_run(approach, tmp_path):
    """trainer=ddp on CPU (gloo): the ranks share the batches and average their gradients; every task end checks that
    the memories are the same on both ranks (a run whose memories differ stops with a TrainingError)."""
    from tests.conftest import run_cli

    proc = run_cli([f"approach={approach}", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                    "stream.tasks=[[0,1],[2,3],[4,5]]", "trainer.max_epochs=1", "approach.n_memories=20",
                    f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and results["metrics"]["la"] > 0.8
    assert results["approach_info"]["memory_samples"] > 0


# --- iCaRL -----------------------------------------------------------------------------------------------------------
def test_herding_picks_greedily_what_brings_the_mean_of_the_picked_closest_to_the_class_mean():
    features = F.normalize(torch.randn(30, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    order = herding(features, 8).tolist()
    target, picked = features.mean(0), []
    for k in range(1, 9):  # brute force: try every remaining row
        best = min((i for i in range(30) if i not in picked),
                   key=lambda i: float((target - features[picked + [i]].mean(0)).norm()))
        picked.append(best)
    assert order == picked and len(set(order)) == 8


def test_icarl_keeps_its_exemplar_budget_and_predicts_by_nearest_mean(tmp_path):
    results = run_pipeline(["approach=icarl", "model.head=shared", *ONLINE, "approach.n_memories=30"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "task_2.ckpt", weights_only=False)["state_dict"]
    filled = ckpt["memory._extra_state"]["filled"]
    assert filled[:6] == [5] * 6 and sum(filled) <= 30  # 30 exemplars over the 6 classes seen: 5 each
    assert results["approach_info"]["classes_with_exemplars"] == 6
    assert torch.allclose(ckpt["class_means"][:6].norm(dim=1), torch.ones(6))
    assert results["acc_matrix"][-1][0] > 0.5  # class-incremental: task 1 still recognized among 6 classes


@pytest.mark.parametrize("overrides", [["model.head=multi"], ["model.head=shared", "stream=pmnist",
                                                                   f"paths.data_dir={SHARED_DATA}"]])
def test_icarl_refuses_a_stream_that_is_not_class_incremental(overrides, tmp_path):
    with pytest.raises(Exception) as err:
        run_pipeline(["approach=icarl", *overrides, "debug=default"], tmp_path)
    error = first_cl_error(err.value)
    assert isinstance(error, ConfigError) and "class-incremental" in str(error) and "\n" not in str(error)
    assert not (tmp_path / "results.json").exists()


# --- GEM's independent ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("finetune", [True, False])
def test_independent_with_gem_sizing_trains_narrow_networks_and_finetune_starts_from_the_previous(finetune, tmp_path):
    run_pipeline(["approach=independent", "approach.width_divisor=4", f"approach.finetune={finetune}",
                  "model.trunk.hidden_sizes=[32,32]", "stream.tasks=[[0,1],[2,3]]", "trainer.max_epochs=1",
                  "approach.lr=1e-5"], tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "task_1.ckpt", weights_only=False)["state_dict"]
    assert state["trunks.0.1.weight"].shape == (8, 64) and state["heads.0.weight"].shape == (2, 8)
    # at this lr, task 2's network barely moves from where it started: task 1's network only with finetune
    same_start = torch.allclose(state["trunks.1.1.weight"], state["trunks.0.1.weight"], atol=1e-3)
    assert same_start == finetune


def test_multimodal_gives_each_task_its_own_input_layer_and_shares_the_rest(tmp_path):
    results = run_pipeline(["approach=multimodal", "stream.tasks=[[0,1],[2,3],[4,5]]", "trainer.max_epochs=3",
                            "model.trunk.hidden_sizes=[400,100]", "approach.lr=0.05"], tmp_path)
    first = torch.load(tmp_path / "checkpoints" / "task_0.ckpt", weights_only=False)["state_dict"]
    last = torch.load(tmp_path / "checkpoints" / "task_2.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(first["net.trunk.1.weight"], last["net.trunk.1.weight"])  # task 1's input layer: untouched
    assert not torch.equal(first["net.trunk.3.weight"], last["net.trunk.3.weight"])  # the shared layer trained on
    assert not torch.equal(first["extra_input_layers.1.weight"], last["extra_input_layers.1.weight"])
    assert min(results["acc_matrix"][t][t] for t in range(3)) > 0.9  # each task learned through its own layer
