"""LoRA on the chosen text blocks only: where the adapters sit, what trains, and the merged checkpoint
(a plain CLIPModel with the base's keys that reproduces the adapted model)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from transformers import CLIPModel, TrainerCallback

import train
from conftest import tiny_clip_config
from modeling_omninegclip import OmniNegCLIPModel
from train_helpers import (  # noqa: F401  (single_thread: an autouse fixture)
    capture_trainers,
    color_rows,
    save_dataset,
    save_tiny_clip,
    single_thread,
    train_flags,
    weights,
)

ATTENTION = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"}
MLP = {"mlp.fc1", "mlp.fc2"}
LAYER = re.compile(r"^base_model\.model\.(\w+)\.encoder\.layers\.(\d+)\.(.+)\.lora_A$")


def adapted_modules(peft_model) -> set[tuple[str, int, str]]:
    """(tower, block, linear layer) of every LoRA adapter, read from the module names."""
    found = set()
    for name, _ in peft_model.named_modules():
        if name.endswith(".lora_A"):
            match = LAYER.match(name)
            assert match, f"adapter outside an encoder block: {name}"
            found.add((match[1], int(match[2]), match[3]))
    return found


@pytest.mark.parametrize("target, layers", [("attention", ATTENTION), ("mlp", MLP), ("all", ATTENTION | MLP)])
def test_adapters_sit_only_on_the_chosen_text_blocks(target, layers):
    model = OmniNegCLIPModel(tiny_clip_config())  # the vision tower has encoder.layers.0/1 too
    lora = train.LoraArguments(lora_r=4, lora_target=target)
    trainable = train.OmniNegArguments(text_blocks="0,2").trainable_config(lora=True)
    peft_model, settings = train.add_lora(model, trainable, lora)
    assert adapted_modules(peft_model) == {("text_model", block, layer) for block in (0, 2) for layer in layers}
    assert settings["text_blocks"] == [0, 2] and settings["r"] == 4 and settings["alpha"] == 8.0
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    # Under LoRA the embeddings, final norm, projection and logit scale keep their flags' defaults (off).
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)


def test_lora_with_extras_the_user_asked_for():
    model = OmniNegCLIPModel(tiny_clip_config())
    omni = train.OmniNegArguments(front_blocks=1, train_logit_scale=True, train_text_projection=True)
    peft_model, _ = train.add_lora(model, omni.trainable_config(lora=True), train.LoraArguments(lora_r=2))
    extras = {name for name, param in peft_model.named_parameters() if param.requires_grad and ".lora_" not in name}
    assert extras == {"base_model.model.logit_scale", "base_model.model.text_projection.weight"}


class ProbeOutputs(TrainerCallback):
    """The adapted (unmerged) model at the end of training: its adapters, and its logits on fixed inputs."""

    def __init__(self, inputs):
        self.inputs, self.logits, self.adapters = inputs, None, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.adapters = adapted_modules(model)
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.inputs, return_loss=False).logits_per_image


def test_merged_lora_checkpoint_is_plain_clip_and_reproduces_the_adapted_model(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(16))
    images = [Image.new("RGB", (32, 32), color) for color in ((220, 30, 30), (40, 60, 220))]
    inputs = dict(processor(text=["a red square", "a picture with no red square"], images=images,
                            return_tensors="pt", padding=True))
    probe = ProbeOutputs(inputs)
    capture_trainers(monkeypatch, probe)
    out = tmp_path / "out"
    train.main(train_flags(model_dir, data, out, lora_r=4, lora_target="attention", front_blocks=2,
                           learning_rate=5e-2, max_steps=3))
    assert probe.adapters == {("text_model", block, layer) for block in (0, 1) for layer in ATTENTION}

    base, merged = weights(model_dir), weights(out)
    assert merged.keys() == base.keys()  # no lora_A / lora_B / base_layer keys
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    assert changed == {f"text_model.encoder.layers.{block}.{layer}.weight" for block in (0, 1) for layer in ATTENTION}

    loaded = CLIPModel.from_pretrained(out).eval()
    with torch.no_grad():
        logits = loaded(**inputs).logits_per_image
    torch.testing.assert_close(logits, probe.logits, rtol=1e-5, atol=1e-5)

    settings = json.loads((out / "omninegclip_config.json").read_text())
    assert settings["lora"]["r"] == 4 and settings["lora"]["target"] == "attention"
    assert settings["lora"]["text_blocks"] == [0, 1] and settings["lora"]["merged"] is True
    assert re.fullmatch(settings["lora"]["target_modules"], "text_model.encoder.layers.1.self_attn.q_proj")
    assert not re.fullmatch(settings["lora"]["target_modules"], "vision_model.encoder.layers.1.self_attn.q_proj")
    assert settings["trainable"]["train_token_embedding"] is False
    assert "LoRA r=4 on their attention layers" in (out / "README.md").read_text()
