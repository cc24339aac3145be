"""The real-COCO configs in experiments/coco/: headers, validation, presets (no training)."""

import glob
import os
import re

import keras_hub
import pytest

from kerasmlic.models.encoders import encoder_normalization
from kerasmlic.models.registry import build_model
from kerasmlic.training.config import load_config, model_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "experiments", "coco", "*.yaml")))
HUB_HANDLES = {preset["kaggle_handle"] for preset in keras_hub.models.Backbone.presets.values()}


def test_there_are_coco_configs():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"bce_resnet101_448.yaml", "seq2seq_attention_resnet101_448.yaml"} <= names


def _header(path):
    lines = open(path).read().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    return "\n".join(header)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_header_states_command_hardware_and_unmeasured_figure(path):
    header = _header(path)
    rel = os.path.relpath(path, ROOT)
    # big_vision style: the command, the hardware it was sized for, the literature figure.
    assert f"kerasmlic train {rel} --data data/coco-shards" in header
    assert "Sized for:" in header
    assert "Literature (NOT MEASURED HERE)" in header


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_and_names_a_real_preset(path):
    config = load_config(path)
    encoder = config["model"]["encoder"]
    assert encoder.startswith("hub:")
    assert encoder_normalization(encoder) == "raw"
    # The handle is one keras-hub 0.32 lists (version included), read without a network.
    assert encoder[len("hub:") :] in HUB_HANDLES, encoder
    size = config["data"]["image_size"]
    fixed = re.search(r"patch\d+_(\d+)_", encoder)
    if fixed:  # ViT presets fix the image size their name states
        assert size == int(fixed.group(1))
    assert config["train"]["mixed_precision"] is True


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_model_options_build_with_a_local_encoder(path):
    # Every model option value is accepted by the constructor: the same options on
    # the tiny encoder (the preset itself would need a download).
    config = load_config(path)
    options = {**model_settings(config), "encoder": "tiny"}
    model = build_model(config["model"]["name"], num_classes=80, image_size=32, **options)
    assert model.get_config()["num_classes"] == 80
