"""Benchmark 5: a transformers audio encoder (``model=hf_encoder``) on real speech: one embedding
pass (the frozen encoder over every clip, every layer's mean cached: what a probing run pays
once) and one fine-tuning epoch (the top blocks trained, the convolutional feature encoder
frozen, layer-weighted head, AdamW with warm-up + cosine).

    python -m benchmarks.encoders                       # RAVDESS in $AUDIOML_DATA_DIR, wav2vec2-base size
    python -m benchmarks.encoders --size tiny --freeze none

The encoder is randomly initialised at the size of ``--size`` (``base``: wav2vec2-base, 12
blocks, 768 wide, 95M parameters; ``tiny``: 2 blocks, 32 wide): the speed does not depend on the
weights, and the hub is not needed. The data is RAVDESS as ``data=ravdess data.split=random``
composes it (all its clips for the pass, the training split for the epoch); without RAVDESS,
synthetic tones. Reported: seconds, clips per second, peak memory.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import lightning as L
import numpy as np
import torch

from benchmarks.common import machine_description, pick_device, synchronize
from benchmarks.epoch import StepTimer

TINY = ("+model.backbone.config={hidden_size:32,num_hidden_layers:2,num_attention_heads:2,intermediate_size:64,"
        "conv_dim:[16,16,16,16,16,16,16],num_conv_pos_embeddings:16,"
        "num_conv_pos_embedding_groups:2}")


def compose(data_dir: str | None, size: str, freeze: str, batch_size: int, output: str):
    from audioml.config import compose_config

    data = (["data=ravdess", "data.split=random", f"paths.data_dir={data_dir}"] if data_dir
            else ["data=synthetic", "data.clips_per_class=40", "data.seconds=4.0"])
    return compose_config([*data, "model=hf_encoder", "model.pretrained=false", "model.backbone.model_type=wav2vec2",
                           *([TINY] if size == "tiny" else []), f"model.freeze={freeze}", "scheduler=warmup_cosine",
                           "model.optimizer.lr=5e-5", f"data.batch_size={batch_size}", "data.num_workers=0",
                           f"paths.output_dir={output}", "logger=none"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("AUDIOML_DATA_DIR"),
                        help="folder holding ravdess/ (default: $AUDIOML_DATA_DIR; none: synthetic tones)")
    parser.add_argument("--size", choices=["base", "tiny"], default="base")
    parser.add_argument("--freeze", default="top:4", help="model.freeze of the fine-tuning epoch (top:<n>, none)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if args.data_dir and not os.path.isdir(os.path.join(args.data_dir, "ravdess")):
        args.data_dir = None
    device = pick_device()
    from audioml.models.embedding_cache import compute_embeddings
    from audioml.run.fit import compose as run_compose

    with tempfile.TemporaryDirectory() as output:
        cfg = compose(args.data_dir, args.size, args.freeze, args.batch_size, output)
        L.seed_everything(0)
        datamodule = run_compose.build_datamodule(cfg)
        model = run_compose.build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
        backbone = model.backbone
        parameters = sum(p.numel() for p in backbone.model.parameters())
        clips = datamodule.dataset("all")
        seconds = datamodule.decoder.clip_seconds
        print(f"{machine_description()}; torch threads {torch.get_num_threads()}")
        print(f"encoder: random {args.size} wav2vec2 ({backbone.num_blocks} blocks, width {backbone.num_features}, "
              f"{parameters / 1e6:.1f}M parameters); data: {'RAVDESS ' + args.data_dir if args.data_dir else 'tones'}, "
              f"{len(clips)} clips of {seconds:g} s at {datamodule.decoder.sample_rate} Hz")

        # 1. the embedding pass: every clip, every layer's mean (what a probing run caches once)
        out = np.zeros((len(clips), sum(backbone.layer_dims)), dtype=np.float32)
        synchronize(device)
        started = time.perf_counter()
        compute_embeddings(model.frontend, backbone, clips, out, "layers", args.batch_size, device)
        synchronize(device)
        elapsed = time.perf_counter() - started
        print(f"embedding pass: {elapsed:.1f} s for {len(clips)} clips ({len(clips) / elapsed:.1f} clips/s, "
              f"{len(clips) * seconds / elapsed:.0f} s of audio per s); cache row {out.shape[1]} floats")

        # 2. one fine-tuning epoch on the training split
        model.backbone.freeze(args.freeze)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        timer = StepTimer(device)
        trainer = L.Trainer(max_epochs=1, accelerator=device.type, devices=1, logger=False, callbacks=[timer],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            limit_val_batches=0, num_sanity_val_steps=0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(model, datamodule=datamodule)
        train_clips = len(datamodule.train_dataloader().dataset)
        memory = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
                  if device.type == "cuda" else "")
        print(f"fine-tuning epoch (freeze={args.freeze}, {trainable / 1e6:.1f}M trainable): {timer.epoch_seconds:.1f} s "
              f"for {train_clips} clips in {timer.batches} batches of {args.batch_size} "
              f"({train_clips / timer.epoch_seconds:.1f} clips/s; steps {timer.step_seconds:.1f} s){memory}")


if __name__ == "__main__":
    main()
