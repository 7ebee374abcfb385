"""The GEM and BCL protocols on real MNIST, over seeds: GEM's permuted and rotated MNIST (20 tasks × 1000 samples,
batch 10, one epoch, MLP 784-100-100-10, shared head) with gem, single (sgd), ewc (GEM's estimator), independent and
multimodal;
BCL's settings on GEM's data amount (20 permuted-MNIST tasks of 1000 samples each: `experiment=bcl_dual_pmnist
stream.train_per_task=1000`, not the recipe's 60,000; MLP 784-128-128-128-10) with bcl_dual, er, agem and gem. The
recipe's own protocol is `bench/parity.py`'s.

    python bench/replay_results.py [--seeds 3] [--data-dir ../shared/data] [--out outputs/bench_replay]

Settings: each approach's from GEM's `run_experiments.sh` (permutations / rotations) where GEM ran it; BCL-Dual's
from BCL's `scripts/run.sh`. BCL gives no settings for its baselines: er, agem and gem run there with BCL-Dual's lr
(0.03) and memory (256 per task), A-GEM with a reference batch of 256, GEM with its margin 0.5. `independent` is GEM's
sizing (hidden width 100/20 per task, no fine-tuning from the previous task). A complete run of the same config in
--out is reused. Each protocol's table is cl.outputs.report's over its run dirs: mean ± 95 % CI over the seeds of
results.json's metrics (BWT and FWT as the GEM paper: ÷(T−1); FWT against the random-initialization row) and
`time_s.total`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare import parse_mnist_args, run  # noqa: E402
from bench.report import publish  # noqa: E402
from cl.outputs.report import collect, markdown_tables, summarize  # noqa: E402
from cl.errors import TrainingError  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

COMMON = ["logger=csv", "callbacks=default"]
# a network of hidden width 100/20 = 5 per task, each with its own 10-way head
GEM_INDEPENDENT = ["approach=independent", "approach.width_divisor=20", "model.head=multi"]
GEM_EWC = ["approach=ewc", "approach.fisher_estimator=gem_legacy", "approach.fisher_merge=none"]
PROTOCOLS = {
    "GEM permuted MNIST (20 tasks)": {
        "gem": ["experiment=gem_pmnist"],
        "single": ["experiment=gem_single_pmnist"],
        # GEM's ewc on permutations: lr 0.1, n_memories 10, memory_strength 3 (λ = 2·3: no ½ in its penalty)
        "ewc": ["experiment=gem_single_pmnist", *GEM_EWC, "approach.lr=0.1", "approach.fisher_samples=10",
                "approach.lamb=6"],
        "independent": ["experiment=gem_single_pmnist", *GEM_INDEPENDENT, "approach.lr=0.03"],
        "multimodal": ["experiment=gem_single_pmnist", "approach=multimodal", "approach.lr=0.1"],
    },
    "GEM rotated MNIST (20 tasks)": {
        "gem": ["experiment=gem_rotmnist"],
        "single": ["experiment=gem_single_rotmnist"],
        # GEM's ewc on rotations: lr 0.01, n_memories 1000, memory_strength 1000
        "ewc": ["experiment=gem_single_rotmnist", *GEM_EWC, "approach.lr=0.01", "approach.fisher_samples=1000",
                "approach.lamb=2000"],
        "independent": ["experiment=gem_single_rotmnist", *GEM_INDEPENDENT, "approach.lr=0.1"],
        "multimodal": ["experiment=gem_single_rotmnist", "approach=multimodal", "approach.lr=0.1"],
    },
    "BCL permuted MNIST, 1000 samples per task (20 tasks)": {
        "bcl_dual": ["experiment=bcl_dual_pmnist", "stream.train_per_task=1000"],
        # the same tasks as bcl_dual's (positions 4-23 of 23), pixels and MLP (GEM's single recipe: raw pixels,
        # Xavier-uniform)
        **{name: ["experiment=gem_single_pmnist", f"approach={name}", "stream.n_tasks=23", "stream.n_val_tasks=3",
                  "stream.part=cl", "model.trunk.hidden_sizes=[128,128,128]", "approach.lr=0.03",
                  "approach.n_memories=256"]
           for name in ("er", "agem", "gem")},
    },
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_replay")
    args = parse_mnist_args(parser)
    sections = []
    for protocol, approaches in PROTOCOLS.items():
        protocol_dir = args.out / protocol.split()[0].lower() / protocol.split()[1]
        stopped = []
        for name, overrides in approaches.items():
            for seed in range(args.seeds):
                try:
                    results = run([*overrides, *COMMON, f"seed={seed}"], protocol_dir / name / f"seed{seed}",
                                  args.data_dir.resolve())
                except TrainingError as error:  # e.g. the loss diverged at these settings
                    stopped.append(f"- {name}: seed {seed} stopped: {str(error).split(';')[0]}")
                    break
                print(f"[replay] {protocol} {name} seed {seed}: ACC {100 * results['metrics']['acc']:.2f} %, "
                      f"{results['time_s']['total']:.0f} s", flush=True)
        table = markdown_tables(summarize(collect(protocol_dir)), heading=None)
        sections.append(f"**{protocol}**\n\n" + "\n".join(table + stopped))
    publish(parser, args, "replay_results", f"""## The GEM and BCL protocols on real MNIST

{args.seeds} seeds (seed 0-{args.seeds - 1}); each table is `python -m cl.outputs.report`'s over the protocol's runs (mean ±
95 % CI over seeds; `single` runs as approach sgd). The settings of each row are in `bench/replay_results.py`;
wall-clock = `time_s.total` (CPU, evaluation of every test set after every task included).

""" + "\n\n".join(sections))


if __name__ == "__main__":
    main()
