"""DER and DER++ (Buzzega et al., NeurIPS 2020) beside ER and GEM on real permuted MNIST, over seeds, on two online
protocols (batch 10, one epoch, 256 memories per task, raw [0, 1] pixels, Xavier-uniform MLP, one shared head):

- GEM's (`experiment=gem_pmnist`): 20 tasks × 1,000 samples, MLP 784-100-100-10, lr 0.1 for every approach;
- BCL's (`experiment=bcl_dual_pmnist`'s stream and network): the 20 tasks at positions 4-23 of a 23-permutation draw,
  all 60,000 samples each, MLP 784-128-128-128-10, lr 0.03 (the recipe's). BCL-Dual's own knobs do not apply to
  these approaches, so each runs GEM's single recipe with that stream and network, as bench/replay_results.py does.

Each approach keeps its conf/approach settings otherwise (DER/DER++: reservoir memory, α = 1, β = 0.5, replay batch
10; ER: ring memory, replay batch 10; GEM: margin 0.5). The canonical run (every option at its default) takes hours on
a 2-core CPU: GEM on BCL's 60,000-sample tasks dominates.

    python bench/der.py [--seeds 3] [--data-dir ../shared/data] [--out outputs/bench_der]
    python bench/der.py --tasks 2 --seeds 1 --train-per-task 200      # a smoke run: printed, not published

Runs go through the real pipeline and keep their run dirs under --out (a smaller variant's under a folder of its
own, e.g. `tasks2-train200/`, so that it never replaces a canonical run); a complete run of the same config is
reused (bench/compare.py's `run`). Each protocol's table is cl.outputs.report's over this invocation's runs: mean ±
95 % CI over the seeds of ACC, BWT (÷(T−1), as the GEM paper), FWT, forgetting, LA and wall-clock (`time_s.total`).
Only the canonical run writes its section of docs/benchmarks.md (bench/report.py's `publish`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare import parse_mnist_args, run  # noqa: E402
from bench.report import publish  # noqa: E402
from cl.errors import TrainingError  # noqa: E402
from cl.outputs.report import markdown_tables, summarize  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

APPROACHES = ("der", "derpp", "er", "gem")
COMMON = ["logger=csv", "callbacks=default"]
# BCL's stream and network (experiment=bcl_dual_pmnist) under GEM's single recipe, whose approach block holds only
# the optimizer knobs: positions 4-23 of 23 permutations, all 60,000 samples, MLP 784-128-128-128-10, lr 0.03
BCL_VAL_TASKS = 3
BCL = ["experiment=gem_single_pmnist", f"stream.n_val_tasks={BCL_VAL_TASKS}", "stream.part=cl",
       "model.trunk.hidden_sizes=[128,128,128]", "approach.lr=0.03", "approach.n_memories=256"]


def protocols(tasks: int, train_per_task: int | None) -> dict[str, tuple[str, list[str]]]:
    """Protocol title → (folder, overrides before the approach's)."""
    gem_samples = train_per_task or 1000
    bcl_samples = "null" if train_per_task is None else train_per_task
    return {
        f"GEM permuted MNIST ({tasks} tasks × {gem_samples:,} samples)":
            ("gem_pmnist",
             ["experiment=gem_pmnist", f"stream.n_tasks={tasks}", f"stream.train_per_task={gem_samples}"]),
        f"BCL permuted MNIST ({tasks} tasks × {'60,000' if train_per_task is None else f'{train_per_task:,}'} "
        f"samples)":
            ("bcl_pmnist", [*BCL, f"stream.n_tasks={tasks + BCL_VAL_TASKS}", f"stream.train_per_task={bcl_samples}"]),
    }


def variant(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The folder of this invocation's runs under --out: '.' for the protocols' own sizes, else one named after the
    sizes that differ (a smaller run never replaces a canonical run dir)."""
    parts = [f"tasks{args.tasks}" if args.tasks != parser.get_default("tasks") else "",
             f"train{args.train_per_task}" if args.train_per_task != parser.get_default("train_per_task") else ""]
    return "-".join(p for p in parts if p) or "."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20, help="tasks per protocol (smaller: a smoke run)")
    parser.add_argument("--train-per-task", type=int, default=None,
                        help="training samples per task in both protocols (default: GEM's 1,000, BCL's 60,000)")
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    parser.add_argument("--protocols", nargs="+", choices=("gem_pmnist", "bcl_pmnist"),
                        default=["gem_pmnist", "bcl_pmnist"], help="each publishes its own section when canonical")
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_der")
    args = parse_mnist_args(parser)
    out = args.out / variant(parser, args)
    for protocol, (folder, overrides) in protocols(args.tasks, args.train_per_task).items():
        if folder not in args.protocols:
            continue
        runs, stopped = [], []
        for name in args.approaches:
            for seed in range(args.seeds):
                try:
                    results = run([*overrides, f"approach={name}", *COMMON, f"seed={seed}"],
                                  out / folder / name / f"seed{seed}", args.data_dir.resolve())
                except TrainingError as error:  # e.g. the loss diverged at these settings
                    stopped.append(f"- {name}: seed {seed} stopped: {str(error).split(';')[0]}")
                    break
                runs.append(results)
                m = results["metrics"]
                print(f"[der] {protocol} {name} seed {seed}: ACC {100 * m['acc']:.2f} %, BWT {100 * m['bwt']:+.2f} pp, "
                      f"{results['time_s']['total']:.0f} s", flush=True)
        table = markdown_tables(summarize(runs), heading=None)
        section = f"**{protocol}**: `{' '.join(overrides)} approach=<approach>`\n\n" + "\n".join(table + stopped)
        others = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "protocols"})
        publish(parser, others, f"der_{folder}", f"""## DER and DER++ beside ER and GEM: {protocol}

{args.seeds} seed{'s' if args.seeds > 1 else ''} (seed {', '.join(map(str, range(args.seeds)))}); each table is
`python -m cl.outputs.report`'s over the protocol's runs (mean ± 95 % CI over seeds; BWT ÷(T−1)). Online: batch
10, one epoch, 256 memories per task, one shared head; each approach otherwise at its conf/approach settings
(DER/DER++ reservoir memory, α = 1, β = 0.5; ER ring memory; GEM margin 0.5). The settings of each protocol are in
`bench/der.py`; wall-clock = `time_s.total` (evaluation of every test set after every task included).

""" + section)


if __name__ == "__main__":
    main()
