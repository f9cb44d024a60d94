"""The experiment configs as the tests see them: every recipe (``<dataset>/<recipe>`` and
``quickstart``), the deprecated earlier names (files with a ``deprecated_alias`` marker) and the
study systems (a ``Study protocol:`` line in the header)."""

from __future__ import annotations

from pathlib import Path

import yaml

from audioml.config import CONFIG_DIR, DEPRECATED_ALIAS_KEY

EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"


def _name(path: Path) -> str:
    return str(path.relative_to(EXPERIMENT_DIR).with_suffix("")).replace("\\", "/")


def _alias_target(path: Path) -> str | None:
    return (yaml.safe_load(path.read_text()) or {}).get(DEPRECATED_ALIAS_KEY)


def deprecated_aliases() -> dict[str, str]:
    """Earlier name -> the name to use, for every alias file."""
    found = {_name(p): _alias_target(p) for p in sorted(EXPERIMENT_DIR.rglob("*.yaml"))}
    return {name: target for name, target in found.items() if target is not None}


def recipes() -> list[str]:
    """Every experiment that is not an alias."""
    return sorted(_name(p) for p in EXPERIMENT_DIR.rglob("*.yaml") if _alias_target(p) is None)


def is_classical(name: str) -> bool:
    """An ``audioml-classical`` experiment (it chooses a ``grid=``)."""
    return "override /grid" in (EXPERIMENT_DIR / f"{name}.yaml").read_text()


def study_experiments() -> list[str]:
    """The ``audioml-train`` recipes that reproduce a study's system."""
    return [name for name in recipes() if not is_classical(name)
            and "Study protocol:" in (EXPERIMENT_DIR / f"{name}.yaml").read_text()]
