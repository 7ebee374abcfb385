"""Every approach of the project side by side on real MNIST streams, over seeds; and the MAS demo over seeds.

    python bench/compare.py [--seeds 3] [--data-dir ../shared/data] [--out outputs/bench_compare] [--part ...]

Part `approaches`: every conf/approach/*.yaml but the online replay ones (bench/replay_results.py) with its own
defaults (λ, c, T, …) on one common training protocol (the shared optimizer defaults: SGD lr 0.01, batch 64, no
momentum; MLP 784-1200; fixed epochs):
  - mnist5: split MNIST, 5 tasks of 2 digits, one 2-way head per task (BLIP's protocol), 3 epochs per task;
  - pmnist (shortened): 5 permuted-MNIST tasks of 10,000 training images (10 % held out) and one shared 10-way head
    (the EWC and GEM papers' domain-incremental protocol), 2 epochs per task. Approaches that need a head per task
    (hat, lwf, independent) refuse it in one line, and the table says so.
Part `mas_demo`: experiment=mas_mnist_demo (Ω accumulation) and mas_mnist_demo_sequence, as the recipes say.

Each run goes through the real pipeline (a Lightning Trainer per task) and leaves its run dir under --out; the tables
are cl.outputs.report's over those run dirs: mean ± 95 % CI over the seeds of ACC, BWT, FWT, forgetting, LA, wall-clock
(`time_s.total`) and CL-state bytes after the last task (`memory.cl_state_bytes`).
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import publish  # noqa: E402
from cl.errors import ConfigError, TrainingError  # noqa: E402
from cl.run.skeleton import config_dict  # noqa: E402
from cl.run.supervised import run as run_config  # noqa: E402
from cl.outputs.report import collect, markdown_tables, summarize  # noqa: E402
from cl.outputs.results import read_results  # noqa: E402
from tests.conftest import SHARED_DATA, compose_config, config_options  # noqa: E402


def keeps_a_memory(approach: str) -> bool:
    """The replay approaches (an episodic memory: `n_memories`) run online protocols of their own
    (bench/replay_results.py, bench/der.py), not this one."""
    return "n_memories" in compose_config([f"approach={approach}"], ROOT / "outputs" / "unused").approach


APPROACHES = [a for a in config_options("approach") if not keeps_a_memory(a)]
STREAMS = {
    "mnist5": ["stream=mnist5", "trainer.max_epochs=3"],
    "pmnist (5 × 10k, shared head)": ["stream=pmnist", "stream.n_tasks=5", "stream.train_per_task=10000",
                                      "trainer.max_epochs=2", "model.head=shared"],
}
MAS_DEMO = {"accumulation (`experiment=mas_mnist_demo`)": ("mas_mnist_demo", 0.071),
            "sequence (`experiment=mas_mnist_demo_sequence`)": ("mas_mnist_demo_sequence", 0.083)}
COMMON = ["model=mlp", "model.head=multi", "callbacks=default", "logger=csv"]


def same_experiment(saved: dict, current: dict) -> bool:
    """The saved run's config is the current one; options added to the project after the run was saved count as
    their defaults, which keep the old behaviour."""
    return set(saved) <= set(current) and all(current[k] == v for k, v in saved.items())


def parse_mnist_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments of a benchmark that trains on real MNIST (`--data-dir`): it stops with one line when the folder
    holds none, and keeps Lightning's info lines out of its output."""
    args = parser.parse_args()
    if not (args.data_dir / "mnist").is_dir():
        parser.error(f"no MNIST under {args.data_dir}/mnist: pass --data-dir <folder holding mnist/>")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    return args


def run(overrides: list[str], run_dir: Path, data_dir: Path) -> dict:
    """The run's results; a complete run of the same config already in run_dir is reused (an interrupted bench goes
    on where it stopped; delete --out to measure everything again)."""
    cfg = compose_config([*overrides, f"paths.data_dir={data_dir}"], run_dir)
    previous = read_results(run_dir)
    if previous and previous.get("complete") and same_experiment(previous.get("config") or {}, config_dict(cfg)):
        return previous
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_config(cfg)


def approaches_part(seeds: int, data_dir: Path, out: Path) -> str:
    sections = []
    for stream, stream_overrides in STREAMS.items():
        stream_dir = out / "approaches" / stream.split()[0]
        notes = []
        for approach in APPROACHES:
            for seed in range(seeds):
                t0 = time.perf_counter()
                try:
                    results = run([*COMMON, *stream_overrides, f"approach={approach}", f"seed={seed}"],
                                  stream_dir / approach / f"seed{seed}", data_dir)
                except ConfigError as error:  # an impossible combination, refused before training
                    notes.append(f"- {approach}: refused: {str(error).split(';')[0]}")
                    break
                except TrainingError as error:  # e.g. the loss diverged at these defaults
                    notes.append(f"- {approach}: seed {seed} stopped: {str(error).split(';')[0]}")
                    break
                m = results["metrics"]
                print(f"[compare] {stream} {approach} seed {seed}: ACC {100 * m['acc']:.2f} %, BWT "
                      f"{100 * m['bwt']:+.2f} pp, {time.perf_counter() - t0:.1f} s", flush=True)
        table = markdown_tables(summarize(collect(stream_dir)), heading=None)
        sections.append(f"**{stream}** ({' '.join(stream_overrides)})\n\n" + "\n".join(table + notes))
    return "\n\n".join(sections)


