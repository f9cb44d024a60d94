"""The checkpoint is the model: the model record every checkpoint carries under ``"audioml"``
(format 2, plain data: model and loss configs, task, classes, decoder, data, seed, temperature),
how it is written (``ModelInCheckpoint``, ``model_record``) and read back (``read_record``,
``model_from_record``, ``datamodule_from_record``).

A file from elsewhere cannot run code: it is loaded with ``weights_only``, every ``_target_`` must
name a class of ``ALLOWED_PACKAGES`` or ``trusted_modules`` and every other field plain data
(``check_record``), and rebuilding never downloads or writes. Fields and reasons:
docs/design/checkpoints.md."""

from __future__ import annotations

import logging
import math
import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from audioml.models.base import persist_metric_states

log = logging.getLogger(__name__)

__all__ = ["RECORD_KEY", "FORMAT", "UntrustedCheckpointError", "ModelInCheckpoint", "model_record",
           "read_record", "check_record", "untrusted_targets", "instantiate_model", "model_from_record",
           "datamodule_from_record"]

#: Key of the model record inside a checkpoint.
RECORD_KEY = "audioml"
#: Version of the record written now (1: the whole run config, before round 2).
FORMAT = 2

#: Packages whose classes a record may name, per part (a user adds packages with ``trusted_modules``).
ALLOWED_PACKAGES = {"model": ("audioml.models", "audioml.features", "torch.nn"),
                    "loss": ("audioml.losses", "torch.nn"),
                    "data": ("audioml.data",)}
_BASE_CLASS = {"model": nn.Module, "loss": nn.Module, "data": L.LightningDataModule}
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
_PATHS_REFERENCE = re.compile(r"\$\{paths\.[A-Za-z_][A-Za-z0-9_]*\}")
#: Model config keys that only training uses (the record leaves them out).
_TRAINING_ONLY = ("optimizer", "scheduler", "pretrain_optimizer")
#: Model config keys that act on the machine (where weights are, whether the network may be
#: used): never taken from a record; rebuilding sets them to these values.
_MACHINE_MODEL_KEYS = {"weights_dir": None, "local_files_only": True, "cache_dir": None}
TASKS = ("classification", "regression")
#: Most classes (or regression targets) a record may name, and the longest name.
MAX_CLASSES = 10_000
MAX_NAME_LENGTH = 200


class UntrustedCheckpointError(ValueError):
    """A checkpoint whose record names code outside the allowed packages (or is malformed)."""


class ModelInCheckpoint(L.Callback):
    """Writes the model record (``model_record``) into every checkpoint Lightning saves."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = self.record


# ------------------------------------------------------------------------------------ writing
def model_record(cfg: DictConfig, datamodule, backbone: nn.Module | None = None) -> dict[str, Any]:
    """The record of the model ``cfg`` builds on ``datamodule`` (see the module docs); the built
    ``backbone`` adds what it loaded from its weights' source (``Backbone.rebuild_config``:
    e.g. a transformers config), so the record rebuilds it with no download."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in _TRAINING_ONLY:
        model.pop(key, None)
    if model.get("frontend") is None and (weights := (model.get("backbone") or {}).get("weights")):
        from audioml.models.pretrained import get_pretrained_cfg  # pin the record's front end

        model["frontend"] = get_pretrained_cfg(weights).frontend_config()
    if backbone is not None and isinstance(model.get("backbone"), dict):
        model["backbone"].update(backbone.rebuild_config())
    _set_pretrained_false(model)
    return {"format": FORMAT, "model": model,
            "loss": OmegaConf.to_container(cfg.loss, resolve=True) if cfg.get("loss") else None,
            "task": datamodule.task, "class_names": [str(c) for c in datamodule.class_names],
            "class_counts": datamodule.train_class_counts(), "decoder": datamodule.decoder.settings(),
            "data": _keep_path_references(OmegaConf.to_container(cfg.data, resolve=False),
                                          OmegaConf.to_container(cfg.data, resolve=True)),
            "seed": int(cfg.seed)}


def _set_pretrained_false(node: Any) -> None:
    """In place: every ``pretrained`` false and every machine key (``_MACHINE_MODEL_KEYS``) unset:
    the checkpoint's weights replace pretrained ones, and the machine decides where weights are."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pretrained":
                node[key] = False
            elif key in _MACHINE_MODEL_KEYS:
                node[key] = _MACHINE_MODEL_KEYS[key]
            else:
                _set_pretrained_false(value)
    elif isinstance(node, list):
        for value in node:
            _set_pretrained_false(value)


def _is_path_reference(value: Any) -> bool:
    return isinstance(value, str) and "${" in value and "${" not in _PATHS_REFERENCE.sub("", value)


def _keep_path_references(raw: Any, resolved: Any) -> Any:
    """``resolved``, except strings that only interpolate ``${paths.<name>}`` stay as written."""
    if _is_path_reference(raw):
        return raw
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {key: _keep_path_references(raw.get(key), value) for key, value in resolved.items()}
    if isinstance(raw, list) and isinstance(resolved, list) and len(raw) == len(resolved):
        return [_keep_path_references(a, b) for a, b in zip(raw, resolved)]
    return resolved


# ------------------------------------------------------------------------------------ reading
def read_record(path: str | Path, trusted_modules: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(record, state_dict)`` of an audioml checkpoint, the record checked (``check_record``).

    Raises ``FileNotFoundError`` for a missing file; ``ValueError`` for a file that is not an
    audioml checkpoint of a readable format; ``UntrustedCheckpointError`` for a record naming
    code outside the allowed packages.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a checkpoint (not a torch zip archive: truncated, or another kind of "
                         "file); give a .ckpt from <run dir>/checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UntrustedCheckpointError(f"{path} holds Python objects, not plain data (refused by "
                                       f"torch.load(weights_only=True)): {str(error).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or not a torch file): {error}") from None
    record = checkpoint.get(RECORD_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(record, dict):
        raise ValueError(f"{path} has no '{RECORD_KEY}' record: it was not written by audioml-train, "
                         "so the model cannot be rebuilt from it")
    version = record.get("format", 1 if "config" in record else None)
    if version != FORMAT:
        older = isinstance(version, int) and version < FORMAT
        raise ValueError(f"{path} has checkpoint format {version}; this audioml reads format {FORMAT}. "
                         + ("Format 1 (audioml before round 2) stored the whole run config, which cannot be "
                            "rebuilt safely: retrain the run with this version (the same command)."
                            if older else "It was written by another audioml version: use that version."))
    check_record(record, trusted_modules, source=str(path))
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} has no state_dict")
    from audioml.run.fit.head_only import HEAD_ONLY_KEY

    if HEAD_ONLY_KEY in checkpoint:
        raise ValueError(f"{path} holds only the head of a model whose frozen backbone trained on cached embeddings: "
                         "its run stopped before the fit ended, when the full model is written. Rerun the "
                         "training command to finish the run (it continues from this checkpoint), then use its "
                         "best checkpoint")
    return record, state_dict


def check_record(record: dict[str, Any], trusted_modules: Iterable[str] = (), source: str = "record") -> None:
    """Refuse a record that could run code other than the allowed classes (module docs)."""
    trusted = tuple(str(m) for m in trusted_modules)
    for part in ("model", "loss", "data"):
        node = record.get(part)
        if node is None and part == "loss":
            continue
        if not isinstance(node, dict) or "_target_" not in node:
            raise UntrustedCheckpointError(f"{source}: '{part}' must be a config with a _target_")
        _check_node(node, part, part, ALLOWED_PACKAGES[part] + trusted, source)
    _check_plain_fields(record, source)


def _check_plain_fields(record: dict[str, Any], source: str) -> None:
    """Every field of the record that is not a config: plain data of its type and size, so that
    nothing but the checked ``_target_``s ever reaches ``instantiate`` (a ``class_names`` entry
    that is a mapping with a ``_target_`` would be instantiated as a keyword argument)."""
    for key in ("class_names", "task"):
        if key not in record:
            raise UntrustedCheckpointError(f"{source}: the record lacks '{key}'")
    if record["task"] not in TASKS:
        raise UntrustedCheckpointError(f"{source}: task={record['task']!r} is not one of {list(TASKS)}")
    names = record["class_names"]
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_CLASSES or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH for name in names):
        raise UntrustedCheckpointError(f"{source}: class_names must be a list of 1 to {MAX_CLASSES} names "
                                       f"(strings of 1 to {MAX_NAME_LENGTH} characters)")
    if len(set(names)) != len(names):
        raise UntrustedCheckpointError(f"{source}: class_names repeats a name: {names[:20]}")
    counts = record.get("class_counts")
    if counts is not None and not (isinstance(counts, list) and len(counts) in (0, len(names)) and all(
            type(count) is int and count >= 0 for count in counts)):
        raise UntrustedCheckpointError(f"{source}: class_counts must be a list of {len(names)} whole numbers >= 0 "
                                       "(or empty)")
    if type(record.get("seed", 0)) is not int:
        raise UntrustedCheckpointError(f"{source}: seed must be a whole number")
    from audioml.data.decoder import ClipDecoder

    try:
        ClipDecoder.from_settings(record.get("decoder"))
    except (ValueError, TypeError) as error:
        raise UntrustedCheckpointError(f"{source}: decoder settings refused: {error}") from None
    temperature = record.get("temperature")
    if temperature is not None and not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
                                        and math.isfinite(temperature) and temperature > 0):
        raise UntrustedCheckpointError(f"{source}: temperature={temperature!r} must be a finite number > 0")


def _check_node(node: Any, where: str, part: str, allowed: tuple[str, ...], source: str) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str) or (key.startswith("_") and key not in _HYDRA_KEYS):
                raise UntrustedCheckpointError(f"{source}: {where}.{key}: unknown special key")
            if key == "_target_":
                _check_target(value, f"{where}._target_", part, allowed, source)
            elif key == "pretrained" and not isinstance(value, bool):
                raise UntrustedCheckpointError(f"{source}: {where}.pretrained={value!r} must be true or false")
            else:
                _check_node(value, f"{where}.{key}", part, allowed, source)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_node(value, f"{where}[{index}]", part, allowed, source)
    elif isinstance(node, str):
        if "${" in node and not (part == "data" and _is_path_reference(node)):
            raise UntrustedCheckpointError(f"{source}: {where}={node!r}: interpolations are not allowed in a "
                                           "checkpoint (only ${paths.<name>} in its data config)")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise UntrustedCheckpointError(f"{source}: {where}: a {type(node).__name__} is not config data")


def _check_target(target: Any, where: str, part: str, allowed: tuple[str, ...], source: str) -> None:
    """By name first (nothing imported outside ``allowed``), then the class itself."""
    if not isinstance(target, str) or not _DOTTED.fullmatch(target):
        raise UntrustedCheckpointError(f"{source}: {where}={target!r} is not a dotted class name")
    if not any(target.startswith(package + ".") for package in allowed):
        raise UntrustedCheckpointError(
            f"{source}: {where}={target!r} is outside the packages a checkpoint may name for its {part} "
            f"({', '.join(allowed)}); refused. If you trust this file and its code, add the package "
            f"to trusted_modules (e.g. trusted_modules=[{target.split('.')[0]}])")
    from hydra.utils import get_class

    try:
        located = get_class(target)
    except (ImportError, ValueError) as error:
        raise UntrustedCheckpointError(f"{source}: {where}={target!r} is not a class: {error}") from None
    module = getattr(located, "__module__", "") or ""
    if not issubclass(located, _BASE_CLASS[part]) or not any(
            module == package or module.startswith(package + ".") for package in allowed):
        raise UntrustedCheckpointError(f"{source}: {where}={target!r} is not a {_BASE_CLASS[part].__name__} "
                                       f"defined in {', '.join(allowed)}; refused")


def untrusted_targets(record: dict[str, Any], trusted_modules: Iterable[str] = ()) -> str | None:
    """Why ``record`` would be refused when read back (``None``: it would not)."""
    try:
        check_record(record, trusted_modules, source="this run's checkpoint")
    except UntrustedCheckpointError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------- rebuilding
def instantiate_model(model_cfg: Any, loss_cfg: Any, class_names: list[str], class_counts: list[int] | None,
                      **extra) -> L.LightningModule:
    """The LightningModule of ``model_cfg`` for these classes, with the loss of ``loss_cfg``;
    ``extra`` are further constructor arguments (training: augmentation)."""
    loss = instantiate(loss_cfg, class_counts=class_counts or None) if loss_cfg else None
    return instantiate(model_cfg, num_classes=len(class_names), class_names=list(class_names), loss=loss,
                       _convert_="partial", **extra)


def model_from_record(record: dict[str, Any], state_dict: dict[str, torch.Tensor],
                      source: str = "checkpoint") -> L.LightningModule:
    """The model of a checked record with its trained weights (strict), in eval mode.

    Raises ``UntrustedCheckpointError`` for non-finite weights, and when the model the record
    describes has tensors the checkpoint does not hold in the same shapes (checked on the meta
    device, before anything is allocated: a record cannot make this process allocate more than
    the file holds)."""
    import copy

    model_cfg = copy.deepcopy(record["model"])
    _set_pretrained_false(model_cfg)  # never download weights nor choose a folder on a checkpoint's word
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise UntrustedCheckpointError(f"{source}: state_dict entry {name!r} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UntrustedCheckpointError(f"{source}: the weights {name!r} hold NaN or infinite values: the model "
                                           "would answer NaN; retrain it (or use an earlier checkpoint)")
    _check_sizes(model_cfg, record, state_dict, source)
    model = instantiate_model(model_cfg, record.get("loss"), record["class_names"], record.get("class_counts"))
    persist_metric_states(model)  # as training did: metric states are part of every checkpoint
    model.load_state_dict(state_dict, strict=True)
    if record.get("temperature") is not None and record["task"] == "classification":
        model.temperature = float(record["temperature"])  # AudioClassifier.temperature
    model.eval()
    return model


def _check_sizes(model_cfg: dict[str, Any], record: dict[str, Any], state_dict: dict[str, torch.Tensor],
                 source: str) -> None:
    """Build the model on the meta device (no memory) and compare every parameter's and
    persistent buffer's shape with the checkpoint's."""
    try:
        with torch.device("meta"):
            shell = instantiate_model(model_cfg, record.get("loss"), record["class_names"], record.get("class_counts"))
    except Exception as error:  # noqa: BLE001 - whatever the constructor refuses, said as the record's fault
        while error.__cause__ is not None:  # Hydra's InstantiationException wraps the constructor's error
            error = error.__cause__
        raise UntrustedCheckpointError(f"{source}: the model its record describes cannot be built: "
                                       f"{type(error).__name__}: {str(error).splitlines()[0][:300]}") from None
    persist_metric_states(shell)
    expected = {name: tuple(tensor.shape) for name, tensor in shell.state_dict().items()}
    held = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    if expected != held:
        differing = sorted(set(expected) ^ set(held)) or sorted(k for k in expected if expected[k] != held[k])
        name = differing[0]
        raise UntrustedCheckpointError(
            f"{source}: its record describes a model whose tensors differ from the weights it holds "
            f"({len(differing)} differ, e.g. {name!r}: record {expected.get(name, 'absent')}, "
            f"weights {held.get(name, 'absent')}): the file was altered or is damaged")


def datamodule_from_record(record: dict[str, Any], paths: DictConfig, overrides: DictConfig | dict | None = None):
    """The DataModule the model was trained on, found through this machine's ``paths`` (and
    ``overrides`` of its settings: the user's command line), loaded with its splits; no
    augmentation. Its ``machine_arguments`` (where it writes, whether it downloads) never come
    from the record: the DataModule's defaults under ``paths.cache_dir`` (``overrides`` may set them)."""
    from hydra.utils import get_class

    data = dict(record["data"])
    for key in getattr(get_class(data["_target_"]), "machine_arguments", ()):
        data.pop(key, None)
    data["cache_dir"] = "${paths.cache_dir}"
    config = OmegaConf.create({"paths": OmegaConf.to_container(paths, resolve=False), "data": data})
    if overrides:
        config.data = OmegaConf.merge(config.data, overrides)
    datamodule = instantiate(config.data)
    if not overrides and datamodule.decoder.settings() != record["decoder"]:
        log.warning("the data decodes with %s, the model was trained on %s", datamodule.decoder.settings(),
                    record["decoder"])
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule
