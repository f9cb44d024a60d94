"""Frozen-backbone embedding cache: with ``model.freeze=all`` every epoch and every sweep job
trains only the head, on embeddings computed once per (dataset, backbone, weights, front end).

``use_embedding_cache(model, datamodule, cache_dir, device)`` runs a qualifying model's front end
and backbone once, in eval mode, over every clip into an :class:`~audioml.data.cache.ArrayCache`
keyed by :func:`embedding_key`, and returns a DataModule of ``(embedding, target)`` batches in the
same order and splits; the model's weights are untouched. What is cached (pooled, tokens or
layers), what qualifies and why: docs/design/caches.md#frozen-backbone-embedding-cache."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from audioml.data.base import BatchedWaveformDataset, collate_waveforms
from audioml.data.cache import ArrayCache, reopen, reopenable
from audioml.files import fingerprint
from audioml.models.heads import LayerHead

log = logging.getLogger(__name__)

__all__ = ["use_embedding_cache", "cache_blockers", "module_fingerprint", "embedding_key",
           "compute_embeddings", "EmbeddingDataset", "CachedEmbeddingDataModule", "AUGMENTATION_ATTRIBUTES"]

#: Model attributes holding augmentation applied before or inside the backbone: any of them set
#: means the backbone must see every training batch, so the cache is not used.
AUGMENTATION_ATTRIBUTES = ("waveform_augment", "spec_augment", "mixup")
#: Cached embeddings up to this size are read into memory for training (larger ones stay mapped).
IN_MEMORY_BYTES = 2 << 30
#: Most bytes of cached embeddings in one validation or test batch (``CachedEmbeddingDataModule``).
EVAL_BATCH_BYTES = 64 << 20
#: Bump when what is cached changes: old entries are then ignored.
EMBEDDING_FORMAT = 1


def _plain(value: Any) -> Any:
    """``value`` when it is JSON-plain (numbers, strings, None and lists/tuples of them), else
    ``None``: object reprs carry memory addresses and would change the key every run."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(i is not None or v is None for i, v in zip(items, value)) else None
    return None


def _without_head(module: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    for name, sub in module.named_modules():
        if name == "head" or name.startswith("head."):
            continue
        yield name, sub


def module_fingerprint(frontend: nn.Module, backbone: nn.Module) -> str:
    """sha256 (hex, 20 chars) of the front end and the backbone without its ``head``.

    Covers each submodule's class, its plain settings (attributes that are numbers, strings or
    lists of them, and ``extra_repr``) and the bytes of every parameter and buffer, persistent
    or not. The head is excluded: a head sweep reuses one entry.
    """
    digest = hashlib.sha256()
    for prefix, module in (("frontend", frontend), ("backbone", backbone)):
        for name, sub in _without_head(module):
            settings = {k: _plain(v) for k, v in vars(sub).items()
                        if not k.startswith("_") and k != "training" and _plain(v) is not None}
            digest.update(f"{prefix}.{name}|{type(sub).__module__}.{type(sub).__qualname__}|"
                          f"{sub.extra_repr()}|{json.dumps(settings, sort_keys=True)}\n".encode())
        tensors = [*module.named_parameters(), *module.named_buffers()]
        for name, tensor in tensors:
            if name.startswith("head."):
                continue
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}|{data.dtype}|{tuple(data.shape)}\n".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def embedding_key(waveform_key: str, frontend: nn.Module, backbone: nn.Module, representation: str,
                  items: str = "", modules: str | None = None) -> str:
    """Key of the cache entry: waveform cache key + ``module_fingerprint`` (``modules`` when
    already computed) + representation + ``items`` (a description of clips beyond the waveform
    cache, see ``_items_fingerprint``)."""
    modules = modules or module_fingerprint(frontend, backbone)
    return fingerprint({"waveforms": waveform_key, "modules": modules,
                        "representation": representation, "items": items, "format": EMBEDDING_FORMAT})


