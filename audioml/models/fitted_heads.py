"""Heads fitted in one pass over the training split instead of trained by gradient steps: the
k-nearest-neighbour probe (cosine similarity, ``k`` chosen on the validation split), alone on a
pooled embedding (``KNNHead``) or on one hidden layer of a backbone (``LayerKNNHead``).

A ``FittedHead`` sits anywhere inside a model's head (alone, or as the classifier of a layer
head). ``fit_heads`` runs the model over the training and validation loaders, records what
reaches each unfitted ``FittedHead`` (a forward pre-hook: whatever the modules before it
compute, from waveforms or from cached embeddings alike) and fits it. Its state is buffers, so
checkpoints carry it and ``audioml-eval``/``audioml-predict`` rebuild it like any head.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audioml.models.heads import LayerHead, masked_mean
from audioml.stats import SUMMARY_METRICS, confusion_matrices, metrics_from_confusion

log = logging.getLogger(__name__)

__all__ = ["FittedHead", "KNNHead", "LayerKNNHead", "fit_heads", "fitted_heads"]


class FittedHead(nn.Module, ABC):
    """A head whose state comes from ``fit`` (no trainable parameters); before that its logits
    are zeros (a uniform prediction)."""

    uses_tokens = False

    @property
    @abstractmethod
    def fitted(self) -> bool:
        """Whether ``fit`` has run (or a fitted state was loaded)."""

    @abstractmethod
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, val_inputs: torch.Tensor,
            val_targets: torch.Tensor) -> dict[str, float]:
        """Fit on the training split's inputs ``(n, in_features)`` and class ids ``(n,)``; choose
        settings on the validation split's. Returns numbers worth logging."""