def mas_demo_part(seeds: int, data_dir: Path, out: Path) -> str:
    sections = []
    published_rows = ["| regime | average forgetting pp (= −BWT) | published (demo) pp |", "|---|---|---|"]
    for regime, (experiment, published) in MAS_DEMO.items():
        for seed in range(seeds):
            results = run([f"experiment={experiment}", f"seed={seed}"], out / "mas_demo" / experiment / f"seed{seed}",
                          data_dir)
            print(f"[compare] {experiment} seed {seed}: ACC {100 * results['metrics']['acc']:.2f} %, forgetting "
                  f"{-100 * results['metrics']['bwt']:.3f} pp", flush=True)
        rows = summarize(collect(out / "mas_demo" / experiment))
        sections.append(f"**{regime}**\n\n" + "\n".join(markdown_tables(rows, heading=None)))
        # the demo's forgetting of a task: its accuracy right after training it minus after the last task, i.e. −BWT
        bwt, ci = rows[0]["bwt_mean"], rows[0]["bwt_ci95"]
        published_rows.append(f"| {regime} | {-bwt:.3f}" + ("" if ci is None else f" ± {ci:.3f}") +
                              f" | {published} |")
    return "\n\n".join(sections + ["\n".join(published_rows)])


PARTS = {"approaches": approaches_part, "mas_demo": mas_demo_part}
INTROS = {
    "approaches": (
        "### Every approach on split MNIST and a shortened permuted MNIST\n\n"
        "Each approach but the online replay ones (their protocols: `bench/replay_results.py`) with its own "
        "`conf/approach` defaults on one common protocol: MLP 784-1200, SGD lr 0.01, "
        "batch 64, fixed epochs per task (no patience schedule); split MNIST with a 2-way head per task (BLIP's "
        "protocol), permuted MNIST with one shared 10-way head (the EWC and GEM papers' protocol). Each table is "
        "`python -m cl.outputs.report`'s over the stream's run dirs: mean ± 95 % CI over {seeds} seeds; wall-clock = "
        "`time_s.total` of the run (CPU); CL state = `memory.cl_state_bytes` after the last task. Run dirs: "
        "`{out}/approaches/`.\n\n"
        "These are short runs (3 and 2 epochs per task), not the papers' protocols: the papers train each task to "
        "convergence with a validation-driven schedule (BLIP and HAT up to 200 epochs, lr 0.05 for HAT) and tune "
        "λ per method. Approaches that need long training or a larger lr are below their published figures here "
        "(HAT's masks anneal over many epochs; LwF spends its first epoch of each later task on the new head "
        "alone; BLIP's quantized weights move in coarse steps), and λ is not tuned to these streams. For BLIP on "
        "its own full protocol see `bench/blip_mnist5.py` above.\n\n"
        "Reading the tables: split MNIST with a head per task is easy at this length. Fine-tuning (`sgd`) itself "
        "loses little, so every approach lands within about half a point; the papers' fine-tuning baselines forget "
        "more because they train each task much longer. Permuted MNIST with one shared head separates the "
        "approaches. There `ewc` and `online_ewc` at their default λ = 5000 (HAT's grid value for multi-head "
        "streams) diverge in task 2: with the exact Fisher of a shared head, lr·λ·F of the stiffest weights is past "
        "what a plain SGD step stays stable at. Lower `approach.lamb` or `approach.lr` there; the papers tune λ "
        "per stream. `si` at its defaults (c 1, ξ 0.1) behaves as fine-tuning in runs this short: few steps at lr "
        "0.01 leave ω small, and its penalty stays near 1e-5 (`train/penalty` in the runs' CSV). The SI paper "
        "tunes c for networks trained with Adam. `hat`, `lwf` and `independent` need a head per task and refuse "
        "the shared head in one line."),
    "mas_demo": (
        "### MAS: the original code's MNIST demo\n\n"
        "`experiment=mas_mnist_demo` and `experiment=mas_mnist_demo_sequence` as the recipes give them, over "
        "{seeds} seeds. Average forgetting as the demo (`Test_sequential.py`) measures it: per task, the accuracy "
        "right after training it minus the accuracy after the last task, averaged over tasks 1-4 (= −BWT). The "
        "demo's published figure is one run; it also keeps, per task, the epoch with the best test accuracy, "
        "which these recipes do not (they keep the last epoch). Run dirs: `{out}/mas_demo/`."),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_compare")
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    args = parse_mnist_args(parser)
    for part, body in PARTS.items():
        if args.part in (part, "all"):
            markdown = body(args.seeds, args.data_dir.resolve(), args.out)
            intro = INTROS[part].format(seeds=args.seeds, out=args.out.relative_to(ROOT) if args.out.is_relative_to(
                ROOT) else args.out)
            publish(parser, args, f"compare_{part}", f"{intro}\n\n{markdown}")


if __name__ == "__main__":
    main()
