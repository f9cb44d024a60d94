"""The layer interface (``Backbone.forward_layers`` / ``layer_dims``): every hidden layer, input
side first, the last one equal to ``forward_features``; widths declared without running; masked
pooling against a per-clip reference. The real-weights case is EfficientAT mn04 (17 blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from audioml.models.backbones.base import LayerStates, masked_mean
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.backbones.crnn import CRNNAttention
from audioml.models.backbones.efficientat import EfficientATMobileNet
from audioml.models.backbones.panns import Cnn14
from audioml.models.backbones.vggish import VGGish
from audioml.models.pretrained import get_pretrained_cfg

MN04 = get_pretrained_cfg("efficientat_mn04_as")


def check_layers(backbone, spec: torch.Tensor, count: int) -> LayerStates:
    backbone.eval()
    with torch.no_grad():
        states = backbone.forward_layers(spec)
        tokens = backbone.forward_features(spec)
    assert isinstance(states, LayerStates) and len(states.layers) == count == len(backbone.layer_dims)
    for layer, dim in zip(states.layers, backbone.layer_dims):
        assert layer.dim() == 3 and layer.shape[0] == spec.shape[0] and layer.shape[2] == dim
    torch.testing.assert_close(states.layers[-1], tokens)
    return states


def test_efficientat_random_has_17_block_outputs() -> None:
    torch.manual_seed(0)
    backbone = EfficientATMobileNet(width_mult=0.4)
    states = check_layers(backbone, torch.randn(2, 1, 128, 200), 17)
    assert backbone.layer_dims[-1] == backbone.num_features == 384
    # time resolution halves at the stem and at each of the four down-sampling blocks
    assert states.layers[0].shape[1] == 100 and states.layers[-1].shape[1] == 7
    assert states.mask is None


def test_scratch_cnn_blocks_then_dense() -> None:
    torch.manual_seed(0)
    backbone = ScratchCNN(channels=(8, 16), dense=12)
    states = check_layers(backbone, torch.randn(3, 1, 32, 40), 3)
    assert backbone.layer_dims == (8, 16, 12)
    assert [layer.shape[1] for layer in states.layers] == [20, 10, 10]
    flat = ScratchCNN(channels=(4,), dense=6, input_size=(16, 16), flatten=True)
    check_layers(flat, torch.randn(2, 1, 16, 16), 2)


def test_default_is_one_layer() -> None:
    backbone = CRNNAttention(n_mels=64)
    check_layers(backbone, torch.randn(2, 1, 64, 50), 1)
    assert backbone.layer_dims == (backbone.num_features,)


def test_masked_mean_equals_mean_of_real_tokens() -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 7, 5, generator=generator)
    lengths = [7, 3, 1]
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    pooled = masked_mean(tokens, mask)
    for row, length in enumerate(lengths):
        torch.testing.assert_close(pooled[row], tokens[row, :length].mean(dim=0))
    torch.testing.assert_close(masked_mean(tokens, None), tokens.mean(dim=1))
    states = LayerStates((tokens, 2 * tokens), mask)
    torch.testing.assert_close(states.pooled()[1], 2 * pooled)


def test_efficientat_real_weights_17_layers(shared_weights: Path) -> None:
    folder = shared_weights / "efficientat-mn04"
    if not (folder / MN04.filename).is_file():
        pytest.skip(f"{MN04.filename} not in {folder}")
    backbone = EfficientATMobileNet(pretrained=True, weights_dir=str(folder))
    generator = torch.Generator().manual_seed(1)
    spec = MN04.build_frontend()(0.1 * torch.randn(2, 32000, generator=generator))
    states = check_layers(backbone, spec, 17)
    # each block's width from the published file: its last BatchNorm's size
    published = torch.load(folder / MN04.filename, map_location="cpu", weights_only=True)
    widths = [[v.shape[0] for k, v in published.items() if k.startswith(f"features.{i}.") and
               k.endswith("running_mean")][-1] for i in range(17)]
    assert backbone.layer_dims == tuple(widths) == (8, 8, 16, 16, 16, 16, 16, 32, 32, 32, 32, 48, 48, 64, 64, 64, 384)
    assert all(torch.isfinite(layer).all() for layer in states.layers)


def test_panns_cnn14_exposes_each_blocks_output() -> None:
    torch.manual_seed(0)
    backbone = Cnn14(n_mels=64, channels=(8, 16, 32), weights=None)
    states = check_layers(backbone, torch.randn(2, 1, 64, 100), 3)
    assert backbone.layer_dims == (8, 16, 32) and states.layers[0].shape[1] == 50  # time halved by block 1


def test_vggish_exposes_each_blocks_output_then_its_embedding() -> None:
    torch.manual_seed(0)
    backbone = VGGish(embedding_sizes=(32,), weights=None)
    states = check_layers(backbone, torch.randn(2, 1, 64, 200), 5)
    assert backbone.layer_dims == (64, 128, 256, 512, 32)
    assert all(layer.shape[1] == 2 for layer in states.layers)  # one token per 0.96 s example
