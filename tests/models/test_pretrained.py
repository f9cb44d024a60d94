"""Weights registry: download once with checksum checks (against a local HTTP server), offline
errors, stem adaptation, state-dict key/shape round trips in the published layouts of PANNs
and VGGish (with a functional reference forward pinning layer orientation and flatten order),
and YAML front ends equal to the registry's input contracts."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.nn import functional as F

from audioml.config import CONFIG_DIR
from audioml.models.backbones.ast import AudioSpectrogramTransformer
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.backbones.imagenet import ImageNetCNN
from audioml.models.backbones.panns import Cnn14
from audioml.models.backbones.vggish import VGGish
from audioml.models.classifier import AudioClassifier
from audioml.models.pretrained import (
    PRETRAINED_CFGS,
    PretrainedCfg,
    adapt_input_conv,
    download_weights,
    get_pretrained_cfg,
    load_pretrained,
    weights_folder,
)
from audioml.run.fit.compose import build_model


@pytest.fixture()
def http_server(tmp_path: Path):
    """Serve ``tmp_path/served`` on 127.0.0.1; yields ``(folder, base_url, request_log)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def _record(url: str, filename: str = "weights.pt", **changes) -> PretrainedCfg:
    fields = dict(name="test", url=url, filename=filename, sha256=None, sample_rate=16000, num_classes=0,
                  classifier=None)
    return PretrainedCfg(**{**fields, **changes})


def test_download_once_then_offline(http_server, tmp_path: Path) -> None:
    served, base, requests = http_server
    payload = b"pretend weights" * 1000
    (served / "w.pt").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    cfg = _record(f"{base}/w.pt", "w.pt", sha256=digest)
    cache = tmp_path / "cache"
    path = download_weights(cfg, cache)
    assert path == cache / "w.pt" and path.read_bytes() == payload and len(requests) == 1
    assert not [p for p in cache.iterdir() if p.name != "w.pt"]  # no temporary file left
    # Present with the right checksum: used with no request, even when the URL is dead.
    assert download_weights(dataclasses.replace(cfg, url="http://127.0.0.1:9/w.pt"), cache) == path
    assert len(requests) == 1


def test_checksum_mismatch_is_refused(http_server, tmp_path: Path) -> None:
    served, base, _ = http_server
    (served / "w.pt").write_bytes(b"other bytes")
    cfg = _record(f"{base}/w.pt", "w.pt", sha256="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        download_weights(cfg, tmp_path / "a")
    assert not (tmp_path / "a" / "w.pt").exists()  # nothing published
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "w.pt").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="Delete it"):
        download_weights(dataclasses.replace(cfg, sha256=None, hash_prefix="10086976"), tmp_path / "b")


def test_offline_without_file_names_file_url_and_folder(tmp_path: Path) -> None:
    cfg = _record("http://127.0.0.1:9/missing.pt", "missing.pt")
    with pytest.raises(FileNotFoundError) as error:
        download_weights(cfg, tmp_path / "weights", timeout=5)
    message = str(error.value)
    assert "missing.pt" in message and cfg.url in message and str(tmp_path / "weights") in message


def test_weights_folder_defaults_to_torch_hub() -> None:
    assert weights_folder(None) == Path(torch.hub.get_dir()) / "checkpoints"
    assert weights_folder("~/w") == Path("~/w").expanduser()
    with pytest.raises(KeyError, match="efficientat_mn04_as"):
        get_pretrained_cfg("nope")


def test_adapt_input_conv() -> None:
    weight = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_input_conv(weight, 1), weight.sum(dim=1, keepdim=True))
    assert adapt_input_conv(weight, 3) is weight
    five = adapt_input_conv(weight, 5)
    assert five.shape == (8, 5, 3, 3) and torch.allclose(five[:, 3], weight[:, 0] * 3 / 5)


