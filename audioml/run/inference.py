"""Using a trained model: rebuild it from its checkpoint (``audioml.run.checkpoint``: the
model record, checked before anything runs), test it on a split of its data
(``evaluate_checkpoint``) or score audio files (``predict_files``).

The data is found through this machine's ``paths``; files to score go through the decoder the
training data went through (``ClipDecoder`` settings in the checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from audioml.data.audio import AudioDecodeError
from audioml.data.decoder import ClipDecoder
from audioml.run.checkpoint import datamodule_from_record, model_from_record, read_record

log = logging.getLogger(__name__)

__all__ = ["evaluate_checkpoint", "collect_inputs", "predict_files"]


def evaluate_checkpoint(ckpt_path: str | Path, paths: DictConfig, trainer_cfg: DictConfig,
                        split: str = "test", data_overrides: DictConfig | None = None,
                        trusted_modules: Iterable[str] = ()) -> dict[str, float]:
    """Test the checkpoint on ``split`` of the data it was trained with; returns the metrics
    under the names training used (``test/...``)."""
    if split not in ("test", "val", "train"):
        raise ValueError(f"split={split!r}: use test, val or train")
    record, state_dict = read_record(ckpt_path, trusted_modules)
    L.seed_everything(record["seed"], workers=True)
    datamodule = datamodule_from_record(record, paths, data_overrides)
    if split != "test":  # evaluate another split through the test loop, so names stay stable
        datamodule.split_indices["test"] = datamodule.split_indices[split]
    model = model_from_record(record, state_dict)
    trainer = instantiate(trainer_cfg, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


def collect_inputs(inputs: list[str], input_dir: str | None, extensions: list[str]) -> list[Path]:
    """Explicit files plus every file under ``input_dir`` with one of ``extensions`` (sorted).

    Raises ``FileNotFoundError`` for a missing explicit file or folder, ``ValueError`` when
    nothing is given.
    """
    paths = [Path(p) for p in inputs]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"input files not found: {missing}")
    if input_dir:
        folder = Path(input_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"input_dir={folder} is not a folder")
        suffixes = {f".{e.lower().lstrip('.')}" for e in extensions}
        paths += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not paths:
        raise ValueError("nothing to predict: give inputs=[file,...] and/or input_dir=<folder>")
    return paths


def predict_files(ckpt_path: str | Path, files: list[Path], batch_size: int = 32, device: str = "auto",
                  trusted_modules: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(predictions, skipped)``: one row per decodable file with the predicted class and a
    probability column per class; ``skipped`` lists files that could not be decoded, with why.

    Every file goes through the checkpoint's decoder (rate, downmix, silence trimming, padding
    or cropping to the clip length), except that short files are padded rather than refused."""
    record, state_dict = read_record(ckpt_path, trusted_modules)
    if record["task"] != "classification":
        raise ValueError(f"{ckpt_path} is a {record['task']} checkpoint; audioml-predict scores classifiers. "
                         "Use audioml-eval for sequence regressors.")
    decoder = ClipDecoder.from_settings(record["decoder"]).with_options(min_seconds=0.0)
    model = model_from_record(record, state_dict)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model.to(device)
    class_names = record["class_names"]

    rows, skipped, batch, batch_paths = [], [], [], []

    def flush() -> None:
        if not batch:
            return
        with torch.no_grad():
            probabilities = model(torch.from_numpy(np.stack(batch)).to(device)).softmax(dim=1).cpu().numpy()
        for path, probs in zip(batch_paths, probabilities):
            rows.append({"path": str(path), "predicted": class_names[int(probs.argmax())],
                         **{f"p_{name}": float(p) for name, p in zip(class_names, probs)}})
        batch.clear()
        batch_paths.clear()

    for path in files:
        try:
            batch.append(decoder(path))
        except AudioDecodeError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        batch_paths.append(path)
        if len(batch) == batch_size:
            flush()
    flush()
    return pd.DataFrame(rows), pd.DataFrame(skipped, columns=["path", "reason"])