class KNNHead(FittedHead):
    """k-nearest-neighbour classifier on cosine similarity: embedding ``(batch, in_features)`` ->
    logits ``(batch, num_classes)`` = log of the class fractions among the ``k`` most similar
    training embeddings (the probabilities of scikit-learn's ``KNeighborsClassifier(k,
    metric="cosine")``; a tie in votes goes to the lower class id, as there).

    ``fit`` stores the L2-normalised training embeddings and labels (buffers of ``bank_size``
    rows, the first ``bank_count`` used) and sets ``k`` to the candidate in ``ks`` (those up to
    the number of training clips) with the best validation ``select_by`` (a summary metric, the
    smallest ``k`` among equals; with no validation clip the middle candidate, with a warning).
    The buffers' shapes are fixed by the constructor, so a checkpoint's record describes them
    exactly (``audioml.run.use.checkpoint`` checks every tensor's shape against it); a training split
    larger than ``bank_size`` is refused when fitting, saying what to raise.

    Raises ``ValueError`` for an empty ``ks``, an unknown ``select_by`` or ``bank_size < 1``.
    """

    def __init__(self, in_features: int, num_classes: int, ks: Sequence[int] = (1, 3, 5, 7, 9, 15, 21, 31, 51),
                 select_by: str = "macro_f1", bank_size: int = 4096) -> None:
        super().__init__()
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"KNNHead ks={list(ks)}: give candidate neighbour counts >= 1")
        if select_by not in SUMMARY_METRICS:
            raise ValueError(f"KNNHead select_by={select_by!r}: use one of {list(SUMMARY_METRICS)}")
        if int(bank_size) < 1:
            raise ValueError(f"KNNHead bank_size={bank_size}: the training clips it holds, >= 1")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.ks = sorted({int(k) for k in ks})
        self.select_by = select_by
        self.register_buffer("bank", torch.zeros(int(bank_size), self.in_features))
        self.register_buffer("bank_targets", torch.zeros(int(bank_size), dtype=torch.long))
        self.register_buffer("bank_count", torch.tensor(0, dtype=torch.long))
        self.register_buffer("k", torch.tensor(0, dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return int(self.bank_count) > 0 and int(self.k) > 0

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, k={int(self.k)}, "
                f"bank={int(self.bank_count)}/{self.bank.shape[0]}")

    def _votes(self, embedding: torch.Tensor, ks: Sequence[int]) -> list[torch.Tensor]:
        """Class fractions ``(batch, num_classes)`` among the ``k`` nearest, for each ``k``."""
        count = int(self.bank_count)
        similarity = F.normalize(embedding.float(), dim=1) @ self.bank[:count].T
        order = similarity.topk(max(ks), dim=1).indices      # most similar first
        labels = self.bank_targets[:count][order]             # (batch, max k)
        counts = torch.zeros(len(embedding), self.num_classes, device=embedding.device)
        out, done = [], 0
        for k in ks:
            counts.scatter_add_(1, labels[:, done:k], torch.ones_like(labels[:, done:k], dtype=counts.dtype))
            done = k
            out.append(counts / k)
        return out

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return embedding.new_zeros(embedding.shape[0], self.num_classes)
        (fractions,) = self._votes(embedding, [int(self.k)])
        return torch.log(fractions.clamp_min(1e-6))

    @torch.no_grad()
    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, val_inputs: torch.Tensor,
            val_targets: torch.Tensor) -> dict[str, float]:
        if len(inputs) == 0:
            raise ValueError("KNNHead.fit: the training split is empty")
        if len(inputs) > self.bank.shape[0]:
            raise ValueError(f"the kNN probe holds {self.bank.shape[0]} training clips and the training split has "
                             f"{len(inputs)}: set model.head.bank_size={len(inputs)} (or more)")
        device = self.bank.device
        self.bank.zero_()
        self.bank_targets.zero_()
        self.bank[:len(inputs)] = F.normalize(inputs.detach().float().to(device), dim=1)
        self.bank_targets[:len(inputs)] = targets.detach().long().to(device)
        self.bank_count.fill_(len(inputs))
        candidates = [k for k in self.ks if k <= len(inputs)] or [len(inputs)]
        report: dict[str, float] = {}
        if len(val_inputs) == 0:
            chosen = candidates[len(candidates) // 2]
            log.warning("kNN probe: no validation clips to choose k on; k=%d (the middle candidate)", chosen)
        else:
            scores = []
            truth = val_targets.detach().long().cpu().numpy()
            for k, fractions in zip(candidates, self._votes(val_inputs.to(device), candidates)):
                predicted = fractions.argmax(dim=1).cpu().numpy()
                matrix = confusion_matrices(truth, predicted, self.num_classes)
                score = float(metrics_from_confusion(matrix, [str(c) for c in range(self.num_classes)])[self.select_by])
                report[f"knn/val_{self.select_by}_k{k}"] = score
                scores.append(score)
            chosen = candidates[int(np.argmax(scores))]  # the first (smallest k) of the best
            log.info("kNN probe: k=%d chosen on %d validation clips (val %s %s)", chosen, len(val_inputs),
                     self.select_by, ", ".join(f"k={k}: {s:.3f}" for k, s in zip(candidates, scores)))
        self.k.fill_(chosen)
        report["knn/k"] = float(chosen)
        return report


class LayerKNNHead(LayerHead):
    """kNN probe of one hidden layer: ``LayerStates`` -> mean of layer ``layers`` over its real
    frames -> ``KNNHead`` (its ``ks``, ``select_by``). Reads only layer means, so a frozen
    backbone's layers are cached once for every layer choice (``cacheable``).

    Args:
        layers: ``"last"`` or a layer index (negative counts from the top); a learned weighting
            of layers needs training, which a kNN does not do.
        pooling, projection, hidden, normalize: ``LayerWeightedHead``'s keywords (a model
            preset's head settings merge into a probe's), accepted at the values a kNN has:
            ``"mean"``, ``None``, ``None``, ``False``; ``dropout`` and ``attention_dim`` do
            nothing without training.
        Other arguments: the ``LayerHead`` factory signature, ``KNNHead``'s.

    Raises ``ValueError`` for another ``layers``, or a setting a kNN does not have.
    """

    def __init__(self, in_features: int, num_classes: int, layer_dims: Sequence[int] = (),
                 layers: int | str = "last", ks: Sequence[int] = (1, 3, 5, 7, 9, 15, 21, 31, 51),
                 select_by: str = "macro_f1", bank_size: int = 4096, pooling: str = "mean",
                 projection: int | None = None, hidden: int | Sequence[int] | None = None, normalize: bool = False,
                 dropout: float = 0.0, attention_dim: int = 128) -> None:
        super().__init__()
        settings = (("pooling", pooling, "mean"), ("projection", projection, None), ("hidden", hidden, None),
                    ("normalize", normalize, False))
        unsupported = {name: value for name, value, plain in settings if value != plain}
        if unsupported:
            raise ValueError(f"kNN probe: {unsupported} are settings of a trained head; the kNN votes on a layer's "
                             "mean (model.head.pooling=mean, projection/hidden null, normalize false)")
        dims = tuple(int(d) for d in layer_dims) or (int(in_features),)
        if layers == "last":
            index = len(dims) - 1
        elif isinstance(layers, int) and not isinstance(layers, bool) and -len(dims) <= layers < len(dims):
            index = layers % len(dims)
        else:
            raise ValueError(f"kNN probe layers={layers!r}: use 'last' or one layer index in "
                             f"{-len(dims)}..{len(dims) - 1} (a learned weighting of layers needs a trained head: "
                             "probe=linear or mlp)")
        self.layer_dims, self.index = dims, index
        self.offset = sum(dims[:index])
        self.knn = KNNHead(dims[index], num_classes, ks, select_by, bank_size)

    @property
    def cacheable(self) -> bool:
        return True

    def forward(self, states) -> torch.Tensor:
        """``LayerStates`` -> logits ``(batch, num_classes)``."""
        return self.knn(masked_mean(states.layers[self.index], states.mask))

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.knn(pooled[:, self.offset:self.offset + self.layer_dims[self.index]])


def fitted_heads(model: nn.Module) -> list[FittedHead]:
    """The ``FittedHead`` modules inside ``model``."""
    return [module for module in model.modules() if isinstance(module, FittedHead)]


@torch.no_grad()
def _inputs_of(head: FittedHead, model: nn.Module, batches: Iterable,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What reaches ``head`` when ``model`` runs in eval mode over ``batches`` of ``(x, target)``,
    and the hard targets."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().float().cpu()))
    targets = []
    try:
        for inputs, target, *_ in batches:  # (waveform or cached rows, target[, a head's second input])
            model(inputs.to(device))
            targets.append((target.argmax(dim=1) if target.dim() == 2 else target).long().cpu())
    finally:
        hook.remove()
    width = getattr(head, "in_features", 0)
    return (torch.cat(seen) if seen else torch.zeros(0, width)), (torch.cat(targets) if targets else
                                                                 torch.zeros(0, dtype=torch.long))


def fit_heads(model: nn.Module, train_batches: Iterable, val_batches: Iterable) -> dict[str, float]:
    """Fit every unfitted ``FittedHead`` of ``model`` on what reaches it from the training batches
    (validation batches to choose its settings; both iterated once per head, e.g. DataLoaders),
    ``model`` in eval mode meanwhile (its mode is put back). Returns the heads' reports; ``{}``
    when there is nothing to fit."""
    heads = [head for head in fitted_heads(model) if not head.fitted]
    if not heads:
        return {}
    device = next(iter([*model.parameters(), *model.buffers()])).device
    was_training = model.training
    model.eval()
    report: dict[str, float] = {}
    try:
        for head in heads:
            inputs, targets = _inputs_of(head, model, train_batches, device)
            val_inputs, val_targets = _inputs_of(head, model, val_batches, device)
            report.update(head.fit(inputs, targets, val_inputs, val_targets))
    finally:
        model.train(was_training)
    return report