def test_one_channel_stem_is_adapted_from_rgb_weights(tmp_path: Path) -> None:
    import timm

    rgb = timm.create_model("resnet18", pretrained=False, num_classes=10)
    torch.save(rgb.state_dict(), tmp_path / "resnet18.pth")
    cfg = dataclasses.replace(PRETRAINED_CFGS["timm_inception_v3_tv_in1k"], name="resnet18_test",
                              filename="resnet18.pth", url="http://127.0.0.1:9/resnet18.pth", first_conv="model.conv1")
    grey = ImageNetCNN("resnet18", image_size=32, in_chans=1)
    load_pretrained(grey, cfg, tmp_path)
    assert torch.allclose(grey.model.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(grey.model.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    load_pretrained(grey, cfg, tmp_path, num_classes=4)  # head replacement
    assert grey(torch.randn(2, 1, 32, 40)).shape == (2, 4)


# ------------------------------------------------------------------------------ PANNs CNN14
PANNS_CHANNELS = (64, 128, 256, 512, 1024, 2048)


def panns_published_state(channels=PANNS_CHANNELS, n_mels: int = 64, classes: int = 527,
                          n_fft: int = 1024) -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of the Zenodo Cnn14 checkpoints (published
    shapes with the default ``channels``)."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return 0.05 * torch.randn(*shape, generator=generator)

    state = {"spectrogram_extractor.stft.conv_real.weight": rand(n_fft // 2 + 1, 1, n_fft),
             "spectrogram_extractor.stft.conv_imag.weight": rand(n_fft // 2 + 1, 1, n_fft),
             "logmel_extractor.melW": rand(n_fft // 2 + 1, n_mels)}

    def batch_norm(prefix: str, size: int) -> None:
        state.update({f"{prefix}.weight": 1 + rand(size), f"{prefix}.bias": rand(size),
                      f"{prefix}.running_mean": rand(size), f"{prefix}.running_var": 1 + rand(size).abs(),
                      f"{prefix}.num_batches_tracked": torch.tensor(1000)})

    batch_norm("bn0", n_mels)
    width = 1
    for index, out_channels in enumerate(channels, start=1):
        state[f"conv_block{index}.conv1.weight"] = rand(out_channels, width, 3, 3)
        state[f"conv_block{index}.conv2.weight"] = rand(out_channels, out_channels, 3, 3)
        batch_norm(f"conv_block{index}.bn1", out_channels)
        batch_norm(f"conv_block{index}.bn2", out_channels)
        width = out_channels
    state.update({"fc1.weight": rand(width, width), "fc1.bias": rand(width),
                  "fc_audioset.weight": rand(classes, width), "fc_audioset.bias": rand(classes)})
    return state


def panns_reference_logits(state: dict[str, torch.Tensor], logmel: torch.Tensor) -> torch.Tensor:
    """Published CNN14 forward (eval) on ``(batch, 1, time, mel)``, written from the paper's code
    layout with functional ops: bn0 over mel, blocks on (time, mel), mean over mel, max + mean
    over time, fc1 + ReLU, fc_audioset."""
    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)

    x = bn(logmel.transpose(1, 3), "bn0").transpose(1, 3)
    for index in range(1, 7):
        p = f"conv_block{index}"
        x = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], padding=1), f"{p}.bn1"))
        x = F.relu(bn(F.conv2d(x, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2"))
        x = F.avg_pool2d(x, 2) if index < 6 else x
    x = x.mean(dim=3)
    x = x.amax(dim=2) + x.mean(dim=2)
    x = F.relu(F.linear(x, state["fc1.weight"], state["fc1.bias"]))
    return F.linear(x, state["fc_audioset.weight"], state["fc_audioset.bias"])


def test_panns_checkpoint_round_trip(tmp_path: Path) -> None:
    published = panns_published_state()
    torch.save({"model": published, "iteration": 10}, tmp_path / "Cnn14_mAP=0.431.pth")
    model = Cnn14(pretrained=True, weights="panns_cnn14", weights_dir=str(tmp_path)).eval()
    own = model.state_dict()
    expected = {k.replace("fc_audioset.", "head.fc."): v for k, v in published.items()
                if not k.startswith(("spectrogram_extractor.", "logmel_extractor."))}
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert own[key].shape == value.shape and torch.equal(own[key], value), key
    assert model.num_features == 2048
    logmel = torch.randn(2, 1, 64, 100)            # (batch, 1, mel, frames), our layout
    with torch.no_grad():
        ours = model(logmel)
        reference = panns_reference_logits(published, logmel.transpose(2, 3))
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_panns_missing_key_is_refused(tmp_path: Path) -> None:
    narrow = (8, 8, 16, 16, 32, 32)
    published = panns_published_state(narrow)
    del published["conv_block3.bn1.running_var"]
    torch.save({"model": published}, tmp_path / "Cnn14_16k_mAP=0.438.pth")
    with pytest.raises(RuntimeError, match="conv_block3.bn1.running_var"):
        Cnn14(channels=narrow, pretrained=True, weights="panns_cnn14_16k", weights_dir=str(tmp_path))
    with pytest.raises(ValueError, match="conv_block1.conv1.weight"):  # wrong widths: shapes named
        Cnn14(channels=(16, 8, 16, 16, 32, 32), pretrained=True, weights="panns_cnn14_16k", weights_dir=str(tmp_path))


# --------------------------------------------------------------------------------- VGGish
def vggish_published_state() -> dict[str, torch.Tensor]:
    """Random tensors under the key names and shapes of torchvggish's vggish-10086976.pth."""
    generator = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    for index, (out_c, in_c) in {0: (64, 1), 3: (128, 64), 6: (256, 128), 8: (256, 256), 11: (512, 256),
                                 13: (512, 512)}.items():
        state[f"features.{index}.weight"] = torch.randn(out_c, in_c, 3, 3, generator=generator) * (2 / (9 * in_c)) ** 0.5
        state[f"features.{index}.bias"] = 0.01 * torch.randn(out_c, generator=generator)
    for index, (out_f, in_f) in {0: (4096, 12288), 2: (4096, 4096), 4: (128, 4096)}.items():
        state[f"embeddings.{index}.weight"] = torch.randn(out_f, in_f, generator=generator) * (2 / in_f) ** 0.5
        state[f"embeddings.{index}.bias"] = 0.01 * torch.randn(out_f, generator=generator)
    return state


def vggish_reference_embeddings(state: dict[str, torch.Tensor], examples: torch.Tensor) -> torch.Tensor:
    """The port's forward on examples ``(n, 1, 96, 64)``: VGG features, transpose to
    (time, mel, channel) order, flatten, three Linear + ReLU."""
    x = examples
    for index in (0, 3, 6, 8, 11, 13):
        x = F.relu(F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
        if index in (0, 3, 8, 13):
            x = F.max_pool2d(x, 2)
    x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous().view(x.shape[0], -1)
    for index in (0, 2, 4):
        x = F.relu(F.linear(x, state[f"embeddings.{index}.weight"], state[f"embeddings.{index}.bias"]))
    return x


def test_vggish_checkpoint_round_trip(tmp_path: Path) -> None:
    published = vggish_published_state()
    torch.save(published, tmp_path / "vggish-test.pth")
    digest = hashlib.sha256((tmp_path / "vggish-test.pth").read_bytes()).hexdigest()
    cfg = dataclasses.replace(PRETRAINED_CFGS["vggish"], filename="vggish-test.pth", hash_prefix=digest[:8])
    model = VGGish(num_classes=4)
    load_pretrained(model, cfg, tmp_path)
    own = model.state_dict()
    assert {k for k in own if not k.startswith("head.")} == set(published)
    for key, value in published.items():
        assert own[key].shape == value.shape and torch.equal(own[key], value), key
    spec = torch.randn(2, 1, 64, 200)               # two whole 96-frame examples per clip
    with torch.no_grad():
        tokens = model.forward_features(spec)
        examples = spec[..., :192].reshape(2, 64, 2, 96).permute(0, 2, 3, 1).reshape(4, 1, 96, 64)
        reference = vggish_reference_embeddings(published, examples).reshape(2, 2, 128)
    assert tokens.shape == (2, 2, 128) and model.num_features == 128
    assert torch.allclose(tokens, reference, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------- AST and registry
def test_ast_pretrained_offline_names_repo_url_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        AudioSpectrogramTransformer(pretrained=True, weights_dir=str(tmp_path), local_files_only=True)
    message = str(error.value)
    assert "MIT/ast-finetuned-audioset-10-10-0.4593" in message and str(tmp_path) in message
    assert PRETRAINED_CFGS["ast_audioset"].url in message
    with pytest.raises(ValueError, match="pretrained=false"):
        AudioSpectrogramTransformer(pretrained=True, config={"hidden_size": 32})


@pytest.mark.parametrize("model_name", ["efficientat_mn04", "panns_cnn14", "panns_cnn14_16k", "vggish", "ast"])
def test_the_input_contract_is_written_once_in_the_record(model_name: str) -> None:
    """The YAMLs do not copy the contract: the rate comes from the record, the front end is null."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}"])
    record = get_pretrained_cfg(cfg.model.backbone.weights)
    assert cfg.model.sample_rate == record.sample_rate and cfg.model.frontend is None


def test_the_model_builds_its_front_end_from_the_backbone_record() -> None:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model=efficientat_mn04", "model.pretrained=false"])
    model = build_model(cfg, ["a", "b"])
    record = model.backbone.pretrained_cfg
    assert record is get_pretrained_cfg("efficientat_mn04_as")  # attached to the backbone, as timm does
    from_record = record.build_frontend()
    assert type(model.frontend) is type(from_record)
    waveform = 0.1 * torch.randn(2, record.sample_rate, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.frontend(waveform), from_record(waveform))
    with pytest.raises(ValueError, match="take 32000 Hz"):
        AudioClassifier(model.backbone, None, 2, sample_rate=16000)
    with pytest.raises(ValueError, match="model.frontend is null"):
        AudioClassifier(ScratchCNN(), None, 2)


def test_registry_records_are_complete() -> None:
    for name, cfg in PRETRAINED_CFGS.items():
        assert cfg.name == name and cfg.url.startswith("https://") and cfg.license
        assert cfg.filename or cfg.hub_repo
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.url = "x"  # type: ignore[misc]
    assert PRETRAINED_CFGS["efficientat_mn04_as"].sha256.startswith("899a8c62")


def test_a_present_file_is_hashed_once_per_process_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    import audioml.models.pretrained as pretrained

    folder = tmp_path / "weights"
    folder.mkdir()
    payload = b"pretend weights" * 1000
    (folder / "w.pt").write_bytes(payload)
    cfg = _record("http://127.0.0.1:9/w.pt", "w.pt", sha256=hashlib.sha256(payload).hexdigest())
    hashed: list[Path] = []
    real = pretrained.file_sha256
    monkeypatch.setattr(pretrained, "file_sha256", lambda path: hashed.append(Path(path)) or real(path))
    for _ in range(3):  # a sweep builds its model once per job
        assert download_weights(cfg, folder) == folder / "w.pt"
    assert len(hashed) == 1
    (folder / "w.pt").write_bytes(b"x" + payload[1:])  # same size, other bytes, newer mtime
    with pytest.raises(ValueError, match="Delete it"):
        download_weights(cfg, folder)
    assert len(hashed) == 2
