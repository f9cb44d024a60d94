"""``audioml-classical``: scikit-learn grids on handcrafted or deep features (Hydra app).

    audioml-classical data=emotify descriptors=mir grid=classification
    audioml-classical experiment=emotify/handcrafted data.allow_missing=true
    audioml-classical experiment=muse/feature_grid descriptors.source=outputs/runs/<crnn run>
    audioml-classical -m descriptors=mir,full          (one grid run per feature set)

The run layer is imported once Hydra has composed the job, so ``--help`` starts quickly.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH
from audioml.entry import hydra_task, run_hydra_app


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="classical")
@hydra_task("audioml-classical")
def _app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from audioml.classical.run import run_classical

    result = run_classical(cfg, Path(HydraConfig.get().runtime.output_dir))
    metric = cfg.get("optimized_metric")
    return result.metrics.get(metric) if metric else None


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``)."""
    run_hydra_app("audioml-classical", _app)


if __name__ == "__main__":
    main()