def _items_fingerprint(all_items: Dataset) -> str:
    """Number of clips plus the bytes of clips that are not in the waveform cache (offline
    augmentation copies appended to the dataset): their content depends on settings the
    waveform key does not cover."""
    digest = hashlib.sha256(f"{len(all_items)}|".encode())
    extra = getattr(getattr(all_items, "waveforms", None), "extra", None)
    if extra is not None:
        digest.update(np.ascontiguousarray(extra).tobytes())
    return digest.hexdigest()[:20]


def cache_blockers(model: nn.Module) -> list[str]:
    """Reasons ``model`` cannot train on cached embeddings (empty list: it can)."""
    hparams = getattr(model, "hparams", {})
    if not hparams.get("embedding_cache", False):
        return ["model.embedding_cache is off"]
    frontend, backbone = getattr(model, "frontend", None), getattr(model, "backbone", None)
    if not isinstance(frontend, nn.Module) or not isinstance(backbone, nn.Module) \
            or not hasattr(backbone, "forward_features"):
        return [f"{type(model).__name__} has no frontend + backbone pair"]
    reasons = []
    if hparams.get("freeze") != "all":
        reasons.append(f"model.freeze={hparams.get('freeze')!r} (only 'all' freezes the whole backbone)")
    else:
        trainable = [f"frontend.{n}" for n, p in frontend.named_parameters() if p.requires_grad]
        trainable += [f"backbone.{n}" for n, p in backbone.named_parameters()
                      if p.requires_grad and not n.startswith("head.")]
        if trainable:
            reasons.append(f"trainable parameters outside the head ({', '.join(trainable[:3])})")
    for attribute in AUGMENTATION_ATTRIBUTES:
        augment = getattr(model, attribute, None)
        if augment is not None:
            reasons.append(f"{attribute} ({type(augment).__name__}) must be seen by the backbone")
    head = getattr(backbone, "head", None)
    if isinstance(head, LayerHead) and not head.cacheable:
        reasons.append(f"{type(head).__name__} pools every frame of the layers it reads (only a mean over frames is "
                       "cached: frames of every layer would take ~100x the space)")
    if getattr(model, "extra_input", None) is not None:  # AudioModule.extra_input
        reasons.append("the head also takes model.head.extra_features, computed from each clip (remembered per clip)")
    return reasons


def _representation(backbone: nn.Module) -> str:
    if isinstance(backbone.head, LayerHead):
        return "layers"
    return "tokens" if getattr(backbone.head, "uses_tokens", False) else "pooled"


def head_logits(backbone: nn.Module, cached: torch.Tensor, representation: str) -> torch.Tensor:
    """Logits from cached backbone outputs: ``forward_head`` on tokens ``(batch, T, F)``, the
    head alone on pooled embeddings ``(batch, F)``, a ``LayerHead``'s ``forward_pooled`` on the
    layers' means ``(batch, sum(layer_dims))``."""
    if representation == "tokens":
        return backbone.forward_head(cached)
    if representation == "layers":
        return backbone.head.forward_pooled(cached)
    return backbone.head(cached)


@contextmanager
def _eval_on(device: torch.device | str, *modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode on ``device`` without gradients; restore device and mode."""
    states = [(m, m.training, next(iter([*m.parameters(), *m.buffers()]), torch.empty(0)).device)
              for m in modules]
    for module in modules:
        module.eval().to(device)
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training, home in states:
            module.to(home).train(training)


def _backbone_outputs(frontend: nn.Module, backbone: nn.Module, waveform: torch.Tensor,
                      representation: str) -> torch.Tensor:
    if representation == "layers":  # every layer's mean over its real frames, concatenated
        return torch.cat([pooled.float() for pooled in backbone.forward_layers(frontend(waveform)).pooled()], dim=1)
    tokens = backbone.forward_features(frontend(waveform))
    return tokens if representation == "tokens" else backbone.forward_head(tokens, pre_logits=True)


def compute_embeddings(frontend: nn.Module, backbone: nn.Module, dataset: Dataset, out: np.ndarray,
                       representation: str, batch_size: int, device: torch.device | str) -> None:
    """Fill ``out`` (``(n, F)`` pooled, ``(n, T, F)`` tokens or ``(n, sum(layer_dims))`` layers,
    float32) with the eval-mode outputs of ``frontend`` + ``backbone`` for the waveforms of ``dataset`` (items
    ``(waveform, target)``), in dataset order. Modules are moved to ``device`` and back, and
    their train/eval mode is restored."""
    # Its own generator: iterating a DataLoader draws a seed from the global torch RNG otherwise,
    # and a run that builds the cache would then train with other dropout masks than one that
    # finds it (the first job of a sweep against the others).
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        pin_memory=torch.device(device).type == "cuda", generator=torch.Generator())
    row = 0
    with _eval_on(device, frontend, backbone):
        for waveform, _ in loader:
            cached = _backbone_outputs(frontend, backbone, waveform.to(device, non_blocking=True), representation)
            out[row:row + len(cached)] = cached.float().cpu().numpy()
            row += len(cached)


def _probe(frontend: nn.Module, backbone: nn.Module, dataset: Dataset, representation: str,
           device: torch.device | str) -> tuple[tuple[int, ...], str | None]:
    """Shape of one clip's cached output, and a reason to refuse the cache when the head on
    cached outputs does not reproduce the uncached eval-mode logits on two clips (a backbone
    whose ``forward_head`` is not its head applied to the ``pre_logits`` output)."""
    waveform = torch.stack([dataset[i][0] for i in range(min(2, len(dataset)))]).to(device)
    with _eval_on(device, frontend, backbone):
        cached = _backbone_outputs(frontend, backbone, waveform, representation)
        direct = backbone(frontend(waveform))
        from_cache = head_logits(backbone, cached, representation)
    if not torch.allclose(direct, from_cache, rtol=1e-4, atol=1e-5):
        return tuple(cached.shape[1:]), (
            f"{type(backbone).__name__}.forward_head is not its head applied to the pre-logits "
            f"embedding (max difference {float((direct - from_cache).abs().max()):.2e})")
    return tuple(cached.shape[1:]), None


class EmbeddingDataset(BatchedWaveformDataset):
    """Items ``(embedding, target)`` for manifest rows ``indices`` from an embedding array whose
    row ``i`` belongs to manifest row ``i`` (rows of any shape), read a batch at a time (one
    gather, ``collate_waveforms``); pickles a memory map as its file name, so DataLoader
    workers reopen it instead of receiving a copy."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "waveforms": reopenable(self.waveforms)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "waveforms": reopen(state["waveforms"])})


class CachedEmbeddingDataModule(L.LightningDataModule):
    """``datamodule`` with its waveforms replaced by cached embeddings.

    Every loader is the wrapped module's loader (same splits, order, sampler, balancing, batch
    size) over an ``EmbeddingDataset``; any other attribute (``class_names``,
    ``split_manifest``, ``skipped``, ...) is the wrapped module's.
    """

    def __init__(self, datamodule: L.LightningDataModule, embeddings: np.ndarray, cache_path: Path | None,
                 cache_status: str | None = None, frozen_fingerprint: str | None = None) -> None:
        super().__init__()
        self.datamodule = datamodule
        self.embeddings = embeddings
        self.cache_path = cache_path
        #: ``ArrayCache.status`` of the embeddings: ``"hit"``, ``"waited"``, ``"built"``, ``"memory"``.
        self.cache_status = cache_status
        #: ``module_fingerprint`` of the frozen front end and backbone the embeddings came from.
        self.frozen_fingerprint = frozen_fingerprint
        #: Seconds the front end and backbone took to embed every clip when the entry was built
        #: (``None``: not recorded, an entry built before this was kept).
        self.build_seconds: float | None = None

    def __getattr__(self, name: str) -> Any:
        if name == "datamodule":  # not set yet (unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.datamodule, name)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.datamodule.setup(stage)

    def _swap(self, loader: DataLoader, whole_split: bool = False) -> DataLoader:
        """``loader`` over the embeddings. ``whole_split`` (validation, test): when the embeddings
        are in memory, a batch holds up to ``EVAL_BATCH_BYTES`` of them (the whole split of a
        usual dataset) instead of the training batch size: evaluation has no gradient step to
        size, the metrics accumulate over batches alike, and each batch costs Lightning's
        per-step overhead (a millisecond or more), most of a head-only validation epoch."""
        dataset = loader.dataset
        if not hasattr(dataset, "indices") or not hasattr(dataset, "targets"):
            raise TypeError(f"{type(self.datamodule).__name__} loaders hold {type(dataset).__name__}, "
                            "not a WaveformDataset: the embedding cache cannot map its items")
        embedded = EmbeddingDataset(self.embeddings, dataset.targets, dataset.indices)
        batch_size = loader.batch_size
        if whole_split and batch_size and not isinstance(self.embeddings, np.memmap) and not loader.drop_last \
                and self._all_batches_evaluated():
            row_bytes = max(1, self.embeddings[0].nbytes) if len(self.embeddings) else 1
            batch_size = max(batch_size, min(len(embedded), EVAL_BATCH_BYTES // row_bytes))
        # Same loader class (e.g. a resumable one), sampler and generator: same batches in the
        # same order. Embedding rows are tiny, so no worker processes; a batch is one gather.
        return type(loader)(embedded, batch_size=batch_size, sampler=loader.sampler,
                            drop_last=loader.drop_last, num_workers=0, pin_memory=loader.pin_memory,
                            generator=loader.generator, collate_fn=collate_waveforms)

    def _all_batches_evaluated(self) -> bool:
        """Whether the trainer evaluates every batch (``limit_val/test_batches`` 1.0): a limit
        counts batches of the configured size, so it keeps that size."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return True
        limits = [getattr(trainer, f"limit_{stage}_batches", 1.0) for stage in ("val", "test")]
        return all(isinstance(limit, float) and limit == 1.0 for limit in limits)

    def train_dataloader(self) -> DataLoader:
        return self._swap(self.datamodule.train_dataloader())

    def val_dataloader(self) -> DataLoader:
        return self._swap(self.datamodule.val_dataloader(), whole_split=True)

    def test_dataloader(self) -> DataLoader:
        return self._swap(self.datamodule.test_dataloader(), whole_split=True)

    def predict_dataloader(self) -> DataLoader:
        return self._swap(self.datamodule.predict_dataloader())


def _unmapped_splits(datamodule: L.LightningDataModule, all_items: Dataset) -> list[str]:
    """Splits whose loader items are not rows of ``all_items`` (e.g. offline-augmented copies
    appended to the training split): their embeddings would not be in the cache."""

    def source(dataset: Dataset) -> tuple[Any, Any, Any]:
        waveforms = getattr(dataset, "waveforms", None)
        return getattr(waveforms, "array", waveforms), getattr(waveforms, "rows", None), getattr(dataset, "targets", None)

    reference = source(all_items)
    reasons = []
    for split in ("train", "val", "test"):
        dataset = getattr(datamodule, f"{split}_dataloader")().dataset
        if not hasattr(dataset, "indices") or any(a is not b for a, b in zip(source(dataset), reference)) \
                or (len(dataset.indices) and int(np.max(dataset.indices)) >= len(all_items)):
            reasons.append(f"the {split} loader holds items outside the cached clips ({type(dataset).__name__})")
    return reasons


def _probed_shape(cache: ArrayCache, rows: int) -> tuple[int, ...] | None:
    """Row shape of a stored entry whose build passed ``_probe`` (``None``: none, or unreadable)."""
    if cache.cache_dir is None or not cache.exists():
        return None
    try:
        array, meta = cache.load()
    except (ValueError, OSError, json.JSONDecodeError):
        return None  # get_or_build says why and rebuilds it
    return tuple(array.shape[1:]) if meta.get("probed") and len(array) == rows else None


def use_embedding_cache(model: L.LightningModule, datamodule: L.LightningDataModule,
                        cache_dir: str | Path | None, device: torch.device | str = "cpu",
                        batch_size: int | None = None) -> L.LightningDataModule:
    """Return ``datamodule`` wrapped to yield cached embeddings and switch ``model`` to them, or
    ``datamodule`` unchanged (with a log line saying why) when the model does not qualify.

    Args:
        model: a task module with ``frontend``, ``backbone``, ``hparams.freeze`` and
            ``hparams.embedding_cache`` (``AudioClassifier``).
        datamodule: an ``AudioDataModule`` after ``setup`` (its ``waveform_cache`` key and
            ``dataset("all")`` are used).
        cache_dir: folder of the cache entries (``paths.cache_dir``); ``None`` computes the
            embeddings in memory for this run only.
        device: where the front end and backbone run while embedding (the trainer's device).
        batch_size: clips per forward pass; the DataModule's batch size when ``None``.
    """
    reasons = cache_blockers(model)
    waveform_cache = getattr(datamodule, "waveform_cache", None)
    if not reasons and (waveform_cache is None or not hasattr(datamodule, "dataset")):
        reasons.append(f"{type(datamodule).__name__} has no waveform cache to key the embeddings")
    frontend, backbone = getattr(model, "frontend", None), getattr(model, "backbone", None)
    representation = _representation(backbone) if backbone is not None and not reasons else "pooled"
    if not reasons:
        dataset = datamodule.dataset("all")
        reasons += _unmapped_splits(datamodule, dataset)
    if not reasons:
        modules = module_fingerprint(frontend, backbone)
        key = embedding_key(waveform_cache.key, frontend, backbone, representation, _items_fingerprint(dataset),
                            modules)
        cache = ArrayCache(cache_dir, "embeddings", key)
        # An entry of this key was probed when it was built (the key covers the modules): the
        # probe's two forward passes are what a head job would otherwise spend most on here.
        item_shape = _probed_shape(cache, len(dataset))
        if item_shape is None:
            item_shape, reason = _probe(frontend, backbone, dataset, representation, device)
            if reason:
                reasons.append(reason)
    if reasons:
        freeze_all = getattr(model, "hparams", {}).get("freeze") == "all"
        (log.info if freeze_all else log.debug)(
            "embedding cache disabled, the backbone runs on every batch: %s", "; ".join(reasons))
        return datamodule

    shape = (len(dataset), *item_shape)
    started = time.perf_counter()

    def build(out: np.ndarray) -> dict[str, Any]:
        building = time.perf_counter()
        compute_embeddings(frontend, backbone, dataset, out, representation,
                           batch_size or getattr(datamodule, "batch_size", 32), device)
        return {"representation": representation, "waveform_key": waveform_cache.key,
                "seconds": round(time.perf_counter() - building, 3), "device": str(device),
                "backbone": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                "frontend": f"{type(frontend).__module__}.{type(frontend).__qualname__}",
                "weights": str(getattr(backbone, "weights", "") or ""), "probed": True}

    embeddings, meta = cache.get_or_build(shape, build)
    if embeddings.nbytes <= IN_MEMORY_BYTES:  # every epoch reads every row: read the file once
        embeddings = np.array(embeddings)
    model.embedding_input = representation
    log.info("embedding cache %s (%s %s, %.1f s): training only the head; %s",
             cache.status, representation, tuple(shape[1:]), time.perf_counter() - started,
             cache.array_path or "in memory")
    cached = CachedEmbeddingDataModule(datamodule, embeddings, cache.array_path, cache.status, modules)
    cached.build_seconds = meta.get("seconds")
    return cached
