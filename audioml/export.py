"""``audioml-export``: a trained model as one ONNX or TorchScript file (``audioml.run.use.export``).

The file takes the waveform (mono float32 at the model's rate) and answers class probabilities
(a classifier) or values per window (a regressor), the front end included; batch and length are
dynamic where the model allows. Before the file is published its answers are compared with the
PyTorch model's (``tolerance``); its input contract (rate, clip length, classes, names, shapes,
the parity measured) is written to ``<output>.json``.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH, model_source
from audioml.entry import hydra_task, run_hydra_app

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
@hydra_task("audioml-export")
def _app(cfg: DictConfig) -> None:
    from audioml.run.record.store import Store
    from audioml.run.use.export import ExportError, ParityError, export_checkpoint

    source = model_source(cfg)
    registry = str(source).startswith(("runs:/", "models:/"))  # only these need the MLflow store
    try:
        result = export_checkpoint(
            source, cfg.format, cfg.output,
            trusted_modules=cfg.get("trusted_modules") or (), parity_files=list(cfg.parity_inputs or []),
            parity_clips=cfg.parity_clips, tolerance=cfg.tolerance, opset=cfg.opset, optimize=cfg.optimize,
            tracking_uri=Store.of(cfg.tracking_uri, cfg.paths.mlflow_dir).uri if registry else None,
            output_dir=f"{cfg.paths.output_dir}/export")
    except (ExportError, ParityError) as error:
        raise SystemExit(f"audioml-export: {error}") from None
    contract = result.contract
    print(f"{result.path}  ({contract['format']}; {contract['input_name']} {contract['input_shape']} float32 at "
          f"{contract['sample_rate']} Hz -> {contract['output_name']} {contract['output_shape']})\n"
          f"parity: max abs difference {result.max_abs_diff:.3g} (tolerance {contract['parity']['tolerance']:g}) "
          f"on {contract['parity']['inputs']} inputs; contract: {result.contract_path}")


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``)."""
    run_hydra_app("audioml-export", _app)


if __name__ == "__main__":
    main()
