"""Small randomly initialised transformers audio encoders written with ``save_pretrained``, the
layout a hub download has, so tests load them through ``model.backbone.name=<folder>`` (the hub
is unreachable here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_CONV = dict(conv_dim=[16] * 7, num_conv_pos_embeddings=16,
             num_conv_pos_embedding_groups=2)
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, mask_time_prob=0.0,
              layerdrop=0.0)

#: Config arguments of a tiny model of each type (2 blocks, width 32; the wav2vec2 family keeps the
#: 7-layer feature encoder, 16 channels wide: 320 samples per token, as the real ones).
TINY: dict[str, dict[str, Any]] = {
    # layer-normalised feature encoder, trained with attention masks (the wav2vec2-large kind)
    "wav2vec2": {**_SMALL, **_CONV, "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    # group-normalised feature encoder, no attention mask (the wav2vec2-base kind)
    "wav2vec2-group": {**_SMALL, **_CONV, "feat_extract_norm": "group"},
    "hubert": {**_SMALL, **_CONV, "feat_extract_norm": "layer", "do_stable_layer_norm": True},
    "wavlm": {**_SMALL, **_CONV, "feat_extract_norm": "layer", "do_stable_layer_norm": True, "num_buckets": 32,
              "max_bucket_distance": 100},
    "data2vec-audio": {**_SMALL, **_CONV, "num_conv_pos_embeddings": 5},
    "wav2vec2-bert": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          output_hidden_size=32, conv_depthwise_kernel_size=3, add_adapter=False, mask_time_prob=0.0,
                          layerdrop=0.0, feature_projection_input_dim=160),
    # 1 s of audio: 100 mel frames, 50 positions
    "whisper": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                    decoder_attention_heads=2, decoder_ffn_dim=64, max_source_positions=50, num_mel_bins=16,
                    max_target_positions=16),
    "clap": dict(audio_config=dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
                                   patch_embeds_hidden_size=16, spec_size=64, num_mel_bins=16, window_size=4,
                                   projection_dim=16),
                 text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                  vocab_size=64, max_position_embeddings=32, projection_dim=16),
                 projection_dim=16),
}


def save_encoder(folder: str | Path, model_type: str = "wav2vec2", seed: int = 0, **extractor: Any) -> Path:
    """Write a tiny ``model_type`` model (a ``TINY`` key) and its feature extractor (defaults
    suited to it, updated by ``extractor``) into ``folder`` with ``save_pretrained``."""
    import transformers as T

    folder = Path(folder)
    torch.manual_seed(seed)
    settings = dict(TINY[model_type])
    base_type = model_type.split("-group")[0]
    if base_type == "whisper":
        model = T.WhisperModel(T.WhisperConfig(**settings))
        feature_extractor = T.WhisperFeatureExtractor(**{"feature_size": 16, "chunk_length": 1, **extractor})
    elif base_type == "clap":
        model = T.ClapModel(T.ClapConfig(**settings))
        feature_extractor = T.ClapFeatureExtractor(**{"feature_size": 16, "max_length_s": 1, "frequency_min": 50,
                                                      "frequency_max": 14000, "truncation": "rand_trunc",
                                                      "padding": "repeatpad", **extractor})
    elif base_type == "wav2vec2-bert":
        model = T.Wav2Vec2BertModel(T.Wav2Vec2BertConfig(**settings))
        feature_extractor = T.SeamlessM4TFeatureExtractor(**{"padding_value": 1.0, **extractor})
    else:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        model = T.AutoModel.from_config(CONFIG_MAPPING[base_type](**settings))
        mask = settings.get("feat_extract_norm") == "layer" or base_type == "data2vec-audio"
        feature_extractor = T.Wav2Vec2FeatureExtractor(**{"do_normalize": True, "return_attention_mask": mask,
                                                          **extractor})
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder
