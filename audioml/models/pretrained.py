"""Pretrained checkpoints: one frozen record per file (where it is, its checksum, and the input
contract it was trained with), download-once with checksum check, and ``load_pretrained``.

A record's ``frontend`` is the front end that reproduces the checkpoint's training input; the
model YAML declares the same module (``tests/test_pretrained.py`` checks they agree) and its
``sample_rate``, to which the data side resamples.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from audioml.files import atomic_path, file_digest

log = logging.getLogger(__name__)

__all__ = ["PretrainedCfg", "PRETRAINED_CFGS", "get_pretrained_cfg", "weights_folder", "download_weights",
           "file_sha256", "read_state_dict", "adapt_input_conv", "load_pretrained"]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class PretrainedCfg:
    """Everything needed to fetch one checkpoint and feed it what it was trained on.

    Attributes:
        name: registry key (``model.backbone.weights``).
        url: where the file is published.
        filename: file name inside the weights folder; ``None`` for checkpoints that a library
            fetches itself (Hugging Face ``hub_repo``).
        sha256: full hex digest, or ``None`` when the publisher gives none.
        hash_prefix: leading hex digits of the sha256 (torch hub file-name convention), checked
            when ``sha256`` is unknown.
        sample_rate: input rate (Hz) of the front end; ``None`` for image models.
        frontend_target, frontend_args: the front-end class (dotted path) and its arguments.
        num_classes: outputs of the published classifier (0: the checkpoint has none).
        classifier: key prefix of the published classifier in the checkpoint (``None``: none).
        state_dict_key: key of the state dict inside the file (``None``: the file is one).
        ignore_prefixes: checkpoint keys to drop (front-end buffers baked into the checkpoint).
        rename: ``(old_prefix, new_prefix)`` pairs mapping checkpoint keys to backbone keys.
        first_conv: backbone key of the stem convolution, adapted when input channels differ.
        hub_repo: Hugging Face repository for ``from_pretrained`` loaders.
        extractor_target, extractor_args: the input contract that a transformers encoder runs
            inside its backbone (``audioml.features.hf_extractors``: normalisation, maximum
            length), where the valid length of each clip is known; its ``frontend`` then only
            passes waveforms through.
        license: license and citation of the weights.
    """

    name: str
    url: str
    filename: str | None
    sha256: str | None
    sample_rate: int | None
    num_classes: int
    classifier: str | None
    frontend_target: str | None = None
    frontend_args: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    hash_prefix: str | None = None
    state_dict_key: str | None = None
    ignore_prefixes: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    first_conv: str | None = None
    hub_repo: str | None = None
    extractor_target: str | None = None
    extractor_args: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    license: str = ""

    def frontend_config(self) -> dict[str, Any]:
        """The front end as a config (``_target_`` and arguments), e.g. for a checkpoint record."""
        if not self.frontend_target:
            raise ValueError(f"pretrained weights {self.name!r} declare no audio front end")
        return {"_target_": self.frontend_target, **dict(self.frontend_args)}

    def build_frontend(self) -> nn.Module:
        """Instantiate the front end this checkpoint expects (``ValueError`` when it has none)."""
        if not self.frontend_target:
            raise ValueError(f"pretrained weights {self.name!r} declare no audio front end")
        return _build(self.frontend_target, self.frontend_args)

    def build_extractor(self) -> nn.Module:
        """Instantiate the encoder's input contract (``ValueError`` when it has none)."""
        if not self.extractor_target:
            raise ValueError(f"pretrained weights {self.name!r} declare no encoder input contract")
        return _build(self.extractor_target, self.extractor_args)


def _build(target: str, arguments: Mapping[str, Any]) -> nn.Module:
    module_name, _, class_name = target.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**arguments)


_EFFICIENTAT_MEL = _frozen(dict(sample_rate=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
                                f_min=0.0, f_max=15000.0, preemphasis=0.97, log_offset=1e-5, shift=4.5,
                                scale=5.0))
_PANNS_32K_MEL = _frozen(dict(sample_rate=32000, n_fft=1024, hop_length=320, n_mels=64, f_min=50.0,
                              f_max=14000.0))
