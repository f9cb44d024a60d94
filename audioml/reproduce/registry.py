"""The reproduction registry: one entry per study system (``audioml/conf/reproduce.yaml``, format
in its header), read into frozen records, and the checks that decide whether a job can run on
this machine (data present, weights present, enough groups for a grouped split).

The checks look at files only; they import nothing heavy except, for the weights, the
pretrained registry (``audioml.models.pretrained``: the one place a weights file is named).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

__all__ = ["REGISTRY_FILE", "Runner", "Dataset", "Protocol", "Reported", "Entry", "Registry", "Locations",
           "load_registry", "missing_data", "missing_weights", "too_few_groups", "count_groups"]

#: The registry shipped in the package (with the other configs, so a wheel has it).
REGISTRY_FILE = Path(__file__).resolve().parents[1] / "conf" / "reproduce.yaml"
#: The two protocols every entry has, in report order.
PROTOCOL_KEYS = ("study_protocol", "grouped_protocol")
#: The modules a registry's runner may name: audioml's own Hydra entry points. A registry is data:
#: it chooses experiments and overrides, never a program (``python -m pdb -c ...`` ran a shell).
RUNNER_MODULES = ("audioml.train", "audioml.classical.cli")
#: A Hydra override as a registry may give it: ``key=value`` (``+``/``++``/``~`` allowed), the key
#: a dotted config path or a config group (``model``, ``data/augmentation``).
_OVERRIDE = re.compile(r"(\+\+|\+|~)?[A-Za-z_][A-Za-z0-9_]*([./][A-Za-z_][A-Za-z0-9_]*)*(=.*)?", re.DOTALL)


@dataclass(frozen=True)
class Runner:
    """An entry point run as ``python -m <module>``: ``always`` overrides every job, ``quick``
    those of ``--quick``."""

    name: str
    module: str
    always: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dataset:
    """A dataset's folder under ``paths.data_dir``, the globs that must match in it, the glob
    whose matches are its groups (``None``: not counted; ``groups_by``: distinct ``name`` or
    ``path`` of the matches), and how to obtain it."""

    name: str
    folder: str
    needs: tuple[str, ...]
    get: str
    groups_glob: str | None = None
    groups_what: str = "groups"
    groups_by: str = "path"


@dataclass(frozen=True)
class Protocol:
    """One split protocol of an entry: its overrides and description; ``min_groups`` groups
    must be present to run it; ``same_as`` names the other protocol when both are the same (run
    once); ``not_run`` says why it does not apply."""

    key: str
    text: str
    overrides: tuple[str, ...] = ()
    min_groups: int | None = None
    same_as: str | None = None
    not_run: str | None = None


@dataclass(frozen=True)
class Reported:
    """What the study reported: ``metric`` (a key of metrics.json), ``value`` (a fraction;
    ``None`` when there is no number) and the study's own words."""

    metric: str
    value: float | None
    text: str

    @property
    def baseline_key(self) -> str:
        """``test/acc`` -> ``baseline/acc``: the majority (or mean) baseline of the metric."""
        return "baseline/" + self.metric.split("/", 1)[-1]


@dataclass(frozen=True)
class Entry:
    """One study system: the experiment, its runner, data and weights, both protocols, the
    reported number, the ``--quick`` overrides and the entry whose grouped run provides its
    features (``features_from``)."""

    study: str
    system: str
    experiment: str
    runner: Runner
    dataset: Dataset
    weights: tuple[str, ...]
    study_protocol: Protocol
    grouped_protocol: Protocol
    reported: Reported
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    features_from: str | None = None

    @property
    def protocols(self) -> tuple[Protocol, Protocol]:
        return self.study_protocol, self.grouped_protocol


