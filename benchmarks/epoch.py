"""Benchmark 2: one training epoch of the scratch CNN end to end, audioml (Lightning, cached
waveforms, log-mel on the device inside the model) against the plain loop the studies wrote
(librosa decode + log-mel in ``Dataset.__getitem__``, a hand-written PyTorch loop).

    python -m benchmarks.epoch                    # real donateacry when present, else tones

Same model (``conf/model/cnn.yaml``: ScratchCNN [32, 64], dense 128, linear head), same
initial weights, optimiser (Adam 1e-3), batch size, training clips and precision. Reported per
arm: epoch time, time inside forward/backward/optimiser step (summed per batch, device
synchronised), and the share outside it (data loading, transfer, loop overhead); target for
audioml warm: < 10 %. audioml's forward includes its log-mel front end (the model's first
layer); the plain arm computes log-mel in the data pipeline, outside. "cold" = empty cache
(audioml: decode + cache + epoch; plain: first epoch), "warm" = cache hit / a later epoch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.common import (
    Measurement,
    add_data_arguments,
    audioml_logmel,
    machine_description,
    make_datamodule,
    measure,
    pick_device,
    plain_dataset,
    print_memory,
    resolve_data,
    split_rows,
    synchronize,
)

CNN = dict(channels=[32, 64], convs_per_block=1, batch_norm=False, dense=128, dropout=0.3)


def backbone(num_classes: int, seed: int) -> nn.Module:
    from audioml.models.backbones.cnn import ScratchCNN

    torch.manual_seed(seed)
    model = ScratchCNN(**CNN)
    model.reset_classifier(num_classes)
    return model


class StepTimer(L.Callback):
    """Sums the time of each training batch (forward, backward, optimiser step) and of the
    epoch, with the device synchronised at each boundary."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_seconds = 0.0
        self.epoch_seconds = 0.0
        self.batches = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        synchronize(self.device)
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronize(self.device)
        self.step_seconds += time.perf_counter() - self._batch_start
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        synchronize(self.device)
        self.epoch_seconds = time.perf_counter() - self._epoch_start


def plain_epoch(loader: DataLoader, model: nn.Module, device: torch.device, autocast_dtype) -> tuple[float, float, int]:
    """The studies' loop; returns ``(epoch seconds, step seconds, clips)``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    step_seconds, clips = 0.0, 0
    synchronize(device)
    started = time.perf_counter()
    for spec, target in loader:
        spec, target = spec.to(device, non_blocking=True), target.to(device, non_blocking=True)
        synchronize(device)
        step_start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(model(spec), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        step_seconds += time.perf_counter() - step_start
        clips += spec.shape[0]
    synchronize(device)
    return time.perf_counter() - started, step_seconds, clips


def audioml_epoch(datamodule, num_classes: int, args: argparse.Namespace, device: torch.device) -> StepTimer:
    """One epoch through ``audioml.run.fit.trainer.make_trainer`` + ``AudioClassifier``; no validation,
    logging or checkpointing (the same work as the plain loop)."""
    from audioml.models.classifier import AudioClassifier
    from audioml.run.fit.trainer import make_trainer

    model = AudioClassifier(backbone(num_classes, args.seed), audioml_logmel(args.sample_rate), num_classes,
                            optimizer=partial(torch.optim.Adam, lr=1e-3))
    timer = StepTimer(device)
    trainer = make_trainer(precision=args.precision, max_epochs=1, accelerator=device.type, devices=1,
                           limit_val_batches=0, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                           callbacks=[timer])
    trainer.fit(model, datamodule=datamodule)
    return timer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    parser.add_argument("--num-workers", default="auto", help="DataLoader workers of both pipelines")
    parser.add_argument("--precision", default="auto", help="Lightning precision of both arms (auto: 32 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    temporary = tempfile.TemporaryDirectory(prefix="audioml-bench-") if args.work_dir is None else None
    args.work_dir = Path(temporary.name) if temporary else args.work_dir
    device = pick_device()
    from audioml.data.base import default_num_workers
    from audioml.run.fit.trainer import resolve_precision

    workers = default_num_workers(device.type) if args.num_workers in ("auto", None) else int(args.num_workers)
    cuda = device.type == "cuda"
    args.precision = resolve_precision(args.precision, device.type, cuda, cuda and torch.cuda.is_bf16_supported())
    autocast_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(args.precision))
    print(f"benchmark 2: one epoch of the scratch CNN, data={resolve_data(args)}, batch {args.batch_size}, "
          f"{args.sample_rate} Hz x {args.clip_seconds} s, device {device}, precision {args.precision}, "
          f"{workers} workers")
    print(f"machine: {machine_description()}")
    cache_dir = args.work_dir / "cache"
    results: list[Measurement] = []
    timers: dict[str, tuple[float, float, int]] = {}

    with measure("audioml cold (decode + cache + epoch)", device) as cold:
        datamodule = make_datamodule(args, cache_dir, num_workers=workers)
        if args.clips:
            datamodule.split_indices["train"] = split_rows(datamodule, "train", args.clips)
        timer = audioml_epoch(datamodule, datamodule.num_classes, args, device)
    timers[cold.name] = (timer.epoch_seconds, timer.step_seconds, len(datamodule.split_indices["train"]))
    results.append(cold)
    rows = datamodule.split_indices["train"]
    plain_loader = DataLoader(plain_dataset(datamodule, rows, args), batch_size=args.batch_size, shuffle=True,
                              num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    plain_model = backbone(datamodule.num_classes, args.seed).to(device)
    for name in ("plain cold (first epoch)", "plain warm (second epoch)"):
        with measure(name, device) as result:
            timers[name] = plain_epoch(plain_loader, plain_model, device, autocast_dtype)
        results.append(result)
    with measure("audioml warm (cache hit + epoch)", device) as warm:
        warm_module = make_datamodule(args, cache_dir, num_workers=workers)
        warm_module.split_indices["train"] = rows
        timer = audioml_epoch(warm_module, warm_module.num_classes, args, device)
    timers[warm.name] = (timer.epoch_seconds, timer.step_seconds, len(rows))
    results.append(warm)

    print(f"\none epoch over {len(rows)} training clips: epoch seconds | forward/backward/step seconds | "
          "share outside | wall seconds of the whole arm")
    for m in results:
        epoch, step, _ = timers[m.name]
        print(f"  {m.name:<40} {epoch:8.2f} | {step:8.2f} | {1 - step / epoch:6.1%} | {m.seconds:8.2f}")
    plain_warm, ours_warm = timers["plain warm (second epoch)"], timers["audioml warm (cache hit + epoch)"]
    ratios = {"warm_epoch": plain_warm[0] / ours_warm[0],
              "cold_wall": results[1].seconds / cold.seconds,
              "warm_share_outside": 1 - ours_warm[1] / ours_warm[0],
              "plain_share_outside": 1 - plain_warm[1] / plain_warm[0]}
    print("\nratios (plain time / audioml time)")
    print(f"  warm epoch:                                 {ratios['warm_epoch']:.2f}x")
    print(f"  cold (plain first epoch vs audioml decode + cache + epoch, wall): {ratios['cold_wall']:.2f}x")
    share = ratios["warm_share_outside"]
    print(f"  audioml warm, share outside forward/backward: {share:.1%} (target < 10 %: "
          f"{'met' if share < 0.10 else 'NOT met'}); plain: {ratios['plain_share_outside']:.1%}")
    print_memory(results)
    if temporary:
        temporary.cleanup()
    return ratios


if __name__ == "__main__":
    main()
