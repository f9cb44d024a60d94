"""Benchmark 1: data pipeline throughput, clips per second delivered to the model (model
excluded), audioml's cached pipeline against the plain librosa pipeline, cold and warm.

    python -m benchmarks.data_pipeline            # real donateacry when present, else tones

Arms (one process, same clips, batch size and worker count):
- plain: ``librosa.load`` (resampling) + librosa log-mel in ``Dataset.__getitem__``; its
  batches are log-mels on the device. "cold" is its first epoch, "warm" a later one (OS file
  cache warm; nothing else can be reused).
- audioml cold: empty cache folder: DataModule setup (decode, resample, fix length, write the
  memory-mapped cache) plus one epoch.
- audioml warm epoch: a later epoch over the cache (memory-mapped, no decoding). Its batches
  are waveforms on the device: the log-mel front end is part of the model (``model.frontend``)
  and runs inside its forward, so benchmark 2 measures it. The line "+ log-mel on device" also
  runs the front end here, to deliver what the plain pipeline delivers.
- audioml warm start: a new DataModule (manifest, fingerprint, cache hit) plus one epoch: what
  a new run or sweep job pays before its first batch.
Warm arms report the median of ``--repeats`` epochs. The target (>= 10x) is on warm epochs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    Measurement,
    add_data_arguments,
    audioml_logmel,
    cached_dataset,
    machine_description,
    make_datamodule,
    measure,
    pick_device,
    plain_dataset,
    print_memory,
    resolve_data,
    split_rows,
    synchronize,
    verdict,
)


def deliver(loader: DataLoader, device: torch.device, frontend: torch.nn.Module | None = None) -> int:
    """Iterate ``loader`` once, moving every batch to ``device`` (and through ``frontend``);
    returns the number of clips delivered."""
    clips = 0
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if frontend is not None:
            with torch.inference_mode():
                inputs = frontend(inputs)
        clips += inputs.shape[0]
    synchronize(device)
    return clips


def median_run(name: str, repeats: int, device: torch.device, body) -> Measurement:
    """Run ``body(measurement)`` ``repeats`` times; the measurement with the median time."""
    runs = []
    for _ in range(repeats):
        with measure(name, device) as result:
            result.items = body(result)
        runs.append(result)
    ordered = sorted(runs, key=lambda m: m.seconds)
    chosen = ordered[len(ordered) // 2]
    chosen.rss_peak = max(m.rss_peak for m in runs)
    chosen.anon_peak = max(m.anon_peak for m in runs)
    chosen.rss_delta = max(m.rss_delta for m in runs)
    chosen.anon_delta = max(m.anon_delta for m in runs)
    chosen.extra["all_seconds"] = [round(m.seconds, 2) for m in runs]
    return chosen


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--num-workers", default="auto",
                        help="DataLoader workers of both pipelines ('auto': audioml's default for the device)")
    parser.add_argument("--repeats", type=int, default=3, help="warm epochs per arm (median reported)")
    args = parser.parse_args(argv)
    temporary = tempfile.TemporaryDirectory(prefix="audioml-bench-") if args.work_dir is None else None
    args.work_dir = Path(temporary.name) if temporary else args.work_dir
    device = pick_device()
    cache_dir = args.work_dir / "cache"
    print(f"benchmark 1: data pipeline throughput, data={resolve_data(args)}, batch {args.batch_size}, "
          f"{args.sample_rate} Hz x {args.clip_seconds} s, device {device}")
    print(f"machine: {machine_description()}")

    from audioml.data.base import default_num_workers

    workers = default_num_workers(device.type) if args.num_workers in ("auto", None) else int(args.num_workers)
    results: list[Measurement] = []

    with measure("audioml cold (decode + cache + 1 epoch)", device) as cold:
        datamodule = make_datamodule(args, cache_dir, num_workers=workers)
        rows = split_rows(datamodule, "all", args.clips)
        cold.items = deliver(datamodule._loader(cached_dataset(datamodule, rows), shuffle=True), device)
    results.append(cold)
    plain = plain_dataset(datamodule, rows, args)
    plain_loader = DataLoader(plain, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                              pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    with measure("plain cold (first epoch)", device) as plain_cold:
        plain_cold.items = deliver(plain_loader, device)
    results.append(plain_cold)
    plain_warm = median_run("plain warm (later epoch)", args.repeats, device, lambda m: deliver(plain_loader, device))
    results.append(plain_warm)

    def warm_start(result: Measurement) -> int:
        warm_module = make_datamodule(args, cache_dir, num_workers=workers)  # as a new run would: cache hit
        result.extra["cache"] = warm_module.waveform_cache.status
        result.extra["decode_calls"] = warm_module.waveform_cache.decode_calls
        return deliver(warm_module._loader(cached_dataset(warm_module, rows), shuffle=True), device)

    ours_start = median_run("audioml warm start (new DataModule + 1 epoch)", args.repeats, device, warm_start)
    warm_module = make_datamodule(args, cache_dir, num_workers=workers)
    warm_loader = warm_module._loader(cached_dataset(warm_module, rows), shuffle=True)
    ours_warm = median_run("audioml warm epoch", args.repeats, device, lambda m: deliver(warm_loader, device))
    frontend = audioml_logmel(args.sample_rate).to(device)
    ours_frontend = median_run("audioml warm epoch + log-mel on device", args.repeats, device,
                               lambda m: deliver(warm_loader, device, frontend))
    results += [ours_warm, ours_start, ours_frontend]

    print(f"\nclips per second ({len(rows)} clips per epoch, {workers} workers)")
    for m in results:
        print(f"  {m.name:<44} {m.rate:10.1f} clips/s  ({m.seconds:.2f} s"
              + (f"; runs {m.extra['all_seconds']}" if "all_seconds" in m.extra else "") + ")")
    print(f"  warm start: waveform cache {ours_start.extra.get('cache')!r}, "
          f"decode calls {ours_start.extra.get('decode_calls')}")
    ratios = {"warm": ours_warm.rate / plain_warm.rate, "warm_start": ours_start.rate / plain_warm.rate,
              "warm_with_frontend": ours_frontend.rate / plain_warm.rate, "cold": cold.rate / plain_cold.rate}
    print("\nratios (audioml / plain)")
    print(f"  warm epoch, delivered to the model:        {verdict(ratios['warm'], 10)}")
    print(f"  warm start (new DataModule + 1 epoch):     {ratios['warm_start']:.1f}x")
    print(f"  warm epoch incl. log-mel on {device.type:<4}:         {ratios['warm_with_frontend']:.1f}x")
    print(f"  cold (first run builds the cache):         {ratios['cold']:.1f}x")
    print_memory(results)
    if temporary:
        temporary.cleanup()
    return ratios


if __name__ == "__main__":
    main()
