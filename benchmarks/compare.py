"""Time ``audioml-compare`` on a store of a few hundred runs: ``--experiment``, ``--sweep`` and
``--status``, each in a fresh process (what a user waits for), best of ``--repeat``.

    python -m benchmarks.compare [--runs 300] [--repeat 3] [--store DIR]

The store is a temporary SQLite store (``--store DIR`` keeps it and reuses it on the next call)
filled the way audioml fills it: sweeps of ``--jobs`` jobs under their parent runs, each job
with the params of a real composed config (``data=donateacry model=cnn``, about 130), the
tags of a real run (config choices, data fingerprint, paths), the final metrics of a real
classifier run (test scores with intervals, per-class values, baselines; about 80) and their
per-epoch histories (``--epochs``) plus system metrics; the last sweep has its record and run
directories on disk, so ``--status`` reads what a real sweep leaves.

Target: each command under 3 s for 300 runs on 2 shared cores.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0
CLASSES = ("belly_pain", "burping", "discomfort", "hungry", "tired")
EXPERIMENT = "donateacry"


def _real_params() -> dict[str, str]:
    """The flattened params of a composed ``data=donateacry model=cnn`` config, as a run logs them."""
    from omegaconf import OmegaConf

    from audioml.config import compose_config
    from audioml.run.record.tracking import flatten_params

    config = compose_config(["data=donateacry", "model=cnn", "paths.output_dir=/runs"])
    return flatten_params(OmegaConf.to_container(config, resolve=False))


def _final_metrics(rng: random.Random, epochs: int) -> dict[str, float]:
    score = rng.uniform(0.15, 0.6)
    metrics = {"model/parameters": 84_000.0, "epoch": float(epochs - 1), "lr-Adam": 1e-3, "val/best_macro_f1": score}
    for name in ("acc", "balanced_acc", "macro_f1", "ece", "brier", "nll"):
        value = rng.uniform(0.1, 0.9)
        metrics.update({f"test/{name}": value, f"test/{name}_ci_low": value - 0.1, f"test/{name}_ci_high": value + 0.1})
    for kind in ("f1", "precision", "recall"):
        for label in CLASSES:
            value = rng.uniform(0, 1)
            metrics.update({f"test/{kind}_{label}": value, f"test/{kind}_{label}_ci_low": max(0.0, value - 0.2),
                            f"test/{kind}_{label}_ci_high": min(1.0, value + 0.2)})
    metrics.update({"test/loss": rng.uniform(0.5, 2), "baseline/macro_f1": 0.18, "baseline/acc": 0.84,
                    "baseline/balanced_acc": 0.2, "baseline/majority_class": 3.0})
    return metrics


def build_store(folder: Path, runs: int, jobs_per_sweep: int, epochs: int) -> str:
    """Fill ``<folder>/mlflow/mlflow.db`` (and ``<folder>/runs``) as described in the module docs;
    returns the last sweep's key."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from audioml.run.record import status, tracking
    from audioml.run.record.sweep import find_or_create_sweep_run, sweep_key
    from audioml.run.rundir import RunDir

    uri = f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}"
    (folder / "mlflow").mkdir(parents=True, exist_ok=True)
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(uri, EXPERIMENT)
    base = _real_params()
    rng = random.Random(0)
    made, sweep_number, key = 0, 0, ""
    while made < runs:
        sweep_number += 1
        jobs = [[f"model.optimizer.lr={lr}", f"seed={seed}", f"loss={loss}"]
                for lr in (1e-4, 3e-4, 1e-3) for seed in (1, 2) for loss in ("ce", "weighted_ce")][:jobs_per_sweep]
        overrides = ["model.optimizer.lr=1e-4,3e-4,1e-3", "seed=1,2", "loss=ce,weighted_ce",
                     f"trainer.max_epochs={epochs + sweep_number}"]
        key = sweep_key(overrides, "train")
        parent = find_or_create_sweep_run(uri, experiment, key, overrides)
        record = status.record_dir(folder / "runs", key)
        status.write_plan(record, key, overrides, jobs, parent)
        for job in jobs[:runs - made]:
            values = dict(o.split("=", 1) for o in job)
            run_dir = folder / "runs" / f"donateacry-cnn-{key}-{made:04d}"
            params = {**base, "model.optimizer.lr": values["model.optimizer.lr"], "seed": values["seed"],
                      "data.seed": values["seed"], "evaluation.seed": values["seed"], "loss._target_": values["loss"],
                      "trainer.max_epochs": str(epochs + sweep_number), "paths.run_dir": str(run_dir)}
            tags = {"mlflow.parentRunId": parent, "audioml.sweep_key": key, "host": "laptop", "device": "cpu x1",
                    "git.commit": "43fa0bd2ecef17968ef039b63c1a044ad0535529", "git.dirty": "false",
                    **{f"audioml.choice.{group}": choice for group, choice in (
                        ("data", "donateacry"), ("model", "cnn"), ("loss", values["loss"]), ("features", "logmel"),
                        ("augmentation", "none"), ("trainer", "default"), ("evaluation", "holdout"),
                        ("callbacks", "default"), ("logger", "mlflow"), ("paths", "default"))},
                    "audioml.data": "donateacry", "audioml.model": "cnn", "data.fingerprint": "86837db63b3eee21",
                    "data.clips": "457", "audioml.overrides": str(job)}
            title = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())  # as run_title names it
            run = client.create_run(experiment, run_name=f"cnn {title}", tags=tags)
            run_id = run.info.run_id
            tracking.log_params(client, run_id, params)
            final = _final_metrics(rng, epochs)
            now = int(time.time() * 1000)
            points = [Metric(k, v, now, 0) for k, v in final.items()]
            for epoch in range(epochs):
                points += [Metric(f"{split}/{name}", rng.uniform(0, 1), now + epoch, epoch)
                           for split in ("train", "val") for name in ("loss", "acc", "balanced_acc", "macro_f1")]
            points += [Metric(f"system/{name}", rng.uniform(0, 100), now + sample, sample)
                       for sample in range(10) for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes",
                                                            "disk_usage_percentage", "network_receive_megabytes")]
            for start in range(0, len(points), 1000):
                client.log_batch(run_id, metrics=points[start:start + 1000])
            client.log_batch(run_id, tags=[RunTag("audioml.tested_checkpoint", "best.ckpt")],
                             params=[Param("model.backbone.note", "x")] if made % 50 == 0 else [])
            tracking.set_status(client, run_id, "FINISHED")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(f"trainer:\n  max_epochs: {epochs}\nmonitor: val/macro_f1\n"
                                                 "monitor_mode: max\n")
            RunDir(run_dir).write_run_id(run_id)
            RunDir(run_dir).record_store(uri)
            RunDir(run_dir).mark_done( {k: v for k, v in final.items() if k.startswith(("test/", "val/"))})
            status.write_job_start(record, job, run_dir, made)
            made += 1
        tracking.set_status(client, parent, "FINISHED")
    return key


def best_time(arguments: list[str], repeat: int, env: dict[str, str]) -> tuple[float, str]:
    """Fastest wall time (s) of ``python -m audioml.compare <arguments>`` over ``repeat`` fresh
    processes, and the output of the last."""
    times, output = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "audioml.compare", *arguments], capture_output=True, text=True,
                              env=env, cwd=REPO)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"audioml-compare {' '.join(arguments)} failed:\n{done.stderr[-3000:]}")
        output = done.stdout
    return min(times), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=12, help="jobs per sweep")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store", type=Path, help="keep the store in this folder (reused when it holds one)")
    parser.add_argument("--show", action="store_true", help="print each command's output once")
    parser.add_argument("--record", type=Path, help="also write the table as Markdown to this file (the docs include "
                                                    "docs/measurements/compare.txt)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = (args.store or Path(scratch)).resolve()
        key_file = folder / "last_sweep_key"
        if key_file.is_file():
            key = key_file.read_text().strip()
            print(f"reusing the store in {folder}")
        else:
            start = time.perf_counter()
            key = build_store(folder, args.runs, args.jobs, args.epochs)
            key_file.write_text(key)
            print(f"{args.runs} runs written in {time.perf_counter() - start:.0f} s to {folder}")
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "COLUMNS")}
        env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        commands = {f"--experiment {EXPERIMENT}": ["--experiment", EXPERIMENT],
                    "--sweep <key>": ["--sweep", key], "--status <key>": ["--status", key]}
        print(f"{'audioml-compare':<26} {'seconds':>8}  (target < {TARGET_SECONDS:.0f} s, best of {args.repeat})")
        rows = []
        for name, arguments in commands.items():
            seconds, output = best_time([*arguments, "--output-dir", str(folder)], args.repeat, env)
            print(f"{name:<26} {seconds:8.2f}  {'ok' if seconds < TARGET_SECONDS else 'SLOW'}")
            rows.append(f"| `audioml-compare {name}` | {seconds:.2f} | {'ok' if seconds < TARGET_SECONDS else 'SLOW'} |")
            if args.show:
                print(output)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(
            f"<!-- written by `python -m benchmarks.compare --record {args.record}`; do not edit -->\n"
            f"{args.runs} runs ({args.jobs} jobs a sweep, {args.epochs} epochs of history each), best of "
            f"{args.repeat}, {os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d')}:\n\n"
            f"| command | seconds | target < {TARGET_SECONDS:.0f} s |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
