"""``audioml-eval source=...``: rebuild a model from its checkpoint and test it on a split of its
own data or on another dataset with the same classes (``audioml.run.use.inference.evaluate_checkpoint``);
writes ``metrics.json`` and the run's reports (confusion matrix, per-class table, predictions,
intervals) in its output folder and logs them as an MLflow evaluation run linked to the
training run. A run directory as the source means the checkpoint its test scored, so the numbers
reproduce its ``metrics.json``; which file the numbers come from is printed first and kept in
``evaluation.json`` (``audioml.run.use.inference.evaluated_checkpoint``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from audioml.config import CONFIG_PATH, model_source
from audioml.entry import hydra_task, run_hydra_app

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@hydra_task("audioml-eval")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from audioml.files import file_digest
    from audioml.run.record.store import Store
    from audioml.run.use.checkpoint import read_record
    from audioml.run.use.inference import display_path, evaluate_checkpoint, evaluated_checkpoint, log_evaluation

    source = model_source(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    uri = Store.of(cfg.tracking_uri, cfg.paths.mlflow_dir).uri
    checkpoint, what = evaluated_checkpoint(source, uri, out_dir / "model")
    if what.startswith("not "):
        log.warning("%s is %s", checkpoint, what)
    trusted = cfg.get("trusted_modules") or ()
    data_cfg = _dataset_config(cfg.dataset, read_record(checkpoint, trusted)[0]) if cfg.dataset else None
    metrics, files = evaluate_checkpoint(checkpoint, cfg.paths, cfg.trainer, cfg.split, cfg.get("data"), trusted,
                                         data_cfg=data_cfg, evaluation_cfg=cfg.get("evaluation"), out_dir=out_dir)
    # every output names the file its numbers come from: this report, stdout, the MLflow run's tags
    evaluated = {"checkpoint": display_path(checkpoint.resolve()), "what": what, "sha256": file_digest(checkpoint),
                 "source": display_path(source), "split": cfg.split, "dataset": cfg.dataset}
    (out_dir / "evaluation.json").write_text(json.dumps(evaluated, indent=2))
    files = [*files, out_dir / "evaluation.json"]
    width = max(map(len, metrics), default=0)
    print(f"checkpoint {evaluated['checkpoint']}\n  ({what})")
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())))
    log.info("evaluated %s on the %s split%s; reports in %s", checkpoint, cfg.split,
             f" of {cfg.dataset}" if cfg.dataset else "", out_dir)
    if cfg.log_to_mlflow:
        run_id = log_evaluation(uri, source, checkpoint, cfg.split, cfg.dataset, metrics, files)
        log.info("MLflow evaluation run %s in %s", run_id, uri)


def _dataset_config(name: str, record: dict) -> DictConfig:
    """The data config ``data/<name>.yaml`` as training would compose it, at the model's rate and
    clip length, resolved on this machine."""
    from hydra import compose

    decoder = record["decoder"]
    composed = compose("train", overrides=[f"data={name}", f"model.sample_rate={decoder['sample_rate']}"])
    data = composed.data
    for key in ("clip_seconds", "pad_mode", "trim_db"):
        if key in data:
            data[key] = decoder[key]
    return OmegaConf.create(OmegaConf.to_container(data, resolve=True))


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``)."""
    run_hydra_app("audioml-eval", _app)


if __name__ == "__main__":
    main()