_PANNS_16K_MEL = _frozen(dict(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, f_min=50.0,
                              f_max=8000.0))
_PANNS_IGNORE = ("spectrogram_extractor.", "logmel_extractor.")
_PANNS_LICENSE = "MIT; Kong et al., PANNs, IEEE/ACM TASLP 2020 (Zenodo record 3987831)"
_TIMM_IGNORE = ("pre_logits.", "head.", "fc.", "AuxLogits.")
_HF_EXTRACTORS = "audioml.features.hf_extractors."


def _hf_encoder(name: str, hub_repo: str, sample_rate: int, extractor: str, license: str,
                **contract: Any) -> PretrainedCfg:
    """The record of a transformers audio encoder (``audioml.models.backbones.hf_encoder``):
    waveforms pass through its front end, ``extractor`` (a class of ``hf_extractors``) with
    ``contract`` runs inside the backbone; the hub caches its files (no checksum of ours)."""
    return PretrainedCfg(
        name=name, url=f"https://huggingface.co/{hub_repo}", filename=None, sha256=None, hub_repo=hub_repo,
        sample_rate=sample_rate, num_classes=0, classifier=None,
        frontend_target=_HF_EXTRACTORS + "EncoderWaveform", frontend_args=_frozen(dict(sample_rate=sample_rate)),
        extractor_target=_HF_EXTRACTORS + extractor,
        extractor_args=_frozen(dict(sampling_rate=sample_rate, **contract)), license=license)


# Normalisation as each encoder was pre-trained: fairseq's task.normalize (false for wav2vec 2.0
# base, HuBERT base and WavLM base+, whose group-normalised first convolution makes the input's
# scale and offset irrelevant; true for data2vec); attention masks only for the encoders trained
# with padding masks (a group-normalised feature encoder was not: transformers' own advice).
_HF_ENCODERS = (
    _hf_encoder("wavlm_base_plus", "microsoft/wavlm-base-plus", 16000, "WaveformNormalize",
                "MIT; Chen et al., WavLM, IEEE JSTSP 2022 (94k h, base+ 95M parameters)",
                do_normalize=False, padding_value=0.0, return_attention_mask=True, max_length_s=None),
    _hf_encoder("hubert_base", "facebook/hubert-base-ls960", 16000, "WaveformNormalize",
                "Apache-2.0; Hsu et al., HuBERT, IEEE/ACM TASLP 2021 (LibriSpeech 960 h, 95M parameters)",
                do_normalize=False, padding_value=0.0, return_attention_mask=False, max_length_s=None),
    _hf_encoder("wav2vec2_base", "facebook/wav2vec2-base", 16000, "WaveformNormalize",
                "Apache-2.0; Baevski et al., wav2vec 2.0, NeurIPS 2020 (LibriSpeech 960 h, 95M parameters)",
                do_normalize=True, padding_value=0.0, return_attention_mask=False, max_length_s=None),
    _hf_encoder("data2vec_audio_base", "facebook/data2vec-audio-base", 16000, "WaveformNormalize",
                "Apache-2.0; Baevski et al., data2vec, ICML 2022 (LibriSpeech 960 h, 94M parameters)",
                do_normalize=True, padding_value=0.0, return_attention_mask=True, max_length_s=None),
    _hf_encoder("w2v_bert_2", "facebook/w2v-bert-2.0", 16000, "SeamlessFbank",
                "MIT; Barrault et al., Seamless, 2023 (4.5M h, 600M parameters)",
                num_mel_bins=80, stride=2, padding_value=1.0),
    _hf_encoder("whisper_base", "openai/whisper-base", 16000, "WhisperLogMel",
                "Apache-2.0; Radford et al., Robust Speech Recognition via Large-Scale Weak Supervision, "
                "ICML 2023 (680k h; encoder 20M of 74M parameters)",
                feature_size=80, n_fft=400, hop_length=160, chunk_length=30),
    _hf_encoder("clap_htsat_unfused", "laion/clap-htsat-unfused", 48000, "ClapLogMel",
                "Apache-2.0; Wu et al., Large-Scale Contrastive Language-Audio Pretraining, ICASSP 2023 "
                "(LAION-Audio-630K; HTSAT audio tower 31M parameters)",
                feature_size=64, fft_window_size=1024, hop_length=480, max_length_s=10, frequency_min=50.0,
                frequency_max=14000.0, padding="repeatpad"),
)

