"""Benchmark 3: a head sweep of 8 configurations on a frozen pretrained backbone
(efficientat_mn04, real weights) on the donateacry corpus, with the embedding cache against
recomputing the backbone in every job.

    python -m benchmarks.head_sweep               # needs the corpus and the mn04 weights

Each job is a full ``audioml-train`` run (``audioml.api``: DataModule, model, Trainer,
validation, test, reports; MLflow off to keep the tracking store out of the timing), run one
after the other in this process like Hydra's basic launcher does:
- cached: ``model.freeze=all`` (the embedding cache is on by default): the first job embeds
  every clip once, the other seven load the cache and train only the head;
- recompute: the same 8 jobs with ``++model.embedding_cache=false``: the frozen backbone runs
  on every batch of every epoch of every job (what the studies did);
- ``--per-job`` adds: the cache on, but a fresh embedding cache per job (embeddings computed
  once per job, not shared across the sweep).
Both arms share one waveform cache, built before timing starts, so the ratio isolates the
embeddings. The test metrics of the two arms are compared: a frozen EfficientAT has no active
dropout or batch statistics, so they must agree.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.common import Measurement, data_dir, machine_description, measure, pick_device, print_memory, verdict

REPO = Path(__file__).resolve().parents[1]
MLP = "{_target_:audioml.models.heads.MLPHead,_partial_:true,hidden:%s,dropout:%s}"
#: The sweep: (name, overrides). Heads and learning rates a head search would try.
CONFIGURATIONS = [
    ("linear lr=1e-3", ["model.head=null", "model.optimizer.lr=1e-3"]),
    ("linear lr=3e-4", ["model.head=null", "model.optimizer.lr=3e-4"]),
    ("linear dropout=0.3", ["model.head={_target_:audioml.models.heads.LinearHead,_partial_:true,dropout:0.3}"]),
    ("mlp 128", ["model.head=" + MLP % (128, 0.3)]),
    ("mlp 256", ["model.head=" + MLP % (256, 0.3)]),
    ("mlp 256 lr=3e-4", ["model.head=" + MLP % (256, 0.3), "model.optimizer.lr=3e-4"]),
    ("mlp 512 dropout=0.5", ["model.head=" + MLP % (512, 0.5)]),
    ("mlp [256,128]", ["model.head=" + MLP % ("[256,128]", 0.3)]),
]


def weights_dir() -> Path:
    return Path(os.environ.get("AUDIOML_WEIGHTS_DIR", REPO.parent / "shared" / "weights" / "efficientat-mn04"))


def job(overrides: list[str]) -> dict[str, float]:
    from audioml.api import compose_config, train

    metrics, _ = train(compose_config(overrides))
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="donateacry", help="data config (donateacry; synthetic for a dry run)")
    parser.add_argument("--model", default="efficientat_mn04")
    parser.add_argument("--epochs", type=int, default=2, help="trainer.max_epochs of every job")
    parser.add_argument("--jobs", type=int, default=len(CONFIGURATIONS), help="first N configurations")
    parser.add_argument("--per-job", action="store_true", help="also time a fresh embedding cache per job")
    parser.add_argument("--pretrained", default="true", help="model.pretrained (false: random weights, dry run)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = parser.parse_args(argv)
    temporary = tempfile.TemporaryDirectory(prefix="audioml-sweep-") if args.work_dir is None else None
    work = Path(temporary.name) if temporary else args.work_dir / time.strftime("%Y%m%d-%H%M%S")
    device = pick_device()
    import lightning  # noqa: F401 - sets its loggers' levels on import; quieten them afterwards

    for name, level in (("audioml", logging.WARNING), ("lightning", logging.ERROR), ("lightning.pytorch", logging.ERROR),
                        ("lightning.fabric", logging.ERROR)):
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"benchmark 3: head sweep, {args.jobs} configurations x {args.epochs} epochs, model={args.model} "
          f"(pretrained={args.pretrained}, freeze=all), data={args.data}, device {device}")
    print(f"machine: {machine_description()}")
    cache = work / "cache"
    common = [f"data={args.data}", f"model={args.model}", "model.freeze=all", f"++model.pretrained={args.pretrained}",
              f"paths.data_dir={data_dir()}", f"paths.weights_dir={weights_dir()}", "logger=none",
              f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false",
              "++trainer.enable_model_summary=false", *args.overrides]
    if args.data == "synthetic":
        common.remove(f"paths.data_dir={data_dir()}")
    configurations = CONFIGURATIONS[: args.jobs]

    def run_arm(name: str, extra: list[str], fresh_cache_per_job: bool = False) -> tuple[Measurement, list[dict]]:
        results = []
        with measure(name, device) as measurement:
            for index, (_, overrides) in enumerate(configurations):
                job_cache = cache
                if fresh_cache_per_job:  # same decoded waveforms, no embeddings from earlier jobs
                    job_cache = work / f"cache-job{index}"
                    job_cache.mkdir(parents=True, exist_ok=True)
                    for waveform_file in cache.glob("waveforms-*"):
                        os.symlink(waveform_file, job_cache / waveform_file.name)
                started = time.perf_counter()
                metrics = job([*common, *overrides, *extra, f"paths.output_dir={work / name.split()[0]}",
                               f"paths.cache_dir={job_cache}"])
                results.append({"seconds": time.perf_counter() - started, **metrics})
            measurement.items = len(configurations)
        return measurement, results

    # Decode the corpus once for every arm (not part of any arm's time).
    with measure("prepare: waveform cache", device) as prepare:
        from audioml.api import compose_config
        from audioml.run.compose import build_datamodule

        build_datamodule(compose_config([*common, f"paths.output_dir={work / 'prepare'}", f"paths.cache_dir={cache}"]))
    arms = [("cached (embedding cache shared by the sweep)", []),
            ("recompute (backbone in every job and epoch)", ["++model.embedding_cache=false"])]
    measurements, per_job = [prepare], {}
    for name, extra in arms:
        measurement, results = run_arm(name, extra)
        measurements.append(measurement)
        per_job[name] = results
    if args.per_job:
        measurement, results = run_arm("per-job (embeddings once per job, not shared)", [], fresh_cache_per_job=True)
        measurements.append(measurement)
        per_job[measurement.name] = results

    print(f"\nper job seconds (test macro-F1): prepare (decode once) {prepare.seconds:.1f} s")
    for index, (config_name, _) in enumerate(configurations):
        cells = [f"{per_job[name][index]['seconds']:7.1f} s ({per_job[name][index].get('test/macro_f1', float('nan')):.3f})"
                 for name in per_job]
        print(f"  {config_name:<22} " + " | ".join(cells))
    totals = {m.name: m.seconds for m in measurements[1:]}
    print("\ntotal seconds per arm")
    for name, seconds in totals.items():
        print(f"  {name:<50} {seconds:8.1f}")
    cached_name, recompute_name = arms[0][0], arms[1][0]
    ratios = {"sweep": totals[recompute_name] / totals[cached_name]}
    difference = max(abs(a.get("test/macro_f1", 0) - b.get("test/macro_f1", 0))
                     for a, b in zip(per_job[cached_name], per_job[recompute_name]))
    print(f"\nratio recompute / cached: {verdict(ratios['sweep'], 5)}")
    if args.per_job:
        ratios["per_job"] = totals[measurements[-1].name] / totals[cached_name]
        print(f"ratio per-job embeddings / shared cache: {ratios['per_job']:.1f}x")
    print(f"largest test macro-F1 difference between the cached and recompute arms: {difference:.4f}")
    print_memory(measurements)
    (work / "head_sweep.json").write_text(json.dumps({"ratios": ratios, "per_job": per_job}, indent=2, default=float))
    if temporary:
        temporary.cleanup()
    return ratios


if __name__ == "__main__":
    main()
