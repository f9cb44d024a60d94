"""Benchmark: the same Optuna search with and without pruning.

    python -m benchmarks.hparams_pruning                          # generated tones, 3 seeds
    python -m benchmarks.hparams_pruning --data donateacry --trials 12 --epochs 6 --seeds 1

Each arm is ``audioml-train -m hparams_search=optuna`` as a user runs it (its own process, a new
output folder, the preset's search space: learning rate, dropout, loss; TPE seeded by ``seed``),
once with ``hydra/sweeper/pruner=none`` and once with the preset's pruner (median; ``--pruner``
picks another). Per arm and seed it reads the study back and prints: trials (pruned), epochs
trained in total (the epochs each trial reported), the best value found (``val/best_macro_f1``),
and the wall time of the command. Then, over the seeds, the mean and standard deviation of the
best values and the epochs saved: pruning should reach a best value within the unpruned search's
spread for clearly fewer epochs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import data_dir, machine_description

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Arm:
    pruner: str
    seed: int
    trials: int
    pruned: int
    epochs: int
    best: float
    wall: float


def run_arm(data: list[str], pruner: str, seed: int, trials: int, epochs: int, output: Path) -> Arm:
    """One search in its own ``audioml-train -m`` process; the study read back from its journal."""
    import optuna

    from audioml.search.storage import open_storage

    command = [sys.executable, "-m", "audioml.train", "-m", "hparams_search=optuna", *data, f"seed={seed}",
               f"trainer.max_epochs={epochs}", f"hydra.sweeper.n_trials={trials}", f"hydra/sweeper/pruner={pruner}",
               "trainer.enable_progress_bar=false", f"paths.output_dir={output}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-4000:]}")
    (journal,) = (output / "runs" / ".optuna").glob("*.journal")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=journal.stem, storage=open_storage(str(journal)))
    states = [t.state.name for t in study.trials]
    return Arm(pruner, seed, len(states), states.count("PRUNED"),
               sum(len(t.intermediate_values) for t in study.trials), study.best_value, wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["synthetic", "donateacry"], default="synthetic",
                        help="generated tones (data=synthetic, --clips per class), or the donateacry corpus under "
                             "AUDIOML_DATA_DIR (default ../shared/data)")
    parser.add_argument("--clips", type=int, default=40, help="synthetic: clips per class")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="searches per arm (seeds 1..N)")
    parser.add_argument("--pruner", default="median", help="median | successive_halving | hyperband")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.data == "synthetic":
        data = ["data=synthetic", f"data.clips_per_class={args.clips}", "model=cnn"]
    else:
        os.environ.setdefault("AUDIOML_DATA_DIR", str(data_dir()))
        data = ["data=donateacry", "model=cnn"]
    print(machine_description())
    print(f"search: {' '.join(data)}, {args.trials} trials of up to {args.epochs} epochs, hparams_search=optuna "
          f"(lr, dropout, loss; TPE), pruner none vs {args.pruner}, seeds 1..{args.seeds}\n")
    arms: list[Arm] = []
    print(f"{'pruner':<20} {'seed':>4} {'trials':>6} {'pruned':>6} {'epochs':>6} {'best val/macro_f1':>17} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(1, args.seeds + 1):
            for pruner in ("none", args.pruner):  # alternated, so that a change of load hits both
                arm = run_arm(data, pruner, seed, args.trials, args.epochs, Path(folder) / f"{pruner}-{seed}")
                arms.append(arm)
                print(f"{arm.pruner:<20} {arm.seed:>4} {arm.trials:>6} {arm.pruned:>6} {arm.epochs:>6} "
                      f"{arm.best:>17.4f} {arm.wall:>7.1f}", flush=True)
    print()
    for pruner in ("none", args.pruner):
        mine = [a for a in arms if a.pruner == pruner]
        best = [a.best for a in mine]
        spread = statistics.stdev(best) if len(best) > 1 else float("nan")
        print(f"{pruner:<20} best {statistics.mean(best):.4f} +- {spread:.4f} (sd over {len(best)} seeds), "
              f"epochs {statistics.mean(a.epochs for a in mine):.1f}, pruned {statistics.mean(a.pruned for a in mine):.1f} "
              f"of {args.trials}, wall {statistics.mean(a.wall for a in mine):.1f} s")
    unpruned = statistics.mean(a.epochs for a in arms if a.pruner == "none")
    pruned = statistics.mean(a.epochs for a in arms if a.pruner != "none")
    print(f"epochs trained with {args.pruner} pruning: {pruned / unpruned:.0%} of the unpruned search's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
