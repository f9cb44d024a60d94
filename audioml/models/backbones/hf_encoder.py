"""Audio encoders that ``transformers`` implements natively, as backbones (``model=hf_encoder``):
Wav2Vec2, HuBERT, WavLM, Data2VecAudio, Wav2Vec2-BERT, Whisper's encoder and CLAP's audio tower.

The backbone takes the waveform ``(batch, time)`` at the encoder's rate and runs the encoder's own
input contract (``audioml.features.hf_extractors``) in its forward, with each clip's valid length
taken from the zero-padded waveform itself (``valid_span``), so every path that carries only
waveforms gets it (docs/guide/encoders.md#padding). Only the model types of ``FAMILIES`` are
accepted, their classes from ``transformers``' own mappings (no ``trust_remote_code``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audioml.features.hf_extractors import (
    ClapLogMel,
    EncoderExtractor,
    SeamlessFbank,
    WaveformNormalize,
    WhisperLogMel,
    left_aligned,
    length_mask,
    valid_span,
)
from audioml.models.backbones.base import Backbone, LayerStates, masked_mean

log = logging.getLogger(__name__)

__all__ = ["HFAudioEncoder", "FAMILIES", "conv_output_lengths", "plain_config"]


@dataclass(frozen=True)
class Family:
    """How audioml runs one transformers model type.

    Attributes:
        extractor: the input contract's module class.
        hf_extractor: the Hugging Face feature extractor class name it reproduces.
        layers: attribute path of the transformer blocks inside the encoder module.
        feature_encoder: parameter-name prefix of the convolutional feature encoder (``None``: none).
    """

    extractor: type[EncoderExtractor]
    hf_extractor: str
    layers: str
    feature_encoder: str | None = None


_WAVEFORM = Family(WaveformNormalize, "Wav2Vec2FeatureExtractor", "encoder.layers", "feature_extractor")
#: The accepted model types (``config.model_type``) and how each runs.
FAMILIES: Mapping[str, Family] = {
    "wav2vec2": _WAVEFORM, "hubert": _WAVEFORM, "wavlm": _WAVEFORM, "data2vec-audio": _WAVEFORM,
    "wav2vec2-bert": Family(SeamlessFbank, "SeamlessM4TFeatureExtractor", "encoder.layers"),
    "whisper": Family(WhisperLogMel, "WhisperFeatureExtractor", "layers"),
    "clap_audio_model": Family(ClapLogMel, "ClapFeatureExtractor", "audio_encoder.layers"),
}
#: Hub model types whose audio encoder is one part: the type that part is recorded as.
_TOWERS = {"clap": "clap_audio_model"}
#: Config keys that describe a file or a run, not the architecture (left out of records).
_NOT_ARCHITECTURE = {"transformers_version", "architectures", "auto_map", "id2label", "label2id", "dtype",
                     "torch_dtype", "model_type"}
_EXTRACTOR_ARGUMENTS = {
    WaveformNormalize: ("sampling_rate", "do_normalize", "padding_value", "return_attention_mask"),
    WhisperLogMel: ("sampling_rate", "feature_size", "n_fft", "hop_length", "chunk_length"),
    ClapLogMel: ("sampling_rate", "feature_size", "fft_window_size", "hop_length", "max_length_s", "frequency_min",
                 "frequency_max", "padding"),
    SeamlessFbank: ("sampling_rate", "num_mel_bins", "stride", "padding_value"),
}


def conv_output_lengths(lengths: torch.Tensor, kernels: list[int], strides: list[int]) -> torch.Tensor:
    """Frames after a stack of unpadded 1-D convolutions: ``floor((n - kernel) / stride) + 1``
    per layer (the wav2vec2 feature encoder)."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=1)


def plain_config(config) -> dict[str, Any]:
    """A transformers config as plain data for a checkpoint record: ``to_dict()`` without the
    keys that describe files or runs (``_name_or_path``, versions, label maps, ``auto_map``),
    tuples as lists."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {key: plain(value) for key, value in config.to_dict().items()
            if not key.startswith("_") and key not in _NOT_ARCHITECTURE}


def _model_class(config) -> type[nn.Module]:
    """The model class transformers maps this config class to (``MODEL_MAPPING``: its own code,
    never a class a file names)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    return MODEL_MAPPING[type(config)]


def _without_layer_drop(config, asked: Mapping[str, Any]) -> None:
    """Turn off layer drop (training skips whole blocks at random, ``layerdrop`` defaults to 0.1
    in the wav2vec2 family): the layer interface reads every block's output, so each must run."""
    for key in ("layerdrop", "encoder_layerdrop"):
        if float(asked.get(key) or 0.0) > 0:
            raise ValueError(f"model.backbone.config.{key}={asked[key]}: layer drop skips blocks whose outputs the "
                             "layer-weighted head reads; leave it at 0")
        if hasattr(config, key):
            setattr(config, key, 0.0)