PRETRAINED_CFGS: Mapping[str, PretrainedCfg] = MappingProxyType({cfg.name: cfg for cfg in (
    PretrainedCfg(
        name="efficientat_mn04_as",
        url="https://github.com/fschmid56/EfficientAT/releases/download/v0.0.1/mn04_as_mAP_432.pt",
        filename="mn04_as_mAP_432.pt",
        sha256="899a8c6217063f6941793102a2780b3dd788ab11fce468d9cf5f0577c453321c",
        sample_rate=32000, num_classes=527, classifier="classifier",
        frontend_target="audioml.features.kaldi_mel.KaldiMelSpectrogram", frontend_args=_EFFICIENTAT_MEL,
        rename=(("classifier.2.", "head.hidden."), ("classifier.5.", "head.fc.")),
        first_conv="features.0.0",
        license="MIT; Schmid et al., Efficient Large-Scale Audio Tagging via Transformer-to-CNN "
                "Knowledge Distillation, ICASSP 2023 (AudioSet mAP 0.432)"),
    PretrainedCfg(
        name="panns_cnn14",
        url="https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth",
        filename="Cnn14_mAP=0.431.pth", sha256=None,  # Zenodo publishes an MD5 only
        sample_rate=32000, num_classes=527, classifier="fc_audioset",
        frontend_target="audioml.features.panns_logmel.PannsLogMel", frontend_args=_PANNS_32K_MEL,
        state_dict_key="model", ignore_prefixes=_PANNS_IGNORE, rename=(("fc_audioset.", "head.fc."),),
        first_conv="conv_block1.conv1", license=_PANNS_LICENSE + " (AudioSet mAP 0.431)"),
    PretrainedCfg(
        name="panns_cnn14_16k",
        url="https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
        filename="Cnn14_16k_mAP=0.438.pth", sha256=None,
        sample_rate=16000, num_classes=527, classifier="fc_audioset",
        frontend_target="audioml.features.panns_logmel.PannsLogMel", frontend_args=_PANNS_16K_MEL,
        state_dict_key="model", ignore_prefixes=_PANNS_IGNORE, rename=(("fc_audioset.", "head.fc."),),
        first_conv="conv_block1.conv1", license=_PANNS_LICENSE + " (AudioSet mAP 0.438)"),
    PretrainedCfg(
        name="vggish",
        url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        filename="vggish-10086976.pth", sha256=None, hash_prefix="10086976",
        sample_rate=16000, num_classes=0, classifier=None,
        frontend_target="audioml.features.vggish_frontend.VGGishLogMel",
        frontend_args=_frozen(dict(sample_rate=16000)), first_conv="features.0",
        license="Apache-2.0; Hershey et al., CNN Architectures for Large-Scale Audio Classification, "
                "ICASSP 2017 (PyTorch port by H. Taylor)"),
    PretrainedCfg(
        name="ast_audioset",
        url="https://huggingface.co/MIT/ast-finetuned-audioset-10-10-0.4593",
        filename=None, sha256=None, hub_repo="MIT/ast-finetuned-audioset-10-10-0.4593",
        sample_rate=16000, num_classes=527, classifier="classifier",
        frontend_target="audioml.features.kaldi_fbank.KaldiFbank",
        frontend_args=_frozen(dict(sample_rate=16000, n_mels=128, target_frames=1024, mean=-4.2677393,
                                   std=9.1379948)),
        license="BSD-3-Clause; Gong et al., AST: Audio Spectrogram Transformer, Interspeech 2021 "
                "(AudioSet mAP 0.459)"),
    PretrainedCfg(
        name="timm_vgg16_tv_in1k",
        url="https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/pytorch_model.bin",
        filename="timm_vgg16_tv_in1k.bin", sha256=None, sample_rate=None, num_classes=1000,
        classifier="head", ignore_prefixes=_TIMM_IGNORE, rename=(("", "model."),),
        first_conv="model.features.0", license="BSD-3-Clause (torchvision ImageNet-1k weights)"),
    PretrainedCfg(
        name="timm_inception_v3_tv_in1k",
        url="https://huggingface.co/timm/inception_v3.tv_in1k/resolve/main/pytorch_model.bin",
        filename="timm_inception_v3_tv_in1k.bin", sha256=None, sample_rate=None, num_classes=1000,
        classifier="fc", ignore_prefixes=_TIMM_IGNORE, rename=(("", "model."),),
        first_conv="model.Conv2d_1a_3x3.conv", license="BSD-3-Clause (torchvision ImageNet-1k weights)"),
    *_HF_ENCODERS,
)})


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The record called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return PRETRAINED_CFGS[name]
    except KeyError:
        raise KeyError(f"unknown pretrained weights {name!r}; known: {sorted(PRETRAINED_CFGS)}") from None


