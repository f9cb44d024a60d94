"""Where audioml's Hydra configs live and how a run is named: the package's own config root
(``pkg://audioml.conf``, inside the wheel), users' config folders from ``AUDIOML_CONFIG_PATH``,
the ``run_key`` resolver, deprecated experiment names (``drop_deprecated_alias``), and
``compose_config`` for Python callers.

Import-light on purpose (OmegaConf and Hydra only): every entry point imports it before it
knows whether it will train or only print ``--help``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from audioml.files import fingerprint

__all__ = ["CONFIG_MODULE", "CONFIG_PATH", "CONFIG_DIR", "CONFIG_PATH_ENV", "DEPRECATED_ALIAS_KEY", "user_config_dirs",
           "run_key", "drop_deprecated_alias", "register_resolvers", "compose_config"]

#: The config root as a Python package: found in a wheel, an editable install or a checkout.
CONFIG_MODULE = "audioml.conf"
#: ``@hydra.main(config_path=CONFIG_PATH)`` of every entry point.
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
#: The same folder on disk (for tests and tools that list the YAMLs).
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
#: Users' config folders, ``os.pathsep``-separated, searched before the package's own: a
#: ``<dir>/data/mydata.yaml`` is ``data=mydata``, and a file named like a built-in one wins.
CONFIG_PATH_ENV = "AUDIOML_CONFIG_PATH"
#: Config subtrees that say where things go, not what is computed: excluded from the run key.
_LOCATION_KEYS = ("hydra", "paths", "logger")
#: Settings that change how a run shows or how fast it reads its data, not what it computes: also
#: outside the run key (a notebook that hides the progress bar finds the command line's run).
_PRESENTATION_KEYS = (("trainer", "enable_progress_bar"), ("data", "num_workers"))
#: Top-level key of an experiment kept under an earlier name (``conf/experiment/donateacry_vggish.yaml``:
#: its defaults are the new config, this key names it). Outside the run key, so that the old name
#: finds the new name's run directory; ``drop_deprecated_alias`` warns and removes it.
DEPRECATED_ALIAS_KEY = "deprecated_alias"

log = logging.getLogger(__name__)


def user_config_dirs(value: str | None = None) -> list[Path]:
    """The folders named by ``AUDIOML_CONFIG_PATH`` (or ``value``), in search order.

    Raises ``NotADirectoryError`` naming an entry that is not a folder, so that a typo does not
    silently fall back to the built-in configs.
    """
    value = os.environ.get(CONFIG_PATH_ENV, "") if value is None else value
    folders = []
    for entry in filter(None, (part.strip() for part in value.split(os.pathsep))):
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise NotADirectoryError(f"{CONFIG_PATH_ENV}: {entry} is not a folder (it should hold your own "
                                     "data/, model/, experiment/ ... YAML folders)")
        folders.append(folder)
    return folders


def model_source(cfg: DictConfig) -> str:
    """The trained model a use command names (``source=``, or ``ckpt_path=`` for a checkpoint
    file); ``UserError`` when neither or both are given."""
    from audioml.errors import UserError

    if (cfg.source is None) == (cfg.ckpt_path is None):
        raise UserError("give the model as source=<run dir | .ckpt | models:/m-<model id> | runs:/<run id>/model | "
                        "models:/<name>/<version> | models:/<name>@<alias>> (or ckpt_path=<.ckpt>), one of the two")
    return str(cfg.source if cfg.source is not None else cfg.ckpt_path)


def run_key(root: DictConfig) -> str:
    """Deterministic run name ``<data>-<model>-<hash>`` from the unresolved config, so that the
    same command finds the same run directory (and checkpoint) on any machine."""
    container = OmegaConf.to_container(root, resolve=False)
    for key in (*_LOCATION_KEYS, DEPRECATED_ALIAS_KEY):
        container.pop(key, None)
    for group, key in _PRESENTATION_KEYS:
        if isinstance(container.get(group), dict):
            container[group].pop(key, None)
    digest = fingerprint(container, length=10)
    choices = root.get("hydra", {}).get("runtime", {}).get("choices", {}) if "hydra" in root else {}
    data_name = choices.get("data") or "data"
    model_name = choices.get("model") or (f"classical_{choices['grid']}" if choices.get("grid") else "model")
    return f"{data_name}-{model_name}-{digest}".replace("/", "_")


def drop_deprecated_alias(cfg: DictConfig) -> str | None:
    """Warn once that an experiment was chosen by a deprecated name and remove the marker key.

    Returns the experiment to use instead (the marker's value), or ``None`` when ``cfg`` has no
    marker. Entry points call it on the composed job config before using it.
    """
    replacement = cfg.get(DEPRECATED_ALIAS_KEY) if isinstance(cfg, DictConfig) else None
    if replacement is None:
        return None
    chosen = _chosen_experiment() or "this name"
    log.warning("experiment=%s is deprecated: use experiment=%s", chosen, replacement)
    with open_dict(cfg):
        del cfg[DEPRECATED_ALIAS_KEY]
    return str(replacement)


def _chosen_experiment() -> str | None:
    """The ``experiment=`` choice of the running Hydra job, if any."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("experiment")
    return None if choice in (None, "None") else str(choice)


def pretrained_contract(weights: str, field: str):
    """``${pretrained:<weights>,<field>}``: a field of the weights' registry record
    (``audioml.models.pretrained``), e.g. ``sample_rate``; the record is the one place a
    pretrained model's input contract is written."""
    from audioml.models.pretrained import get_pretrained_cfg

    record = get_pretrained_cfg(str(weights))
    if field not in ("sample_rate", "num_classes"):
        raise ValueError(f"${{pretrained:{weights},{field}}}: use sample_rate or num_classes")
    return getattr(record, field)


def best_of(monitor: str) -> str:
    """``${best_of:val/loss}`` -> ``val/best_loss``: the name a run records the best value of
    its checkpoint monitor under (what a search optimises)."""
    group, _, name = str(monitor).rpartition("/")
    return f"{group}/best_{name}" if group else f"best_{name}"


def register_resolvers() -> None:
    """Register ``${run_key:}``, ``${pretrained:...}`` and ``${best_of:...}`` (idempotent); entry
    points call it before Hydra composes."""
    if not OmegaConf.has_resolver("best_of"):
        OmegaConf.register_new_resolver("best_of", best_of)
    if not OmegaConf.has_resolver("run_key"):
        OmegaConf.register_new_resolver("run_key", lambda *, _root_: run_key(_root_), use_cache=False)
    if not OmegaConf.has_resolver("pretrained"):
        OmegaConf.register_new_resolver("pretrained", pretrained_contract)


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose ``audioml/conf/<config_name>.yaml`` (with ``AUDIOML_CONFIG_PATH``'s folders) and
    command-line style ``overrides``.

    Sets up Hydra's runtime (choices, output directory) as the command line would, so
    ``${hydra:...}`` interpolations resolve; returns the job config (without the ``hydra`` node).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).expanduser())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    drop_deprecated_alias(cfg)
    return cfg
