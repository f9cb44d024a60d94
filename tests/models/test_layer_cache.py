"""The all-layer embedding cache: every hidden layer's mean over its frames cached once
(``(clips, sum(layer_dims))``), equal to the backbone's own ``forward_layers``; the layer heads
on it give the uncached logits; a layer sweep, the probes and a head sweep never re-run the
encoder; heads that need frames are refused the cache with the reason; the real EfficientAT mn04
weights (17 block outputs)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import make_ravdess

from audioml.data.synthetic import SyntheticDataModule
from audioml.features import LogMel
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.classifier import AudioClassifier
from audioml.models.embedding_cache import CachedEmbeddingDataModule, use_embedding_cache
from audioml.models.fitted_heads import LayerKNNHead, fit_heads
from audioml.models.heads import LayerWeightedHead

GENERATOR = dict(num_classes=3, clips_per_class=8, num_groups=6, seconds=0.5, learnable=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


def make_datamodule(root: Path, cache_dir: Path, **overrides) -> SyntheticDataModule:
    datamodule = SyntheticDataModule(**{"root": root, "cache_dir": cache_dir, "sample_rate": 16000, "batch_size": 8,
                                        "seed": 0, **GENERATOR, **overrides})
    datamodule.setup("fit")
    return datamodule


def make_model(head, seed: int = 0) -> AudioClassifier:
    torch.manual_seed(seed)
    frontend = LogMel(16000, n_fft=512, hop_length=160, win_length=400, n_mels=32, normalize="instance")
    backbone = ScratchCNN(channels=[8, 16], dense=24, dropout=0.3)  # layers: 8 and 16 channels, dense 24
    return AudioClassifier(backbone=backbone, frontend=frontend, num_classes=3, freeze="all", head=head)



HEADS = {"layer 0": partial(LayerWeightedHead, layers=0), "last": partial(LayerWeightedHead, layers="last"),
         "weighted": partial(LayerWeightedHead), "weighted mlp": partial(LayerWeightedHead, hidden=16),
         "knn layer 1": partial(LayerKNNHead, layers=1, ks=[1, 3])}


def test_one_cache_entry_holds_every_layers_mean_and_serves_every_layer_head(data_root, tmp_path, compute_calls):
    cache_dir = tmp_path / "cache"
    datamodule = make_datamodule(data_root, cache_dir)
    names = set()
    for label, head in HEADS.items():
        model = make_model(head)
        cached = use_embedding_cache(model, datamodule, cache_dir)
        assert isinstance(cached, CachedEmbeddingDataModule) and model.embedding_input == "layers", label
        names.add(cached.cache_path.name)
        if label == "knn layer 1":  # fitted from what reaches it: cached rows, or waveforms through the backbone
            fit_heads(model, cached.train_dataloader(), cached.val_dataloader())
        # the head on cached layer means gives the logits of the whole model on waveforms
        model.eval()
        with torch.no_grad():
            from_cache = torch.cat([model(x) for x, _ in cached.test_dataloader()])
            model.embedding_input = None
            uncached = torch.cat([model(w) for w, _ in datamodule.test_dataloader()])
        torch.testing.assert_close(from_cache, uncached, rtol=1e-4, atol=1e-5, msg=label)
    assert compute_calls == [24] and len(names) == 1  # one encoder pass for every layer and head
    # the entry: each clip's layer means, concatenated in layer order, as forward_layers gives them
    model = make_model(HEADS["last"])
    entry = np.load(next(cache_dir.glob("embeddings-*.npy")))
    assert entry.shape == (24, 8 + 16 + 24) and entry.dtype == np.float32
    waveforms = torch.from_numpy(np.stack([datamodule.dataset("all")[i][0].numpy() for i in range(24)]))
    model.eval()
    with torch.no_grad():
        states = model.backbone.forward_layers(model.frontend(waveforms))
    expected = torch.cat([layer.mean(dim=1) for layer in states.layers], dim=1)
    np.testing.assert_allclose(entry, expected.numpy(), rtol=1e-5, atol=1e-6)
    # another encoder's weights: another entry
    use_embedding_cache(make_model(HEADS["last"], seed=1), datamodule, cache_dir)
    assert compute_calls == [24, 24]


def test_heads_that_need_every_frame_run_uncached_and_say_why(data_root, tmp_path, caplog):
    datamodule = make_datamodule(data_root, tmp_path / "cache")
    caplog.set_level(logging.INFO, logger="audioml.models.embedding_cache")
    for pooling in ("stats", "attentive"):
        model = make_model(partial(LayerWeightedHead, layers="last", pooling=pooling))
        assert use_embedding_cache(model, datamodule, tmp_path / "cache") is datamodule
        assert model.embedding_input is None
    assert "LayerWeightedHead pools every frame of the layers it reads" in caplog.text
    assert not list((tmp_path / "cache").glob("embeddings-*"))


def _compose(output_dir: Path, *overrides: str):
    from audioml.config import compose_config

    return compose_config(["data=synthetic", "model=cnn", "logger=none", "trainer.enable_progress_bar=false",
                           "data.clips_per_class=8", "data.num_groups=6", "data.seconds=0.5",
                           "model.backbone.channels=[8,16]", "model.backbone.dense=24", "trainer.max_epochs=3",
                           f"paths.output_dir={output_dir}", *overrides])


def test_a_layer_sweep_of_probe_runs_embeds_once(tmp_path, compute_calls):
    from audioml.run.fit.training import train

    results = {}
    for probe, layer in (("linear", 0), ("linear", 2), ("mlp", "weighted"), ("knn", 1)):
        run_dir = tmp_path / "runs" / f"{probe}-{layer}"
        cfg = _compose(tmp_path, f"probe={probe}", f"model.head.layers={layer}", f"paths.run_dir={run_dir}")
        results[probe, layer] = train(cfg, run_dir).metrics
    assert compute_calls == [24]  # the first run embedded every clip; the others hit the entry
    for metrics in results.values():
        assert 0.0 <= metrics["test/macro_f1"] <= 1.0 and "test/macro_f1_ci_low" in metrics
    (best,) = (tmp_path / "runs" / "knn-1" / "checkpoints").glob("best-*.ckpt")
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert int(state["backbone.head.knn.k"]) in (1, 3, 5, 7, 9)  # chosen on validation, kept in the checkpoint
    assert 0 < int(state["backbone.head.knn.bank_count"]) < 24 and state["backbone.head.knn.bank"].shape[1] == 16


def test_efficientat_real_weights_cache_17_layers(shared_weights, tmp_path, compute_calls):
    from audioml.data.ravdess import RavdessDataModule
    from audioml.models.backbones.efficientat import EfficientATMobileNet
    from audioml.models.pretrained import get_pretrained_cfg

    record = get_pretrained_cfg("efficientat_mn04_as")
    folder = shared_weights / "efficientat-mn04"
    if not (folder / record.filename).is_file():
        pytest.skip(f"{record.filename} not in {folder}")
    root = make_ravdess(tmp_path / "ravdess", actors=(1, 2), emotions=(1, 5), statements=(1,), seconds=1.0)
    datamodule = RavdessDataModule(root, sample_rate=32000, clip_seconds=1.0, batch_size=4, seed=0,
                                   cache_dir=tmp_path / "cache")
    datamodule.setup("fit")
    backbone = EfficientATMobileNet(width_mult=0.4, pretrained=True, weights_dir=str(folder))
    model = AudioClassifier(backbone=backbone, frontend=None, sample_rate=32000, num_classes=8, freeze="all",
                            head=partial(LayerWeightedHead, layers=12))
    cached = use_embedding_cache(model, datamodule, tmp_path / "cache")
    assert cached.embeddings.shape == (4, sum(backbone.layer_dims)) == (4, 896) and len(backbone.layer_dims) == 17
    assert compute_calls == [4] and np.isfinite(cached.embeddings).all()
    for layers in (0, 16, "weighted"):  # other layer choices on the same entry
        other = AudioClassifier(backbone=EfficientATMobileNet(width_mult=0.4, pretrained=True, weights_dir=str(folder)),
                                frontend=None, sample_rate=32000, num_classes=8, freeze="all",
                                head=partial(LayerWeightedHead, layers=layers))
        assert use_embedding_cache(other, datamodule, tmp_path / "cache").cache_status == "hit"
    assert compute_calls == [4]
