"""Heads over every hidden layer (``LayerWeightedHead``): layer choice, softmax-weighted sums,
pooling over the real tokens against per-clip references, the pooled (cached) path equal to the
full one, and a real-weights probing run of EfficientAT mn04's 17 blocks on cached layer means."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from audioml.api import compose_config, train
from audioml.models.backbones.base import LayerStates
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.heads import AttentivePool, LayerWeightedHead, statistics_pool


def states(lengths=(7, 4), dims=(6, 6, 6), tokens=7, seed=0) -> LayerStates:
    generator = torch.Generator().manual_seed(seed)
    layers = tuple(torch.randn(len(lengths), tokens, d, generator=generator) for d in dims)
    mask = torch.arange(tokens)[None] < torch.tensor(lengths)[:, None]
    return LayerStates(layers, mask)


def test_one_layer_or_the_last_is_a_classifier_on_its_masked_mean() -> None:
    batch = states()
    for choice, index in (("last", 2), (1, 1), (-3, 0)):
        head = LayerWeightedHead(6, 3, layer_dims=(6, 6, 6), layers=choice)
        assert head.layer_logits is None and head.layer_weights() == {}
        expected = torch.stack([batch.layers[index][row, :length].mean(0) for row, length in enumerate((7, 4))])
        torch.testing.assert_close(head(batch), head.classifier(expected))


def test_weighted_sum_uses_softmax_weights_over_all_layers() -> None:
    batch = states()
    head = LayerWeightedHead(6, 3, layer_dims=(6, 6, 6))
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    assert list(head.layer_weights()) == [0, 1, 2]
    assert np.allclose(list(head.layer_weights().values()), weights.numpy())
    combined = sum(w * layer for w, layer in zip(weights, batch.layers))
    expected = torch.stack([combined[row, :length].mean(0) for row, length in enumerate((7, 4))])
    torch.testing.assert_close(head(batch), head.classifier(expected))
    # the cached path: each layer's mean, concatenated
    torch.testing.assert_close(head.forward_pooled(torch.cat(batch.pooled(), dim=-1)), head(batch))
    assert head.cacheable


def test_statistics_and_attentive_pooling_ignore_padding() -> None:
    batch = states(dims=(5,))
    padded = LayerStates((torch.where(batch.mask[..., None], batch.layers[0], torch.tensor(1e4)),), batch.mask)
    for row, length in enumerate((7, 4)):
        real = batch.layers[0][row, :length].numpy()
        np.testing.assert_allclose(statistics_pool(padded.layers[0], padded.mask)[row].numpy(),
                                   np.concatenate([real.mean(0), real.std(0)]), rtol=1e-5, atol=1e-5)
    pool = AttentivePool(5, 8)
    for row, length in enumerate((7, 4)):
        alone = pool(batch.layers[0][row:row + 1, :length], None)
        torch.testing.assert_close(pool(padded.layers[0], padded.mask)[row:row + 1], alone)
    head = LayerWeightedHead(5, 2, layer_dims=(5,), pooling="attentive")
    assert not head.cacheable and head(padded).shape == (2, 2)


def test_layers_of_different_widths_are_pooled_then_projected() -> None:
    """A CNN's blocks (token counts and widths differ): each layer pooled, mapped to in_features."""
    generator = torch.Generator().manual_seed(0)
    layers = (torch.randn(2, 20, 8, generator=generator), torch.randn(2, 10, 16, generator=generator),
              torch.randn(2, 10, 12, generator=generator))
    batch = LayerStates(layers)
    head = LayerWeightedHead(12, 3, layer_dims=(8, 16, 12), hidden=[16])
    assert len(head.layer_projections) == 3
    logits = head(batch)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(head.forward_pooled(torch.cat(batch.pooled(), dim=-1)), logits)
    stats = LayerWeightedHead(12, 3, layer_dims=(8, 16, 12), pooling="stats")
    assert stats(batch).shape == (2, 3)
    with pytest.raises(ValueError, match="attentive needs layers of one width"):
        LayerWeightedHead(12, 3, layer_dims=(8, 16, 12), pooling="attentive")
    with pytest.raises(ValueError, match="layer index in -3..2"):
        LayerWeightedHead(12, 3, layer_dims=(8, 16, 12), layers=3)
    with pytest.raises(ValueError, match="pooling="):
        LayerWeightedHead(12, 3, layer_dims=(8, 16, 12), pooling="max")


def test_reset_classifier_gives_a_layer_head_the_backbone_layers() -> None:
    backbone = ScratchCNN(channels=(8, 16), dense=12)
    backbone.reset_classifier(4, partial(LayerWeightedHead, projection=6))
    assert backbone.head.layer_dims == backbone.layer_dims == (8, 16, 12)
    spec = torch.randn(3, 1, 32, 40)
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(spec), backbone.head(backbone.forward_layers(spec)))
    assert backbone(spec).shape == (3, 4)


def test_efficientat_real_weights_probing_on_cached_layer_means(shared_weights: Path, tmp_path: Path) -> None:
    """The frozen mn04 runs once over the clips; the head learns a weight for each of its 17
    blocks from their cached means (the real-weights case of the layer interface)."""
    folder = shared_weights / "efficientat-mn04"
    if not (folder / "mn04_as_mAP_432.pt").is_file():
        pytest.skip(f"mn04 weights not in {folder}")
    cfg = compose_config(["data=synthetic", "data.clips_per_class=6", "data.seconds=0.5", "model=efficientat_mn04",
                          f"paths.weights_dir={folder}", "model.freeze=all", "logger=none", "trainer.max_epochs=3",
                          "+model.head={_target_:audioml.models.heads.LayerWeightedHead,_partial_:true}",
                          "model.optimizer.lr=0.05", "trainer.enable_progress_bar=false", "data.num_workers=0",
                          "evaluation.bootstrap_samples=0", f"paths.output_dir={tmp_path}",
                          f"hydra.run.dir={tmp_path / 'run'}"])
    metrics, run_dir = train(cfg)
    cached = [np.load(p, mmap_mode="r") for p in (tmp_path / "cache").glob("embeddings-*.npy")]
    widths = (8, 8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 64, 64, 64, 384)
    assert [array.shape[1:] for array in cached] == [(sum(widths),)]
    table = np.loadtxt(run_dir / "layer_weights.csv", delimiter=",", skiprows=1)
    assert table.shape == (17, 2) and table[:, 0].tolist() == list(range(17))
    assert np.isclose(table[:, 1].sum(), 1.0, atol=1e-5) and not np.allclose(table[:, 1], 1 / 17)
    assert np.isfinite(metrics["test/macro_f1"])
