"""``audioml-predict``: the answers of a trained model for recordings (``audioml.run.use.inference``).

Files, folders and globs in; every file decoded as the training data was (resampled to the
model's rate, downmixed, silence-trimmed when training trimmed); a classifier scores recordings
longer than its clip in sliding windows aggregated per file, a regressor gives a value per
window. Writes ``<output>`` (CSV, a row per file), ``<output stem>.json`` and, with
``per_window=true`` or for regressors, ``<output stem>.windows.csv``; files that cannot be
decoded are listed with the reason (``<output stem>.skipped.csv``) while the rest are scored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH, model_source
from audioml.entry import hydra_task, run_hydra_app

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
@hydra_task("audioml-predict")
def _app(cfg: DictConfig) -> None:
    from audioml.run.record.store import Store
    from audioml.run.use.inference import Predictor, collect_inputs

    source = model_source(cfg)
    files = collect_inputs(list(cfg.inputs), cfg.input_dir, list(cfg.extensions) if cfg.extensions else None)
    output = Path(cfg.output)
    predictor = Predictor.from_source(
        source, cfg.get("trusted_modules") or (), Store.of(cfg.tracking_uri, cfg.paths.mlflow_dir).uri,
        download_dir=output.parent / f".{output.stem}-model", device=cfg.device, hop_seconds=cfg.hop_seconds,
        aggregate=cfg.aggregate, sliding_windows=cfg.sliding_windows, batch_size=cfg.batch_size)
    predictions = predictor.predict_files(files, progress=cfg.progress)
    written = write_predictions(predictions, predictor, output, str(source),
                                per_window=cfg.per_window or predictor.task == "regression")
    print(summary(predictions, predictor))
    log.info("%d files scored, %d skipped; written: %s", len(predictions.files), len(predictions.skipped),
             ", ".join(map(str, written)))


def write_predictions(predictions, predictor, output: Path, source: str, per_window: bool) -> list[Path]:
    """The CSV per file, the JSON (files with their windows when ``per_window``), the window
    table and the skipped list; returns the paths written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = output.with_suffix("")
    written = [output, stem.with_suffix(".json")]
    predictions.files.to_csv(output, index=False)
    windows_by_file = {path: table.drop(columns="path").to_dict("records")
                       for path, table in predictions.windows.groupby("path", sort=False)} if per_window else {}
    document = {"model": source, "task": predictor.task, "sample_rate": predictor.sample_rate,
                "clip_seconds": predictor.decoder.clip_seconds, "classes": predictor.names,
                "aggregate": predictor.aggregate if predictor.task == "classification" else None,
                "files": [{**row, **({"windows_detail": windows_by_file.get(row["path"], [])} if per_window else {})}
                          for row in predictions.files.to_dict("records")],
                "skipped": predictions.skipped.to_dict("records")}
    written[1].write_text(json.dumps(_finite(document), indent=1, allow_nan=False))
    if per_window:
        written.append(Path(f"{stem}.windows.csv"))
        predictions.windows.to_csv(written[-1], index=False)
    for leftover in (Path(f"{stem}.windows.csv"), Path(f"{stem}.skipped.csv")):  # an earlier call's, not this one's
        if leftover not in written and leftover.is_file() and (leftover.name.endswith(".windows.csv") or
                                                               not len(predictions.skipped)):
            leftover.unlink()
            log.info("removed %s, left by an earlier prediction into %s", leftover, output)
    if len(predictions.skipped):
        written.append(Path(f"{stem}.skipped.csv"))
        predictions.skipped.to_csv(written[-1], index=False)
        log.warning("skipped %d of %d files that could not be scored (listed in %s): %s", len(predictions.skipped),
                    len(predictions.skipped) + len(predictions.files), written[-1],
                    "; ".join(predictions.skipped["reason"].head(3)))
    return written


def _finite(value):
    """NaN (a per_sequence regressor's windows between its answers) as JSON null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


def summary(predictions, predictor, rows: int = 30) -> str:
    """What a user reads on the terminal: the first ``rows`` answers and the counts."""
    files = predictions.files
    if files.empty:
        return f"no file could be scored ({len(predictions.skipped)} skipped)"
    if predictor.task == "classification":
        shown = files[["path", "predicted", "windows"]].assign(
            probability=files[[f"p_{n}" for n in predictor.names]].max(axis=1).round(3))
        counts = files["predicted"].value_counts().to_dict()
        tail = f"{len(files)} files: " + ", ".join(f"{name} {count}" for name, count in counts.items())
    else:
        shown = files[["path", "windows", *predictor.names]].round(3)
        tail = f"{len(files)} files, {int(files['windows'].sum())} windows of {predictor.decoder.clip_seconds} s"
    text = shown.head(rows).to_string(index=False)
    more = f"\n... {len(files) - rows} more in the CSV" if len(files) > rows else ""
    skipped = f"; {len(predictions.skipped)} skipped" if len(predictions.skipped) else ""
    return f"{text}{more}\n{tail}{skipped}"


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``)."""
    run_hydra_app("audioml-predict", _app)


if __name__ == "__main__":
    main()
