"""Classifier heads with the factory signature ``Head(in_features, num_classes, **options)``; heads
over every hidden layer (``LayerHead``) also take ``layer_dims``.

A head on the pooled embedding may take a second input, ``extra_features`` (``egemaps``,
``compare``: openSMILE functionals of the clip, ``audioml.features.smile.PRESETS``): it is then
built for ``in_features + width`` inputs, and the classifier hands it ``[embedding; features]``
(``AudioClassifier``, which computes the features from the waveform).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Head", "LinearHead", "MLPHead", "TransformerHead", "LayerHead", "LayerWeightedHead", "AttentivePool",
           "statistics_pool", "masked_mean", "extra_feature_width"]


def extra_feature_width(extra_features: str | None) -> int:
    """Values ``extra_features`` adds to a head's input (0 for ``None``).

    Raises ``ValueError`` for an unknown name, ``MissingExtraError`` without openSMILE."""
    if extra_features is None:
        return 0
    from audioml.features.smile import PRESETS, SmileSettings

    if extra_features not in PRESETS:
        raise ValueError(f"model.head.extra_features={extra_features!r}: use one of {sorted(PRESETS)}")
    return len(SmileSettings(*PRESETS[extra_features]).columns())


class Head(nn.Module):
    """What a backbone and a classifier may ask a head: ``uses_tokens`` (it takes time tokens
    ``(batch, tokens, features)`` rather than the pooled embedding) and ``extra_features`` (the
    name of a second input it was widened for, ``None``: none)."""

    uses_tokens: bool = False
    extra_features: str | None = None


class LinearHead(Head):
    """Embedding ``(batch, in_features [+ extra width])`` -> logits ``(batch, num_classes)``."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0,
                 extra_features: str | None = None) -> None:
        super().__init__()
        self.extra_features = extra_features
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features + extra_feature_width(extra_features), num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding))