def weights_folder(weights_dir: str | Path | None) -> Path:
    """``weights_dir`` (``paths.weights_dir``), or the torch hub cache's ``checkpoints`` folder."""
    if weights_dir:
        return Path(weights_dir).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (``audioml.files.file_digest``)."""
    return file_digest(path)


#: sha256 of weights files checked in this process, by (path, inode, size, mtime): a sweep builds
#: its model once per job, and hashing AST's 350 MB file took a second or two each time.
_checked_digests: dict[tuple[str, int, int, int], str] = {}


def _present_file_sha256(path: Path) -> str:
    """``file_sha256(path)``, computed once per process for an unchanged file."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _checked_digests:
        _checked_digests[key] = file_sha256(path)
    return _checked_digests[key]


def _check_digest(cfg: PretrainedCfg, path: Path, digest: str) -> None:
    expected = cfg.sha256 or cfg.hash_prefix
    if expected and not digest.startswith(expected.lower()):
        raise ValueError(f"{path} has sha256 {digest}, but the weights {cfg.name!r} published at {cfg.url} "
                         f"have sha256 {expected}{'...' if not cfg.sha256 else ''}: the file is corrupt or "
                         f"another file. Delete it and run again to download it.")


def download_weights(cfg: PretrainedCfg, weights_dir: str | Path | None = None, timeout: float = 60.0) -> Path:
    """Path of ``cfg``'s file in the weights folder, downloading it once if absent.

    A file already present is checked against the record's checksum and used without any
    network access. A download goes to a temporary file in the same folder and is renamed into
    place only after its checksum matched.

    Raises:
        FileNotFoundError: the file is absent and cannot be downloaded (offline, HTTP error);
            the message names the file, the URL and the folder to put it in.
        ValueError: checksum mismatch, or a record without a downloadable file.
    """
    if not cfg.filename:
        raise ValueError(f"pretrained weights {cfg.name!r} are fetched by their library from {cfg.url}, "
                         "not by download_weights")
    folder = weights_folder(weights_dir)
    path = folder / cfg.filename
    if path.is_file():
        if cfg.sha256 or cfg.hash_prefix:
            _check_digest(cfg, path, _present_file_sha256(path))
        return path
    manual = (f"Download {cfg.url} by hand into {folder}/{cfg.filename}, or point paths.weights_dir "
              "(AUDIOML_WEIGHTS_DIR) at a folder that holds it; model.pretrained=false trains from "
              "random initialisation instead.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FileNotFoundError(f"weights file {cfg.filename} is not in {folder}, and the folder cannot be "
                                f"created ({error}). {manual}") from error
    log.info("downloading %s from %s into %s", cfg.name, cfg.url, folder)
    digest = hashlib.sha256()
    try:
        with atomic_path(path, suffix=".part") as temporary:
            with open(temporary, "wb") as out, urllib.request.urlopen(cfg.url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    digest.update(chunk)
                    out.write(chunk)
            _check_digest(cfg, path, digest.hexdigest())  # raises before the file is published
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise FileNotFoundError(f"weights file {cfg.filename} is not in {folder} and could not be downloaded "
                                f"from {cfg.url} ({error}). {manual}") from error
    if not cfg.sha256:
        log.warning("%s: the publisher gives no sha256; the downloaded file has sha256 %s", cfg.name,
                    digest.hexdigest())
    return path


def read_state_dict(cfg: PretrainedCfg, path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file with ``weights_only=True`` and map it to backbone key names:
    unwrap ``state_dict_key``, drop ``ignore_prefixes``, apply ``rename`` (first match)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if cfg.state_dict_key is not None:
        if not isinstance(checkpoint, Mapping) or cfg.state_dict_key not in checkpoint:
            raise ValueError(f"{path}: expected a dict with key {cfg.state_dict_key!r} (the layout of "
                             f"{cfg.url}); is it the right file?")
        checkpoint = checkpoint[cfg.state_dict_key]
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        if any(key.startswith(prefix) for prefix in cfg.ignore_prefixes):
            continue
        for old, new in cfg.rename:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        state[key] = value
    return state


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Stem kernel ``(out, c, kh, kw)`` -> ``(out, in_channels, kh, kw)``.

    One channel: sum over the pretrained channels (a grey image through an RGB stem gives the
    same response). More channels: repeat cyclically and rescale by ``c / in_channels``.
    """
    channels = weight.shape[1]
    if channels == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (channels / in_channels)


def load_registered_weights(backbone: nn.Module, weights: str | None,
                            weights_dir: str | Path | None = None) -> None:
    """``load_pretrained`` by registry name: what a backbone does when ``pretrained=true``.

    Raises ``ValueError`` when ``weights`` is empty and ``KeyError`` (from
    ``get_pretrained_cfg``) for an unknown name.
    """
    if not weights:
        raise ValueError("pretrained=true needs model.backbone.weights (a registry name)")
    load_pretrained(backbone, get_pretrained_cfg(weights), weights_dir)


def load_pretrained(backbone: nn.Module, cfg: PretrainedCfg, weights_dir: str | Path | None = None,
                    strict: bool = True, num_classes: int | None = None,
                    head: Callable[[int, int], nn.Module] | None = None) -> None:
    """Load ``cfg``'s checkpoint into ``backbone`` (in place).

    Steps: ``download_weights``; ``read_state_dict``; adapt the stem (``cfg.first_conv``) to the
    backbone's input channels; load the published classifier only when the backbone's current
    head has exactly its keys and shapes (otherwise the classifier is dropped); then, when
    ``num_classes`` is given, replace the classifier with ``head(num_features, num_classes)``.

    Raises ``RuntimeError`` (``strict``) naming missing and unexpected keys, and ``ValueError``
    for shape mismatches; download errors as ``download_weights``.
    """
    path = download_weights(cfg, weights_dir)
    state = read_state_dict(cfg, path)
    own = backbone.state_dict()
    if cfg.first_conv and f"{cfg.first_conv}.weight" in state and f"{cfg.first_conv}.weight" in own:
        key = f"{cfg.first_conv}.weight"
        state[key] = adapt_input_conv(state[key], own[key].shape[1])
    # The published classifier (cfg.classifier, cfg.num_classes outputs) is kept only when the
    # backbone's head is that classifier: same outputs, same keys and shapes.
    own_head = {k: v.shape for k, v in own.items() if k.startswith("head.")}
    file_head = {k: v.shape for k, v in state.items() if k.startswith("head.")}
    keep_head = (bool(cfg.classifier) and cfg.num_classes > 0 and bool(file_head) and own_head == file_head
                 and getattr(backbone, "num_classes", cfg.num_classes) == cfg.num_classes)
    if not keep_head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        if cfg.classifier:
            log.info("%s: its classifier %r (%d classes) is left out; the model's head starts fresh",
                     cfg.name, cfg.classifier, cfg.num_classes)
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path} ({cfg.name}) does not fit {type(backbone).__name__}: " + "; ".join(mismatched[:8]))
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if not keep_head:
        missing = [k for k in missing if not k.startswith("head.")]
    if strict and (missing or unexpected):
        raise RuntimeError(f"{path} ({cfg.name}) does not match {type(backbone).__name__}: "
                           f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                           f"unexpected {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    log.info("loaded %s from %s (%d tensors%s)", cfg.name, path, len(state),
             ", with its classifier" if keep_head else "")
    if num_classes is not None:
        backbone.reset_classifier(num_classes, head)