def _source_kind(name: str) -> str:
    """``"folder"`` for an existing directory, ``"missing folder"`` for a path that is not one,
    else ``"hub"`` (an ``owner/name`` repository id)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return "folder"
    if name.startswith(("/", "./", "../", "~")) or path.exists():
        return "missing folder"
    return "hub"


def _fetch_hint(name: str, weights_dir: str | None) -> str:
    folder = weights_dir or "~/.cache/huggingface/hub"
    return (f"Fetch it once where the hub is reachable (hf download {name} --cache-dir {folder}) and copy "
            f"that folder here, or point model.backbone.name at a folder written by save_pretrained")


class HFAudioEncoder(Backbone):
    """A transformers audio encoder: waveform ``(batch, time)`` at ``extractor.sampling_rate``
    -> tokens ``(batch, tokens, hidden)`` of its last layer, padded tokens set to zero.

    ``forward_layers`` gives every hidden layer, input side first (the feature projection /
    embedding output, then each transformer block; CLAP: the patch embedding and each Swin
    stage, the last one normalised), with the padding ``mask`` where tokens keep the time axis.
    ``pool`` averages the non-zero (real) tokens.

    Args:
        name: Hugging Face hub id (``microsoft/wavlm-base-plus``) or a folder written by
            ``save_pretrained``; ``None`` with ``weights``: the record's ``hub_repo``.
        pretrained: load the weights of ``name``; false: random initialisation from
            ``model_type`` and ``config`` (what a checkpoint record rebuilds).
        weights: registry record of a preset (``audioml.models.pretrained``): its input
            contract (rate, normalisation, maximum length) is the extractor used.
        weights_dir: download folder (``paths.weights_dir``; ``None``: the Hugging Face cache).
        local_files_only: never contact the hub.
        model_type: one of ``FAMILIES`` (needed without ``pretrained``).
        config: transformers config arguments: with ``pretrained``, overrides of the loaded
            config that keep its shapes (dropout, ``mask_time_prob``); without, the architecture
            on top of the type's defaults. Layer drop stays off (every block's output is read).
        extractor: the input contract module; ``None``: the record's, else the one in
            ``name``'s ``preprocessor_config.json``, else the type's defaults (with a warning).
        sample_rate: the model's rate (``model.sample_rate``), checked against the extractor's.
        freeze_feature_encoder: keep the convolutional feature encoder (wav2vec2 family)
            frozen whatever ``freeze`` says (the usual fine-tuning recipe).
        gradient_checkpointing: recompute each block's activations in the backward pass.
        layer_lr_decay: layer-wise learning-rate decay (``optimizer_groups``): block ``i`` of
            ``L`` (1 = lowest) learns at ``lr * decay ** (L + 1 - i)``; 1.0: one learning rate.
        num_classes: outputs of the initial linear head (the task module replaces it).

    Raises ``ValueError`` for a model type outside ``FAMILIES`` (or a fused CLAP), a rate or
    a length the encoder cannot take, and ``FileNotFoundError`` naming the hub id and how to
    fetch it when weights cannot be obtained.
    """

    takes_waveform = True

    def __init__(self, name: str | None = None, pretrained: bool = True, weights: str | None = None,
                 weights_dir: str | None = None, local_files_only: bool = False, model_type: str | None = None,
                 config: Mapping[str, Any] | None = None, extractor: EncoderExtractor | None = None,
                 sample_rate: int | None = None, freeze_feature_encoder: bool = True,
                 gradient_checkpointing: bool = False, layer_lr_decay: float = 1.0, num_classes: int = 2) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        overrides = dict(config or {})
        if not 0.0 < layer_lr_decay <= 1.0:
            raise ValueError(f"model.backbone.layer_lr_decay={layer_lr_decay}: use a factor in (0, 1]")
        hub_extractor = None
        if pretrained:
            source = name or (self.pretrained_cfg.hub_repo if self.pretrained_cfg is not None else None)
            if not source:
                raise ValueError("model=hf_encoder needs model.backbone.name=<hub id or save_pretrained folder>, "
                                 "e.g. model.backbone.name=microsoft/wavlm-base-plus")
            self.model_type, self.model = self._from_pretrained(source, overrides, weights_dir, local_files_only)
            hub_extractor = self._read_extractor(source, weights_dir, local_files_only)
        else:
            if model_type not in FAMILIES:
                raise ValueError(f"model.backbone.model_type={model_type!r}: without pretrained weights give one of "
                                 f"{sorted(FAMILIES)} (and model.backbone.config for its size)")
            self.model_type, self.model = model_type, self._from_config(model_type, overrides)
        self.family = FAMILIES[self.model_type]
        self._source = name  # where it came from (messages only: same weights elsewhere, same cache entry)
        self.extractor = self._contract(extractor, hub_extractor)
        self._check_input(sample_rate)
        self.freeze_feature_encoder = bool(freeze_feature_encoder)
        self.layer_lr_decay = float(layer_lr_decay)
        self._layer_dims = self._dims()
        self.num_features = self._layer_dims[-1]
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reset_classifier(num_classes)
        if self.freeze_feature_encoder:
            self.freeze("none")

    # ------------------------------------------------------------------------------- building
    @staticmethod
    def _config_class(model_type: str):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        return CONFIG_MAPPING[model_type]

    @classmethod
    def _from_config(cls, model_type: str, config: dict[str, Any]) -> nn.Module:
        """The encoder of ``model_type`` built from config arguments (random weights; no file read)."""
        hf_config = cls._config_class(model_type)(**config)
        _without_layer_drop(hf_config, config)
        if model_type == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return WhisperEncoder(hf_config)
        if model_type == "clap_audio_model":
            if hf_config.enable_fusion:
                raise ValueError("a fused CLAP (enable_fusion=true) takes four crops per clip; use an unfused one "
                                 "(laion/clap-htsat-unfused)")
            from transformers import ClapAudioModel

            return ClapAudioModel(hf_config)
        return _model_class(hf_config)(hf_config)

    @staticmethod
    def _from_pretrained(source: str, overrides: dict[str, Any], weights_dir: str | None,
                         local_files_only: bool) -> tuple[str, nn.Module]:
        from transformers import AutoConfig

        kind = _source_kind(source)
        if kind == "missing folder":
            raise FileNotFoundError(f"model.backbone.name={source}: no such folder (a folder written by "
                                    "save_pretrained, or a hub id such as microsoft/wavlm-base-plus)")
        options = dict(cache_dir=weights_dir, local_files_only=local_files_only, trust_remote_code=False)
        try:
            hub_config = AutoConfig.from_pretrained(source, **options)
        except ValueError as error:  # a model type transformers does not implement
            raise ValueError(f"{source}: transformers does not implement this architecture "
                             f"({str(error).splitlines()[0]}); audioml runs only the audio encoders transformers "
                             f"implements natively: {sorted(FAMILIES)}, never code from the hub "
                             "(trust_remote_code)") from None
        except OSError as error:
            raise FileNotFoundError(f"{source}: its config could not be read from {weights_dir or 'the hub cache'} "
                                    f"nor downloaded ({str(error).splitlines()[0]}). {_fetch_hint(source, weights_dir)}"
                                    ) from None
        hub_type = hub_config.model_type
        model_type = _TOWERS.get(hub_type, hub_type)
        if model_type not in FAMILIES:
            raise ValueError(f"{source} is a {hub_type!r} model; model=hf_encoder takes the audio encoders "
                             f"{sorted(FAMILIES | {'clap': None})} (AST: model=ast)")
        if getattr(hub_config, "auto_map", None):
            log.info("%s names remote code (auto_map); it is ignored: transformers' own %s classes are used",
                     source, hub_type)
        target = hub_config.audio_config if hub_type == "clap" else hub_config
        if hub_type == "clap" and target.enable_fusion:
            raise ValueError(f"{source} is a fused CLAP (enable_fusion=true), which takes four crops per clip; use "
                             "an unfused one (laion/clap-htsat-unfused)")
        for key, value in overrides.items():
            if not hasattr(target, key):
                raise ValueError(f"model.backbone.config.{key}: {type(target).__name__} has no such setting")
            setattr(target, key, value)
        _without_layer_drop(target, overrides)
        try:
            model = _model_class(hub_config).from_pretrained(source, config=hub_config, dtype=torch.float32, **options)
        except OSError as error:
            raise FileNotFoundError(f"{source}: the weights could not be read from {weights_dir or 'the hub cache'} "
                                    f"nor downloaded ({str(error).splitlines()[0]}). {_fetch_hint(source, weights_dir)}"
                                    ) from None
        encoder = model.get_encoder() if hub_type == "whisper" else model.audio_model if hub_type == "clap" else model
        # where the files were is not part of the model: the same weights elsewhere share cache entries
        from transformers import PreTrainedModel

        for module in encoder.modules():
            if isinstance(module, PreTrainedModel):
                module.name_or_path = ""
        return model_type, encoder

    @staticmethod
    def _read_extractor(source: str, weights_dir: str | None, local_files_only: bool) -> dict[str, Any] | None:
        """``source``'s ``preprocessor_config.json`` as a dict (plain JSON; nothing instantiated),
        or ``None`` when it has none."""
        from transformers.feature_extraction_utils import FeatureExtractionMixin

        try:
            settings, _ = FeatureExtractionMixin.get_feature_extractor_dict(
                source, cache_dir=weights_dir, local_files_only=local_files_only)
        except OSError:
            return None
        return settings

    def _contract(self, extractor: EncoderExtractor | None, hub: dict[str, Any] | None) -> EncoderExtractor:
        """The input contract: the given module, the registry record's, the hub's, or defaults."""
        expected = self.family.extractor
        if hub is not None and hub.get("feature_extractor_type") not in (None, self.family.hf_extractor):
            raise ValueError(f"{self._source or 'the model'} comes with a {hub.get('feature_extractor_type')}, but a "
                             f"{self.model_type} encoder takes a {self.family.hf_extractor}")
        from_hub = None if hub is None else expected(**{key: hub[key] for key in _EXTRACTOR_ARGUMENTS[expected]
                                                       if key in hub})
        record = self.pretrained_cfg
        if extractor is None and record is not None and record.extractor_target:
            extractor = record.build_extractor()
            if from_hub is not None and from_hub.config() != extractor.config():
                differing = {k: (v, from_hub.config().get(k)) for k, v in extractor.config().items()
                             if from_hub.config().get(k) != v}
                log.warning("%s: the registry record %r keeps its input contract; the downloaded "
                            "preprocessor_config.json differs in %s (record, file)", record.hub_repo, record.name,
                            differing)
        if extractor is None:
            extractor = from_hub
        if extractor is None:
            extractor = expected()
            log.warning("%s has no preprocessor_config.json: using %s defaults (%s); set model.backbone.extractor "
                        "if the encoder was trained otherwise", self._source or self.model_type, expected.__name__,
                        extractor.extra_repr())
        if not isinstance(extractor, expected):
            raise ValueError(f"model.backbone.extractor is a {type(extractor).__name__}; a {self.model_type} "
                             f"encoder takes a {expected.__name__}")
        return extractor

    def _check_input(self, sample_rate: int | None) -> None:
        rate = self.extractor.sampling_rate
        if sample_rate is not None and int(sample_rate) != rate:
            raise ValueError(f"model.sample_rate={sample_rate}, but this {self.model_type} encoder takes {rate} Hz "
                             f"audio: set model.sample_rate={rate}")
        config = self.model.config
        if self.model_type == "whisper":
            frames = self.extractor.n_samples // self.extractor.hop_length
            if frames != 2 * config.max_source_positions:
                raise ValueError(f"the Whisper encoder takes {2 * config.max_source_positions} mel frames and the "
                                 f"extractor makes {frames}: set model.backbone.extractor.chunk_length to "
                                 f"{2 * config.max_source_positions * self.extractor.hop_length // rate} s")
        if self.model_type == "clap_audio_model" and self.extractor.config()["feature_size"] != config.num_mel_bins:
            raise ValueError(f"the CLAP audio tower takes {config.num_mel_bins} mel bands, the extractor makes "
                             f"{self.extractor.config()['feature_size']}")

    def _dims(self) -> tuple[int, ...]:
        config = self.model.config
        if self.model_type == "clap_audio_model":
            stages = len(config.depths)
            return tuple(config.patch_embeds_hidden_size * 2 ** min(i, stages - 1) for i in range(stages + 1))
        width = config.d_model if self.model_type == "whisper" else config.hidden_size
        return (int(width),) * (self.num_blocks + 1)

    def rebuild_config(self) -> dict[str, Any]:
        config = self.model.config
        return {"pretrained": False, "model_type": self.model_type, "config": plain_config(config),
                "extractor": self.extractor.config()}

    # -------------------------------------------------------------------------------- running
    def _encode(self, waveform: torch.Tensor) -> LayerStates:
        if waveform.dim() != 2:
            raise ValueError(f"{type(self).__name__} takes waveforms (batch, time), got {tuple(waveform.shape)}: "
                             "its front end must pass them through (model.frontend)")
        start, lengths = valid_span(waveform)
        values, lengths = self.extractor(left_aligned(waveform, start), lengths)
        token_lengths = None
        if self.family is _WAVEFORM:
            attention = length_mask(lengths, values.shape[1]).long() if self.extractor.return_attention_mask else None
            hidden = self.model(values, attention_mask=attention, output_hidden_states=True).hidden_states
            config = self.model.config
            token_lengths = conv_output_lengths(lengths, list(config.conv_kernel), list(config.conv_stride))
        elif self.model_type == "wav2vec2-bert":
            attention = length_mask(lengths, values.shape[1]).long()
            hidden = self.model(values, attention_mask=attention, output_hidden_states=True).hidden_states
            token_lengths = lengths
        elif self.model_type == "whisper":
            hidden = self.model(values, output_hidden_states=True).hidden_states
            token_lengths = torch.div(lengths + 1, 2, rounding_mode="floor")  # conv2 has stride 2
        else:
            out = self.model(values, output_hidden_states=True)
            hidden = (*out.hidden_states[:-1], out.last_hidden_state)
            hidden = tuple(h.flatten(2).transpose(1, 2) for h in hidden)  # (batch, C, H, W) -> (batch, H*W, C)
        if token_lengths is None:
            return LayerStates(tuple(hidden))
        mask = length_mask(token_lengths.clamp(min=1), hidden[0].shape[1])
        keep = mask.unsqueeze(-1).to(hidden[0].dtype)
        return LayerStates(tuple(h * keep for h in hidden), mask)

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._encode(waveform).layers[-1]

    def forward_layers(self, waveform: torch.Tensor) -> LayerStates:
        return self._encode(waveform)

    @property
    def layer_dims(self) -> tuple[int, ...]:
        return self._layer_dims

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # padded tokens are zero (forward_features): the mean of the others
        return masked_mean(tokens, tokens.abs().amax(dim=-1) > 0)

    # --------------------------------------------------------------------------- fine-tuning
    @property
    def num_blocks(self) -> int:
        """Transformer blocks (Swin stages for CLAP): what ``freeze="top:<n>"`` counts."""
        return len(self.model.get_submodule(self.family.layers))

    def freeze(self, mode: str = "none") -> None:
        """``Backbone.freeze`` plus ``"top:<n>"``: train the top ``n`` blocks, what follows them
        and the head. The convolutional feature encoder stays frozen with
        ``freeze_feature_encoder``. Raises ``ValueError`` for ``n`` outside ``[0, num_blocks]``."""
        if isinstance(mode, str) and mode.startswith("top:"):
            count = mode.partition(":")[2]
            if not count.isdigit() or int(count) > self.num_blocks:
                raise ValueError(f"model.freeze={mode!r}: use top:<n> with n in 0..{self.num_blocks} (the encoder's "
                                 "blocks)")
            top = int(count)
            mode = "all" if top == 0 else f"model.{self.family.layers}.{self.num_blocks - top}"
            super().freeze(mode)
            self.frozen_prefix = f"top:{top}"
        else:
            super().freeze(mode)
        if self.family.feature_encoder:
            feature_encoder = self.model.get_submodule(self.family.feature_encoder)
            if self.freeze_feature_encoder:
                feature_encoder.requires_grad_(False)
            # transformers' feature encoder makes its input require gradients in training unless
            # this flag is off (its own freeze_feature_encoder sets it, but nothing sets it back):
            # a frozen one would back-propagate through 7 convolutions over every sample for nothing
            feature_encoder._requires_grad = any(p.requires_grad for p in feature_encoder.parameters())
        if self.model_type == "whisper":  # Whisper's sinusoidal positions are fixed, as in transformers
            self.model.embed_positions.weight.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> HFAudioEncoder:
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()  # a frozen encoder gives its inference outputs: no dropout, no time masking
        return self

    def optimizer_groups(self) -> list[tuple[float, list[nn.Parameter]]]:
        """Layer-wise learning-rate decay: block ``i`` of ``L`` (1 = lowest) gets
        ``decay ** (L + 1 - i)``, what comes before the blocks ``decay ** (L + 1)``, what follows
        them and the head 1."""
        if self.layer_lr_decay == 1.0:
            return super().optimizer_groups()
        prefix = f"model.{self.family.layers}."
        depth_of_rest, groups = 0, {}
        for name, parameter in self.named_parameters():
            if name.startswith(prefix):
                depth = int(name[len(prefix):].split(".", 1)[0]) + 1
                depth_of_rest = self.num_blocks + 1
            else:
                depth = depth_of_rest if not name.startswith("head.") else self.num_blocks + 1
            if parameter.requires_grad:
                groups.setdefault(depth, []).append(parameter)
        top = self.num_blocks + 1
        return [(self.layer_lr_decay ** (top - depth), params) for depth, params in sorted(groups.items())]