@dataclass(frozen=True)
class Registry:
    """The entries in registry order (an entry named by ``features_from`` comes first)."""

    entries: tuple[Entry, ...]
    source: Path

    def entry(self, experiment: str) -> Entry:
        for entry in self.entries:
            if entry.experiment == experiment:
                return entry
        raise KeyError(f"no registry entry for experiment {experiment!r} in {self.source}")

    def select(self, names: Sequence[str]) -> list[Entry]:
        """The entries named by ``names``: ``all``, dataset names (``ravdess``) or experiment
        names (``ravdess/gender_cnn``), in registry order.

        Raises ``ValueError`` listing the choices for a name that matches nothing.
        """
        wanted: set[str] = set()
        for name in names:
            matches = [e.experiment for e in self.entries
                       if name in ("all", e.dataset.name, e.experiment)]
            if not matches:
                raise ValueError(f"{name!r} is neither 'all', a dataset ({', '.join(self.datasets)}) nor an "
                                 f"experiment of {self.source} ({', '.join(e.experiment for e in self.entries)})")
            wanted.update(matches)
        return [e for e in self.entries if e.experiment in wanted]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(e.dataset.name for e in self.entries))


def _strings(values: Iterable | None) -> tuple[str, ...]:
    return tuple(str(v) for v in (values or ()))


def _overrides(values: Iterable | None, where: str) -> tuple[str, ...]:
    """``values`` as Hydra overrides, each checked: not an interpreter or Hydra option (``-c``,
    ``--config-dir``), no ``hydra.`` key or ``hydra/`` group (callbacks, launchers, search path),
    no ``_target_``-like key (a registry names configs, not code)."""
    overrides = _strings(values)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if (override.startswith("-") or not _OVERRIDE.fullmatch(override) or key.split(".")[0].split("/")[0] == "hydra"
                or any(part.startswith("_") for part in re.split(r"[./]", key))):
            raise ValueError(f"{where}: {override!r} is not an override a registry may give (key=value on the "
                             "run's config; no command-line options, hydra settings or _target_ keys)")
    return overrides


def _protocol(key: str, node: Mapping, where: str) -> Protocol:
    if node is None or "text" not in node:
        raise ValueError(f"{where}: {key} needs at least a text")
    same_as = node.get("same_as")
    if same_as is not None and (same_as not in PROTOCOL_KEYS or same_as == key):
        raise ValueError(f"{where}: {key}.same_as={same_as!r}: name the other protocol ({', '.join(PROTOCOL_KEYS)})")
    return Protocol(key=key, text=str(node["text"]), overrides=_overrides(node.get("overrides"), f"{where} {key}"),
                    min_groups=None if node.get("min_groups") is None else int(node["min_groups"]),
                    same_as=same_as, not_run=node.get("not_run"))


def load_registry(path: str | Path = REGISTRY_FILE) -> Registry:
    """Read a registry file (format: the header of ``audioml/conf/reproduce.yaml``).

    Raises ``ValueError`` naming the entry and field that is missing or refers to an unknown
    runner, dataset or ``features_from`` entry.
    """
    path = Path(path)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    runners = {}
    for name, node in (raw.get("runners") or {}).items():
        where = f"{path} runner {name!r}"
        if str(node.get("module")) not in RUNNER_MODULES:
            raise ValueError(f"{where}: module={node.get('module')!r}: a runner is one of audioml's entry points "
                             f"({', '.join(RUNNER_MODULES)})")
        runners[name] = Runner(name, str(node["module"]), _overrides(node.get("always"), where),
                               _overrides(node.get("quick"), where))
    datasets = {}
    for name, node in (raw.get("datasets") or {}).items():
        groups = node.get("groups") or {}
        datasets[name] = Dataset(name, str(node["folder"]), _strings(node.get("needs")), str(node.get("get", "")),
                                 groups.get("glob"), str(groups.get("what", "groups")), str(groups.get("by", "path")))
    entries: list[Entry] = []
    for number, node in enumerate(raw.get("entries") or []):
        where = f"{path} entry {number} ({node.get('experiment', '?')})"
        try:
            runner, dataset = runners[node["runner"]], datasets[node["dataset"]]
            reported = node["reported"]
            entry = Entry(study=str(node["study"]), system=str(node["system"]), experiment=str(node["experiment"]),
                          runner=runner, dataset=dataset, weights=_strings(node.get("weights")),
                          study_protocol=_protocol("study_protocol", node.get("study_protocol"), where),
                          grouped_protocol=_protocol("grouped_protocol", node.get("grouped_protocol"), where),
                          reported=Reported(str(reported["metric"]),
                                            None if reported.get("value") is None else float(reported["value"]),
                                            str(reported.get("text", ""))),
                          overrides=_overrides(node.get("overrides"), where), quick=_overrides(node.get("quick"), where),
                          features_from=node.get("features_from"))
        except KeyError as error:
            raise ValueError(f"{where}: missing or unknown {error.args[0]!r} (runners: {sorted(runners)}, "
                             f"datasets: {sorted(datasets)})") from None
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_./-]*", entry.experiment) or ".." in entry.experiment:
            raise ValueError(f"{where}: experiment={entry.experiment!r} is not an experiment config name")
        if entry.features_from is not None and entry.features_from not in {e.experiment for e in entries}:
            raise ValueError(f"{where}: features_from={entry.features_from!r} must name an entry listed before it")
        entries.append(entry)
    return Registry(tuple(entries), path)


# ------------------------------------------------------------------------------ requirements
@dataclass(frozen=True)
class Locations:
    """Where the jobs read from: ``data_dir`` (``paths.data_dir``), ``weights_dir``
    (``paths.weights_dir``; ``None``: the torch hub cache) and ``roots``, a dataset's own folder
    (``data.root``) by dataset name."""

    data_dir: Path
    weights_dir: Path | None = None
    roots: Mapping[str, Path] = field(default_factory=dict)

    def root(self, dataset: Dataset) -> Path:
        return Path(self.roots.get(dataset.name) or self.data_dir / dataset.folder)


def missing_data(entry: Entry, locations: Locations) -> str | None:
    """Why ``entry``'s data is not usable here (folder absent, a needed file pattern without a
    match), with how to get it; ``None`` when present."""
    root = locations.root(entry.dataset)
    how = f"get it with: {entry.dataset.get}" if entry.dataset.get else "see docs/guide/datasets.md"
    if not root.is_dir():
        return f"no {entry.dataset.name} data at {root}; {how}"
    for pattern in entry.dataset.needs:
        if next(root.glob(pattern), None) is None:
            return f"{root} has no {pattern}; {how}"
    return None


def missing_weights(entry: Entry, weights_dir: str | Path | None) -> str | None:
    """Which pretrained weights files of ``entry`` are not in the weights folder (``None``: the
    torch hub cache), each with its file name and URL; ``None`` when all are there."""
    if not entry.weights:
        return None
    from audioml.models.pretrained import get_pretrained_cfg, weights_folder

    folder = weights_folder(weights_dir)
    absent = []
    for name in entry.weights:
        record = get_pretrained_cfg(name)
        if record.filename and not (folder / record.filename).is_file():
            absent.append(f"{record.filename} ({name}, {record.url})")
    if not absent:
        return None
    return (f"weights not in {folder}: {'; '.join(absent)}; download into that folder (a run with network "
            "access does it once) or set --weights-dir / AUDIOML_WEIGHTS_DIR")


def count_groups(dataset: Dataset, root: Path) -> int | None:
    """How many groups the dataset's groups glob finds under ``root`` (``None``: not counted)."""
    if dataset.groups_glob is None:
        return None
    matches = root.glob(dataset.groups_glob)
    return len({path.name if dataset.groups_by == "name" else path for path in matches})


def too_few_groups(entry: Entry, protocol: Protocol, locations: Locations) -> str | None:
    """Why ``protocol`` cannot split the data present (fewer groups than it needs), or ``None``."""
    if protocol.min_groups is None:
        return None
    root = locations.root(entry.dataset)
    present = count_groups(entry.dataset, root)
    if present is None or present >= protocol.min_groups:
        return None
    return (f"{root} holds {present} {entry.dataset.groups_what}: {protocol.text} needs at least "
            f"{protocol.min_groups}; get the whole dataset with: {entry.dataset.get}")