class MLPHead(Head):
    """Embedding (``[embedding; extra features]`` with ``extra_features``) -> [Linear, BatchNorm,
    ReLU, Dropout] per hidden size -> Linear -> logits."""

    def __init__(self, in_features: int, num_classes: int, hidden: int | list[int] = 256,
                 dropout: float = 0.3, extra_features: str | None = None) -> None:
        super().__init__()
        self.extra_features = extra_features
        sizes = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = []
        width = in_features + extra_feature_width(extra_features)
        for size in sizes:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class TransformerHead(Head):
    """Time tokens ``(batch, tokens, in_features)`` -> logits: projection, learned positions, a
    small Transformer encoder, linear classifier on the [CLS] output (``pooling="cls"``, a
    learned token prepended) or on the mean of the encoded tokens (``pooling="mean"``).

    Raises ``ValueError`` for another ``pooling``, and for ``extra_features`` (a clip-level
    vector has no place among time tokens: use ``MLPHead`` or ``LinearHead``)."""

    uses_tokens = True

    def __init__(self, in_features: int, num_classes: int, d_model: int = 128, num_layers: int = 2,
                 num_heads: int = 4, dropout: float = 0.1, max_tokens: int = 512,
                 pooling: str = "cls", extra_features: str | None = None) -> None:
        super().__init__()
        if extra_features is not None:
            raise ValueError(f"model.head.extra_features={extra_features!r}: TransformerHead reads time tokens; "
                             "use audioml.models.heads.MLPHead or LinearHead for a second, clip-level input")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"TransformerHead pooling={pooling!r}: use 'cls' or 'mean'")
        self.pooling = pooling
        self.project = nn.Linear(in_features, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.positions = nn.Parameter(torch.randn(1, max_tokens + 1, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=2 * d_model,
                                           dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] + 1 > self.positions.shape[1]:
            raise ValueError(f"TransformerHead got {tokens.shape[1]} tokens; raise max_tokens "
                             f"(now {self.positions.shape[1] - 1})")
        x = self.project(tokens)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder(x + self.positions[:, : x.shape[1]])
        return self.fc(self.norm(x[:, 0] if self.pooling == "cls" else x.mean(dim=1)))


# ------------------------------------------------------------------------------ layer heads
def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the real tokens: ``(batch, tokens, dim)``, mask ``(batch, tokens)`` bool (True =
    real; ``None``: all real) -> ``(batch, dim)``. A row without a real token gives zeros."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def statistics_pool(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean and standard deviation over the real tokens: ``(batch, tokens, dim)`` -> ``(batch, 2 * dim)``."""
    mean = masked_mean(tokens, mask)
    variance = masked_mean((tokens - mean.unsqueeze(1)).square(), mask)
    return torch.cat([mean, torch.sqrt(variance.clamp(min=1e-8))], dim=-1)


class AttentivePool(nn.Module):
    """Additive attention over the real tokens: ``softmax(v . tanh(W x))``-weighted mean,
    ``(batch, tokens, dim)`` -> ``(batch, dim)``."""

    def __init__(self, dim: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(torch.tanh(self.project(tokens))).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return (scores.softmax(dim=1).unsqueeze(-1) * tokens).sum(dim=1)


class LayerHead(nn.Module):
    """Base of the heads that read every hidden layer of a backbone (``LayerStates``) instead
    of its last tokens. Factory signature ``(in_features, num_classes, layer_dims=...)``:
    ``Backbone.reset_classifier`` passes ``layer_dims``, and the backbone's ``forward`` gives
    the head ``forward_layers``' output."""

    uses_tokens = False

    def layer_weights(self) -> dict[int, float]:
        """Learned weight of each layer it combines, by layer index (empty: none learned)."""
        return {}

    @property
    def cacheable(self) -> bool:
        """Whether ``forward_pooled`` on the per-layer token means gives the logits of ``forward``
        (then a frozen backbone's layers can be cached as means, ``audioml.models.embedding_cache``)."""
        return False

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from ``(batch, sum(layer_dims))``: each layer's mean over its real tokens,
        concatenated in layer order (only where ``cacheable``)."""
        raise NotImplementedError(f"{type(self).__name__} does not read pooled layers")


class LayerWeightedHead(LayerHead):
    """Hidden layers -> one representation -> pooling over tokens -> linear or MLP classifier.

    Layers (``layers``): ``"weighted"`` (default) a learned softmax-weighted sum of all layers
    (SUPERB / EmoBox), an ``int`` one layer (negative counts from the top), ``"last"`` the top
    one. When the combined layers share their shape they are summed frame by frame, then
    projected (``projection``: a frame-wise linear layer to that width, EmoBox's hidden 128) and
    pooled; layers of different shapes (a CNN's blocks) are pooled first, each mapped to
    ``in_features`` by its own linear layer, then summed. ``normalize``: layer-normalise each
    layer first (no learned scale).

    Pooling over the real tokens (the ``LayerStates`` mask): ``"mean"``, ``"stats"`` (mean and
    standard deviation) or ``"attentive"`` (layers of one shape only). Classifier: ``hidden``
    ``None`` a linear layer, else an MLP ``[Linear, ReLU, Dropout]`` per hidden size; ``dropout``
    before it.

    Raises ``ValueError`` for an unknown ``layers`` or ``pooling``, a layer index out of range,
    or attentive pooling over layers of different widths.
    """

    def __init__(self, in_features: int, num_classes: int, layer_dims: Sequence[int] = (),
                 layers: str | int = "weighted", pooling: str = "mean", hidden: int | Sequence[int] | None = None,
                 dropout: float = 0.0, projection: int | None = None, normalize: bool = False,
                 attention_dim: int = 128) -> None:
        super().__init__()
        dims = tuple(int(d) for d in layer_dims) or (int(in_features),)
        if pooling not in ("mean", "stats", "attentive"):
            raise ValueError(f"head pooling={pooling!r}: use mean, stats or attentive")
        if layers == "weighted":
            indices = list(range(len(dims)))
        elif layers == "last":
            indices = [len(dims) - 1]
        elif isinstance(layers, int) and not isinstance(layers, bool) and -len(dims) <= layers < len(dims):
            indices = [layers % len(dims)]
        else:
            raise ValueError(f"head layers={layers!r}: use 'weighted', 'last' or a layer index in "
                             f"{-len(dims)}..{len(dims) - 1} (this backbone has {len(dims)} layers)")
        self.layer_dims, self.indices = dims, indices
        self.pooling, self.normalize = pooling, bool(normalize)
        widths = {dims[i] for i in indices}
        self.same_width = len(widths) == 1
        if not self.same_width and pooling == "attentive":
            raise ValueError(f"head pooling=attentive needs layers of one width; these have {sorted(widths)}: use "
                             "pooling=mean or stats, or one layer")
        if not self.same_width and projection is not None and pooling == "stats":
            raise ValueError("head projection with pooling=stats needs layers of one width; use pooling=mean")
        width = dims[indices[0]] if self.same_width else int(in_features)
        factor = 2 if pooling == "stats" else 1
        # layers of different widths: each pooled layer mapped to in_features
        self.layer_projections = None if self.same_width else nn.ModuleList(
            [nn.Linear(factor * dims[i], factor * width) for i in indices])
        self.layer_logits = nn.Parameter(torch.zeros(len(indices))) if len(indices) > 1 else None
        self.projection = None
        if projection is not None:
            self.projection = nn.Linear(width, int(projection))
            width = int(projection)
        self.attention = AttentivePool(width, attention_dim) if pooling == "attentive" else None
        sizes = [] if hidden is None else [hidden] if isinstance(hidden, int) else list(hidden)
        modules: list[nn.Module] = [nn.Dropout(dropout)]
        features = factor * width
        for size in sizes:
            modules += [nn.Linear(features, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = size
        modules.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*modules)

    def _weights(self) -> torch.Tensor | None:
        return None if self.layer_logits is None else self.layer_logits.softmax(dim=0)

    def layer_weights(self) -> dict[int, float]:
        weights = self._weights()
        if weights is None:
            return {}
        return {index: float(w) for index, w in zip(self.indices, weights.detach().cpu())}

    def _combine(self, items: list[torch.Tensor]) -> torch.Tensor:
        weights = self._weights()
        if weights is None:
            return items[0]
        return torch.stack(items, dim=0).mul(weights.view(-1, *([1] * items[0].dim()))).sum(dim=0)

    def _pool(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "stats":
            return statistics_pool(tokens, mask)
        if self.pooling == "attentive":
            return self.attention(tokens, mask)
        return masked_mean(tokens, mask)

    def forward(self, states) -> torch.Tensor:
        """``LayerStates`` -> logits ``(batch, num_classes)``."""
        if len(states.layers) != len(self.layer_dims):
            raise ValueError(f"the head was built for {len(self.layer_dims)} layers, the backbone gave "
                             f"{len(states.layers)}")
        layers = [states.layers[i] for i in self.indices]
        if self.normalize:
            layers = [nn.functional.layer_norm(x, x.shape[-1:]) for x in layers]
        if all(x.shape == layers[0].shape for x in layers):
            x = self._combine(layers)
            if self.projection is not None:
                x = self.projection(x)
            return self.classifier(self._pool(x, states.mask))
        pooled = [self._pool(x, states.mask) for x in layers]
        if self.layer_projections is not None:
            pooled = [project(p) for project, p in zip(self.layer_projections, pooled)]
        x = self._combine(pooled)
        if self.projection is not None:  # pooled first: the mean commutes with this linear map
            if self.pooling != "mean":
                raise ValueError(f"head projection with pooling={self.pooling} needs layers of one shape")
            x = self.projection(x)
        return self.classifier(x)

    @property
    def cacheable(self) -> bool:
        return self.pooling == "mean" and not self.normalize

    def forward_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self.cacheable:
            raise ValueError(f"pooling={self.pooling!r}{' with normalize' if self.normalize else ''} needs every "
                             "token: it cannot run on pooled layers")
        means = torch.split(pooled, list(self.layer_dims), dim=-1)
        items = [means[i] for i in self.indices]
        if self.layer_projections is not None:
            items = [project(p) for project, p in zip(self.layer_projections, items)]
        x = self._combine(items)
        if self.projection is not None:
            x = self.projection(x)
        return self.classifier(x)
