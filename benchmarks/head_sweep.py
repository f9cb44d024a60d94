"""Benchmark 3: a head sweep of 8 configurations on a frozen pretrained backbone
(efficientat_mn04, real weights) on the donateacry corpus, against the physical limit.

    python -m benchmarks.head_sweep               # needs the corpus and the mn04 weights
    python -m benchmarks.head_sweep --recompute   # also the arm without the embedding cache (slow)
    python -m benchmarks.head_sweep --repeats 3   # both arms three times, alternately: the fastest of each

Each job is a full ``audioml-train`` run (``audioml.api``: DataModule, model, Trainer,
validation every epoch, test, reports, checkpoints, MLflow into an embedded store), run one
after the other in this process like Hydra's basic launcher does:
- audioml: ``model.freeze=all`` (the embedding cache is on by default): the first job embeds
  every clip once, the other seven load the cache and train only the head; as in
  ``audioml-train -m``, each job's MLflow record and ``DONE`` are completed by the report worker
  while the next job trains (``audioml.run.record.finishing``), and the arm ends when the last one is
  complete; each job's time is printed until it returned and until its ``DONE``;
- plain (the physical limit): one embedding pass over every clip with the same front end and
  backbone in a plain ``torch.inference_mode`` loop, then the same 8 heads, epochs, batch size,
  optimiser and loss in a plain PyTorch loop over the embeddings in memory (train, validation
  every epoch, best-epoch weights kept, test): nothing but the arithmetic;
- ``--recompute`` adds: the same 8 jobs with ``++model.embedding_cache=false`` (the frozen
  backbone on every batch of every epoch, what the studies did), at ``--recompute-epochs``;
- ``--per-job`` adds: the cache on, but a fresh embedding cache per job.
All arms share one waveform cache and the audioml arm's MLflow store exists, both made before
timing starts (once per dataset / output folder, not per sweep). With ``--repeats N`` the plain
and the audioml arm run N times, alternately (each audioml sweep in a new output folder with an
empty embedding cache), and the fastest of each arm is compared. Targets: a head job (the
jobs after the first) under 5 s until its ``DONE``; the sweep within 2x of the physical limit.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Measurement, data_dir, machine_description, measure, pick_device, print_memory, verdict

REPO = Path(__file__).resolve().parents[1]
#: Seconds between the memory samples of a timed phase: the sampling thread takes the GIL, and at
#: the common 10 ms it slowed the Python-heavy parts of a head job by a few tenths of a second.
SAMPLING = 0.2
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


def job(overrides: list[str]) -> tuple[dict[str, float], Path]:
    from audioml.api import compose_config, train

    return train(compose_config(overrides))


def _built(overrides: list[str]):
    """``(cfg, datamodule, model)`` of a job's config, as ``audioml-train`` builds them."""
    import lightning as L

    from audioml.api import compose_config
    from audioml.run.fit.compose import build_datamodule, build_model

    cfg = compose_config(overrides)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    return cfg, datamodule, build_model(cfg, datamodule.class_names, datamodule.train_class_counts())


def plain_embeddings(model, datamodule, device: torch.device, batch_size: int) -> np.ndarray:
    """The embedding pass of the physical limit: front end + backbone over every clip."""
    waveforms = datamodule.dataset("all").waveforms
    frontend, backbone = model.frontend.eval().to(device), model.backbone.eval().to(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(waveforms), batch_size):
            rows = np.arange(start, min(start + batch_size, len(waveforms)))
            batch = torch.from_numpy(np.asarray(waveforms.gather(rows), dtype=np.float32)).to(device)
            out.append(backbone.forward_head(backbone.forward_features(frontend(batch)), pre_logits=True).cpu())
    return torch.cat(out).numpy()


