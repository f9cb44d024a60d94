"""``audioml-eval ckpt_path=...``: rebuild a model from a self-describing checkpoint and test it
(``audioml.run.inference.evaluate_checkpoint``); writes ``metrics.json`` in its output folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH, register_resolvers

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from audioml.run.inference import evaluate_checkpoint

    logging.getLogger("audioml").setLevel(logging.INFO)
    metrics = evaluate_checkpoint(cfg.ckpt_path, cfg.paths, cfg.trainer, cfg.split, cfg.get("data"),
                                  cfg.get("trusted_modules") or ())
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    width = max(map(len, metrics), default=0)
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())))
    log.info("metrics written to %s", out_dir / "metrics.json")


def main() -> None:
    """Console script: register the config resolvers, then hand the command line to Hydra."""
    register_resolvers()
    _app()


if __name__ == "__main__":
    main()
