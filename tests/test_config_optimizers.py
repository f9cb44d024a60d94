"""Model presets take their optimiser and scheduler from the ``optimizer/`` and ``scheduler/``
groups (``- /optimizer/adam@optimizer``), overriding only the learning rate or weight decay: the
composed ``model.optimizer`` / ``model.scheduler`` of every preset are the values below (the ones
each preset spelled inline before), and the command line still changes them."""

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from audioml.config import CONFIG_DIR, compose_config

MODEL_DIR = Path(CONFIG_DIR) / "model"
ADAM, ADAMW = "torch.optim.Adam", "torch.optim.AdamW"
#: preset -> (optimizer class, lr, weight_decay); every preset's scheduler is none (constant rate).
EXPECTED = {
    "ast": (ADAM, 1.0e-5, 0.0), "ast_tiny": (ADAM, 1.0e-3, 0.0), "autoencoder_ffnn": (ADAM, 1.0e-3, 0.0),
    "cnn": (ADAM, 1.0e-3, 0.0), "cnn_deep": (ADAM, 1.0e-3, 0.0), "cnn_image": (ADAM, 1.0e-3, 0.0),
    "cnn_regressor": (ADAM, 1.0e-3, 0.0), "cnn_transformer": (ADAM, 1.0e-3, 0.0),
    "crnn_attention": (ADAM, 1.0e-3, 0.0), "efficientat_mn04": (ADAM, 5.0e-4, 0.0),
    "imagenet_cnn": (ADAM, 1.0e-4, 0.0), "panns_cnn14": (ADAM, 1.0e-4, 0.0), "panns_cnn14_16k": (ADAM, 1.0e-4, 0.0),
    "vggish": (ADAM, 1.0e-4, 0.0), "hf_encoder": (ADAMW, 1.0e-3, 0.01), "clap_htsat_unfused": (ADAMW, 1.0e-3, 0.01),
    "data2vec_audio_base": (ADAMW, 1.0e-3, 0.01), "hubert_base": (ADAMW, 1.0e-3, 0.01),
    "w2v_bert_2": (ADAMW, 1.0e-3, 0.01), "wav2vec2_base": (ADAMW, 1.0e-3, 0.01),
    "wavlm_base_plus": (ADAMW, 1.0e-3, 0.01), "whisper_base_encoder": (ADAMW, 1.0e-3, 0.01),
}
#: Regressors compose with a regression dataset.
DATA = {"crnn_attention": "muse", "cnn_regressor": "muse"}


def _model(name: str, *overrides: str):
    cfg = compose_config([f"model={name}", f"data={DATA.get(name, 'donateacry')}", *overrides,
                          "paths.output_dir=/tmp/audioml-compose", "paths.data_dir=/tmp/data"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def test_every_preset_is_listed():
    assert sorted(EXPECTED) == sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_preset_resolves_to_its_optimizer_and_scheduler(name):
    target, lr, weight_decay = EXPECTED[name]
    model = _model(name)
    assert model["optimizer"] == {"_target_": target, "_partial_": True, "lr": lr, "weight_decay": weight_decay}
    assert model["scheduler"] is None


@pytest.mark.parametrize("name", ["cnn", "efficientat_mn04", "hf_encoder", "crnn_attention"])
def test_the_command_line_still_changes_them(name):
    _, lr, _ = EXPECTED[name]
    assert _model(name, "model.optimizer.lr=0.123")["optimizer"]["lr"] == 0.123
    adamw = _model(name, "optimizer=adamw")["optimizer"]  # the class and its decay; the rate stays the model's
    assert adamw == {"_target_": ADAMW, "_partial_": True, "lr": lr, "weight_decay": 0.01}
    adam = _model(name, "optimizer=adam", "model.optimizer.weight_decay=1e-4")["optimizer"]
    assert adam == {"_target_": ADAM, "_partial_": True, "lr": lr, "weight_decay": 1e-4}
    cosine = _model(name, "scheduler=cosine", "trainer.max_epochs=7")["scheduler"]
    assert cosine["_target_"] == "torch.optim.lr_scheduler.CosineAnnealingLR" and cosine["T_max"] == 7


def test_no_preset_spells_an_optimizer_class_inline():
    """The classes come from the groups; a preset sets only what differs (its own two-stage
    ``pretrain_optimizer`` aside)."""
    for path in MODEL_DIR.glob("*.yaml"):
        node = yaml.safe_load(path.read_text())
        assert "_target_" not in (node.get("optimizer") or {}), path.name
        assert "scheduler" not in node, path.name
