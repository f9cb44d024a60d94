"""``audioml-predict``: class probabilities for audio files from a trained checkpoint
(``audioml.run.inference.predict_files``).

Each file goes through the decoder the training data went through (resampled to the model's
rate, downmixed, silence-trimmed when training trimmed, padded/cropped to the clip length); files that cannot be decoded are reported and
skipped (listed in the log and in ``<output>.skipped.csv``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH, register_resolvers

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def _app(cfg: DictConfig) -> None:
    from audioml.run.inference import collect_inputs, predict_files

    logging.getLogger("audioml").setLevel(logging.INFO)
    files = collect_inputs(list(cfg.inputs), cfg.input_dir, list(cfg.extensions))
    predictions, skipped = predict_files(cfg.ckpt_path, files, cfg.batch_size, cfg.device,
                                        cfg.get("trusted_modules") or ())
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(output, index=False)
    if len(skipped):
        skipped_path = output.with_suffix(".skipped.csv")
        skipped.to_csv(skipped_path, index=False)
        log.warning("skipped %d of %d files that could not be decoded (listed in %s)", len(skipped),
                    len(files), skipped_path)
    print(predictions[["path", "predicted"]].to_string(index=False))
    log.info("%d predictions written to %s", len(predictions), output)


def main() -> None:
    """Console script: register the config resolvers, then hand the command line to Hydra."""
    register_resolvers()
    _app()


if __name__ == "__main__":
    main()
