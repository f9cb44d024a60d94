"""Using a trained model: rebuild it from its self-describing checkpoint, test it on a split of
its data (``evaluate_checkpoint``) or score audio files (``predict_files``).

The checkpoint stores the run's config and the data facts; this machine's ``paths`` replace
the stored ones, so a checkpoint evaluates wherever the data lives.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from audioml.checkpointing import read_checkpoint_spec
from audioml.data.audio import AudioDecodeError, fix_length, load_audio
from audioml.run.compose import build_datamodule, build_model

log = logging.getLogger(__name__)

__all__ = ["load_run_config", "load_model", "evaluate_checkpoint", "collect_inputs", "predict_files"]


def load_run_config(spec: dict[str, Any], paths: DictConfig, data_overrides: DictConfig | None = None) -> DictConfig:
    """The stored run config with this machine's ``paths`` and optional ``data`` overrides."""
    stored = OmegaConf.create(spec["config"])
    with open_dict(stored):
        stored.paths = paths
        if data_overrides:
            stored.data = OmegaConf.merge(stored.data, data_overrides)
        if "pretrained" in stored.model:  # the checkpoint's weights replace any pretrained ones
            stored.model.pretrained = False
    return stored


def load_model(spec: dict[str, Any], state_dict: dict, run_cfg: DictConfig, data_kwargs: dict | None = None) -> L.LightningModule:
    """Rebuild the LightningModule described by ``spec`` and load ``state_dict`` (strict)."""
    model = build_model(run_cfg, spec["num_classes"], spec["class_names"], spec.get("class_counts"),
                        **(data_kwargs or {}))
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    return model


def evaluate_checkpoint(ckpt_path: str | Path, paths: DictConfig, trainer_cfg: DictConfig,
                        split: str = "test", data_overrides: DictConfig | None = None) -> dict[str, float]:
    """Test the checkpoint on ``split`` of the data it was trained with; returns the metrics
    under the names training used (``test/...``)."""
    spec, state_dict = read_checkpoint_spec(ckpt_path)
    run_cfg = load_run_config(spec, paths, data_overrides)
    L.seed_everything(run_cfg.seed, workers=True)
    datamodule = build_datamodule(run_cfg)
    if split not in ("test", "val", "train"):
        raise ValueError(f"split={split!r}: use test, val or train")
    if split != "test":  # evaluate another split through the test loop, so names stay stable
        datamodule.split_indices["test"] = datamodule.split_indices[split]
    model = load_model(spec, state_dict, run_cfg, datamodule.model_kwargs())
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


def predict_files(ckpt_path: str | Path, files: list[Path], paths_cfg: DictConfig, batch_size: int = 32,
                  device: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(predictions, skipped)``: one row per decodable file with the predicted class and a
    probability column per class; ``skipped`` lists files that could not be decoded, with why."""
    spec, state_dict = read_checkpoint_spec(ckpt_path)
    run_cfg = load_run_config(spec, paths_cfg)
    task = spec.get("task", "classification")
    if task != "classification":
        raise ValueError(f"{ckpt_path} is a {task} checkpoint; audioml-predict scores classifiers. "
                         "Use audioml-eval for sequence regressors.")
    sample_rate = int(run_cfg.model.sample_rate)
    clip_seconds = spec.get("clip_seconds") or run_cfg.data.get("clip_seconds")
    if not clip_seconds:
        raise ValueError(f"{ckpt_path} does not record the clip length the model was trained on")
    num_samples = int(round(float(clip_seconds) * sample_rate))
    data_kwargs = spec.get("data_kwargs") or {}
    model = load_model(spec, state_dict, run_cfg, data_kwargs)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model.to(device)
    class_names = spec["class_names"]

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
            audio = load_audio(path, sample_rate)
        except AudioDecodeError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        batch.append(fix_length(audio, num_samples, str(run_cfg.data.get("pad_mode", "start"))))
        batch_paths.append(path)
        if len(batch) == batch_size:
            flush()
    flush()
    return pd.DataFrame(rows), pd.DataFrame(skipped, columns=["path", "reason"])