def plain_head_job(cfg, datamodule, model, embeddings: np.ndarray, device: torch.device) -> float:
    """The same head, optimiser, loss, epochs and batch size as the audioml job in a plain loop
    over the embeddings in memory: train, validate every epoch (keeping the best weights by
    validation macro-F1), test. Returns the test macro-F1."""
    from sklearn.metrics import f1_score

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        dataset = getattr(datamodule, f"{name}_dataloader")().dataset
        return (torch.from_numpy(embeddings[dataset.indices]).to(device),
                torch.as_tensor(dataset.targets[dataset.indices]).to(device))

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = split("train"), split("val"), split("test")
    head, loss_fn = model.backbone.head.to(device), model.loss_fn.to(device)
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    batch_size, generator = cfg.data.batch_size, torch.Generator().manual_seed(cfg.seed)

    def macro_f1(x: torch.Tensor, y: torch.Tensor) -> float:
        head.eval()
        with torch.inference_mode():
            predicted = head(x).argmax(1)
        head.train()
        return f1_score(y.cpu().numpy(), predicted.cpu().numpy(), average="macro", zero_division=0)

    best, best_state = -1.0, None
    from threadpoolctl import threadpool_limits

    threads, limits = torch.get_num_threads(), threadpool_limits(limits=1)
    torch.set_num_threads(1)  # as fast as such small products get on a CPU (audioml's head jobs do the same)
    for _ in range(cfg.trainer.max_epochs):
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(head(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
        if (score := macro_f1(x_val, y_val)) > best:
            best, best_state = score, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    score = macro_f1(x_test, y_test)
    limits.restore_original_limits()
    torch.set_num_threads(threads)
    return score


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="donateacry", help="data config (donateacry; synthetic for a dry run)")
    parser.add_argument("--model", default="efficientat_mn04")
    parser.add_argument("--epochs", type=int, default=40, help="trainer.max_epochs of every head job")
    parser.add_argument("--jobs", type=int, default=len(CONFIGURATIONS), help="first N configurations")
    parser.add_argument("--recompute", action="store_true", help="also time the jobs without the embedding cache")
    parser.add_argument("--recompute-epochs", type=int, default=2, help="epochs of the --recompute arm (and of the "
                        "audioml arm it is compared with)")
    parser.add_argument("--per-job", action="store_true", help="also time a fresh embedding cache per job")
    parser.add_argument("--repeats", type=int, default=1, help="run the plain and the audioml arm this many "
                        "times, alternately, and compare the fastest of each")
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
              f"paths.data_dir={data_dir()}", f"paths.weights_dir={weights_dir()}",
              "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *args.overrides]
    if args.data == "synthetic":
        common.remove(f"paths.data_dir={data_dir()}")
    configurations = CONFIGURATIONS[: args.jobs]

    def run_arm(name: str, extra: list[str], epochs: int, fresh_cache_per_job: bool = False,
                output: str | None = None, job_cache: Path | None = None) -> tuple[Measurement, list[dict]]:
        from audioml.run.record import finishing
        from audioml.run.rundir import RunDir

        results, run_dirs = [], []
        # as in `audioml-train -m`: each job's MLflow record completes while the next one trains
        with measure(name, device, interval=SAMPLING) as measurement, finishing.deferred():
            for index, (_, overrides) in enumerate(configurations):
                arm_cache = job_cache or cache
                if fresh_cache_per_job:  # same decoded waveforms, no embeddings from earlier jobs
                    arm_cache = work / f"cache-job{index}"
                    arm_cache.mkdir(parents=True, exist_ok=True)
                    for waveform_file in cache.glob("waveforms-*"):
                        os.symlink(waveform_file, arm_cache / waveform_file.name)
                started, started_wall = time.perf_counter(), time.time()
                metrics, run_dir = job([*common, *overrides, *extra, f"trainer.max_epochs={epochs}",
                                        f"paths.output_dir={work / (output or name.split()[0])}",
                                        f"paths.cache_dir={arm_cache}"])
                results.append({"seconds": time.perf_counter() - started, "started": started_wall, **metrics})
                run_dirs.append(run_dir)
            measurement.items = len(configurations)
        for result, run_dir in zip(results, run_dirs):  # until its record is complete (DONE written last)
            result["done_seconds"] = RunDir(run_dir).done_time() - result.pop("started")
        return measurement, results

    # Decode the corpus once for every arm (not part of any arm's time).
    with measure("prepare: waveform cache", device) as prepare:
        from audioml.api import compose_config
        from audioml.run.fit.compose import build_datamodule

        build_datamodule(compose_config([*common, f"paths.output_dir={work / 'prepare'}", f"paths.cache_dir={cache}"]))
        # The sweep's MLflow store (an output folder's store is created once, by its first run
        # ever: MLflow's schema migrations, seconds, not part of any sweep after that).
        from audioml.run.record import tracking

        for repeat in range(args.repeats):
            audioml_store = work / f"audioml{repeat}" / "mlflow"
            audioml_store.mkdir(parents=True)
            tracking.prepare_store(f"sqlite:///{audioml_store / 'mlflow.db'}")

    def physical_limit(repeat: int):
        """One embedding pass, then the heads in a plain loop."""
        plain_dir = [f"paths.output_dir={work / f'plain{repeat}'}", f"paths.cache_dir={cache}",
                     f"trainer.max_epochs={args.epochs}"]
        with measure("plain: embedding pass", device, interval=SAMPLING) as embedding_pass:
            cfg, datamodule, model = _built([*common, *plain_dir])
            embeddings = plain_embeddings(model, datamodule, device, cfg.data.batch_size)
        plain_jobs = []
        with measure("plain: heads", device, interval=SAMPLING) as plain_heads:  # same memory sampling as audioml's
            for _, overrides in configurations:
                cfg, datamodule, model = _built([*common, *overrides, *plain_dir])  # building is not timed
                started = time.perf_counter()
                score = plain_head_job(cfg, datamodule, model, embeddings, device)
                plain_jobs.append({"seconds": time.perf_counter() - started, "test/macro_f1": score})
        return embedding_pass, plain_heads, plain_jobs, embeddings

    # The arms alternate, --repeats times; each audioml sweep starts from an empty output folder
    # and embedding cache (the waveform cache is shared), so every one embeds the corpus again.
    # Compared: the fastest of each arm (on a shared machine a slow run says more about the
    # neighbours than about the code), every repeat printed.
    repeats = []
    for repeat in range(args.repeats):
        embedding_pass, plain_heads, plain_jobs, embeddings = physical_limit(repeat)
        arm_cache = cache if repeat == 0 else work / f"cache-repeat{repeat}"
        if repeat:
            arm_cache.mkdir(parents=True, exist_ok=True)
            for waveform_file in cache.glob("waveforms-*"):
                os.symlink(waveform_file, arm_cache / waveform_file.name)
        audioml_arm, audioml_jobs = run_arm("audioml (embedding cache shared by the sweep)", [], args.epochs,
                                            output=f"audioml{repeat}", job_cache=arm_cache)
        limit = embedding_pass.seconds + sum(j["seconds"] for j in plain_jobs)
        repeats.append((limit, embedding_pass, plain_heads, plain_jobs, audioml_arm, audioml_jobs))
        if args.repeats > 1:
            print(f"repeat {repeat + 1}: sweep {audioml_arm.seconds:.1f} s vs physical limit {limit:.1f} s "
                  f"(embedding pass {embedding_pass.seconds:.1f} s): {audioml_arm.seconds / limit:.2f}x")
    limit, embedding_pass, plain_heads, plain_jobs, _, _ = min(repeats, key=lambda r: r[0])
    _, _, _, _, audioml_arm, audioml_jobs = min(repeats, key=lambda r: r[4].seconds)
    measurements, per_job = [prepare, embedding_pass, plain_heads, audioml_arm], {audioml_arm.name: audioml_jobs}
    if args.recompute:
        for name, extra in (("cached at recompute epochs", []),
                            ("recompute (backbone in every job and epoch)", ["++model.embedding_cache=false"])):
            measurement, results = run_arm(name, extra, args.recompute_epochs)
            measurements.append(measurement)
            per_job[name] = results
    if args.per_job:
        measurement, results = run_arm("per-job (embeddings once per job, not shared)", [], args.epochs,
                                       fresh_cache_per_job=True)
        measurements.append(measurement)
        per_job[measurement.name] = results

    rows = len(embeddings)
    print(f"\nper job, {args.epochs} epochs (seconds, test macro-F1); {rows} cached rows; "
          f"prepare (decode once) {prepare.seconds:.1f} s, plain embedding pass {embedding_pass.seconds:.1f} s")
    print("  (audioml arms: seconds until the job returned / until its DONE marker, written once its MLflow record "
          "is complete, in the background while the next job trains)")
    print(f"  {'configuration':<22} {'plain head loop':>18} | " + " | ".join(per_job))
    for index, (config_name, _) in enumerate(configurations):
        cells = [f"{per_job[name][index]['seconds']:5.1f} / {per_job[name][index]['done_seconds']:5.1f} s "
                 f"({per_job[name][index].get('test/macro_f1', float('nan')):.3f})" for name in per_job]
        plain = plain_jobs[index]
        print(f"  {config_name:<22} {plain['seconds']:7.2f} s ({plain['test/macro_f1']:.3f}) | " + " | ".join(cells))
    head_jobs = [j["done_seconds"] for j in audioml_jobs[1:]] or [audioml_jobs[0]["done_seconds"]]
    returned = [j["seconds"] for j in audioml_jobs[1:]] or [audioml_jobs[0]["seconds"]]
    plain_head = statistics.median(j["seconds"] for j in plain_jobs)
    ratios = {"sweep_vs_limit": audioml_arm.seconds / limit, "head_job_seconds": statistics.median(head_jobs),
              "head_job_vs_plain": statistics.median(head_jobs) / plain_head}
    ratios["head_job_returned_seconds"] = statistics.median(returned)
    print(f"\nhead job (jobs 2-{len(audioml_jobs)}: embeddings from the cache), until DONE: median "
          f"{ratios['head_job_seconds']:.1f} s, max {max(head_jobs):.1f} s (target < 5 s: "
          f"{'met' if max(head_jobs) < 5 else 'NOT met'}); the plain head loop {plain_head:.2f} s: "
          f"{ratios['head_job_vs_plain']:.1f}x; until it returned (the next job starts): median "
          f"{ratios['head_job_returned_seconds']:.1f} s")
    print(f"sweep {audioml_arm.seconds:.1f} s vs physical limit {limit:.1f} s (embedding pass {embedding_pass.seconds:.1f} s "
          f"+ plain heads {limit - embedding_pass.seconds:.1f} s): {ratios['sweep_vs_limit']:.2f}x "
          f"(target <= 2x: {'met' if ratios['sweep_vs_limit'] <= 2 else 'NOT met'})")
    if args.recompute:
        cached, recompute = (sum(j["seconds"] for j in per_job[n]) for n in list(per_job)[1:3])
        ratios["recompute_vs_cached"] = recompute / cached
        difference = max(abs(a.get("test/macro_f1", 0) - b.get("test/macro_f1", 0))
                         for a, b in zip(*(per_job[n] for n in list(per_job)[1:3])))
        print(f"ratio recompute / cached at {args.recompute_epochs} epochs: {verdict(ratios['recompute_vs_cached'], 5)}; "
              f"largest test macro-F1 difference between them: {difference:.4f}")
    if args.per_job:
        ratios["per_job"] = measurements[-1].seconds / audioml_arm.seconds
        print(f"ratio per-job embeddings / shared cache: {ratios['per_job']:.1f}x")
    print_memory(measurements)
    (work / "head_sweep.json").write_text(json.dumps({"ratios": ratios, "per_job": per_job, "plain": plain_jobs},
                                                     indent=2, default=float))
    if temporary:
        temporary.cleanup()
    return ratios


if __name__ == "__main__":
    main()
