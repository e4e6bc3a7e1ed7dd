"""LoRA on the chosen text blocks only: where the adapters sit, what trains (extras through PEFT's
modules_to_save, so a resumed run ends exactly as an uninterrupted one), the merged checkpoint
(a plain CLIPModel with the base's keys that reproduces the adapted model) and the PEFT adapter beside it
(`--save_adapter`: loads with `PeftModel.from_pretrained` on the base; pushed to its own repo or a subfolder)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from safetensors.torch import load_file
from test_hub import USER, fake_the_hub
from test_train_hardening import CrashAt
from train_helpers import (
    capture_trainers,
    color_rows,
    save_dataset,
    save_tiny_clip,
    train_flags,
    weights,
)  # noqa: F401  (single_thread: an autouse fixture)
from transformers import CLIPModel, TrainerCallback

import omninegclip.training.lora as lora
import train
from modeling_omninegclip import OmniNegCLIPModel
from omninegclip import OmniNegCLIPConfig
from omninegclip.common.cli import UserError, run_cli

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
    trainable = config(text_blocks="0,2", lora_r=4, lora_target=target).trainable_config()
    peft_model, settings = lora.add_lora(model, trainable, r=4, alpha=8.0, target=target)
    assert adapted_modules(peft_model) == {("text_model", block, layer) for block in (0, 2) for layer in layers}
    assert settings["text_blocks"] == [0, 2] and settings["r"] == 4 and settings["alpha"] == 8.0
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    # Under LoRA the embeddings, final norm, projection and logit scale keep their flags' defaults (off).
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)


def test_lora_extras_train_through_modules_to_save_and_the_logit_scale_is_refused():
    model = OmniNegCLIPModel(tiny_clip_config())
    omni = config(front_blocks=1, train_text_projection=True, train_position_embedding=True, lora_r=2)
    peft_model, settings = lora.add_lora(model, omni.trainable_config(), r=2, alpha=4.0)
    assert peft_model.peft_config["default"].modules_to_save == [
        "text_model.embeddings.position_embedding",
        "text_projection",
    ]
    assert settings["modules_to_save"] == ["text_model.embeddings.position_embedding", "text_projection"]
    extras = {name for name, param in peft_model.named_parameters() if param.requires_grad and ".lora_" not in name}
    # PEFT trains a copy of each (saved with the adapters); the image tower's position embedding is not one.
    assert extras == {
        "base_model.model.text_model.embeddings.position_embedding.modules_to_save.default.weight",
        "base_model.model.text_projection.modules_to_save.default.weight",
    }
    omni = config(front_blocks=1, train_vision_tower=True, lora_r=2)
    peft_model, settings = lora.add_lora(OmniNegCLIPModel(tiny_clip_config()), omni.trainable_config(), r=2, alpha=4.0)
    assert settings["modules_to_save"] == ["vision_model", "visual_projection"]
    vision = {name for name, param in peft_model.named_parameters() if param.requires_grad and ".lora_" not in name}
    assert "base_model.model.vision_model.modules_to_save.default.embeddings.patch_embedding.weight" in vision
    assert all(".modules_to_save.default." in name for name in vision)
    with pytest.raises(UserError, match="--train_logit_scale does not work with --lora_r: .*bare parameter"):
        config(front_blocks=1, train_logit_scale=True, lora_r=2)  # refused by the config, before anything slow
    trainable = config(front_blocks=1, train_logit_scale=False, lora_r=2).trainable_config()
    trainable.train_logit_scale = True  # and by add_lora itself
    with pytest.raises(UserError, match="--train_logit_scale does not work with --lora_r: .*bare parameter"):
        lora.add_lora(OmniNegCLIPModel(tiny_clip_config()), trainable, r=2, alpha=4.0)


def config(**settings) -> OmniNegCLIPConfig:
    return OmniNegCLIPConfig(output_dir="unused", report_to="none", use_cpu=True, **settings)


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
    inputs = dict(
        processor(
            text=["a red square", "a picture with no red square"], images=images, return_tensors="pt", padding=True
        )
    )
    probe = ProbeOutputs(inputs)
    capture_trainers(monkeypatch, probe)
    out = tmp_path / "out"
    train.main(
        train_flags(
            model_dir, data, out, lora_r=4, lora_target="attention", front_blocks=2, learning_rate=5e-2, max_steps=3
        )
    )
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

    settings = json.loads((out / "config.json").read_text())["omninegclip"]
    assert settings["lora"]["r"] == 4 and settings["lora"]["target"] == "attention"
    assert settings["lora"]["text_blocks"] == [0, 1] and settings["lora"]["merged"] is True
    assert re.fullmatch(settings["lora"]["target_modules"], "text_model.encoder.layers.1.self_attn.q_proj")
    assert not re.fullmatch(settings["lora"]["target_modules"], "vision_model.encoder.layers.1.self_attn.q_proj")
    assert settings["trainable"]["train_token_embedding"] is False
    assert "LoRA r=4 on their attention layers" in (out / "README.md").read_text()


# ---- resume, and the adapter itself --------------------------------------------------------------

EXTRAS = dict(
    lora_r=2,
    lora_target="all",
    front_blocks=2,
    train_token_embedding="true",
    train_position_embedding="true",
    train_final_layer_norm="true",
    train_text_projection="true",
)


def test_resumed_lora_run_with_extras_ends_exactly_like_an_uninterrupted_one(tmp_path, processor, monkeypatch):
    """LoRA plus every extra part that can train with it; checkpoint at step 3, killed before step 5,
    resumed: every tensor of the merged checkpoint equals the uninterrupted run's."""
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8, presence=True, absence=2))
    settings = dict(
        EXTRAS,
        max_steps=6,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=3,
        learning_rate=2e-2,
        lr_scheduler_type="cosine",
        warmup_steps=1,
    )
    train.main(train_flags(model, data, tmp_path / "whole", **settings))

    crash = CrashAt(5)
    capture_trainers(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_flags(model, data, tmp_path / "resumed", **settings))
    checkpoint = tmp_path / "resumed" / "checkpoint-3"
    saved = set(load_file(str(checkpoint / "adapter_model.safetensors")))
    assert {
        "base_model.model.text_projection.weight",
        "base_model.model.text_model.embeddings.token_embedding.weight",
    } <= saved
    crash.step = -1
    train.main(train_flags(model, data, tmp_path / "resumed", resume_from_checkpoint="latest", **settings))

    whole, resumed, base = weights(tmp_path / "whole"), weights(tmp_path / "resumed"), weights(model)
    assert whole.keys() == resumed.keys() == base.keys()
    assert [name for name in whole if not torch.equal(whole[name], resumed[name])] == []
    changed = {name for name in base if not torch.equal(base[name], whole[name])}
    assert {
        "text_projection.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
        "text_model.encoder.layers.1.mlp.fc2.weight",
    } <= changed
    assert "logit_scale" not in changed and not any(
        name.startswith(("vision_model.", "text_model.encoder.layers.2.")) for name in changed
    )


def _probe_inputs(processor) -> dict:
    images = [Image.new("RGB", (32, 32), color) for color in ((220, 30, 30), (40, 60, 220))]
    return dict(
        processor(
            text=["a red square", "a picture with no red square", "a blue square"],
            images=images,
            return_tensors="pt",
            padding=True,
        )
    )


def _assert_adapter_reproduces_merged(base_dir, adapter_dir, merged_dir, inputs, **load) -> None:
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(CLIPModel.from_pretrained(base_dir), adapter_dir, **load).eval()
    merged = CLIPModel.from_pretrained(merged_dir).eval()
    with torch.no_grad():
        expected, got = merged(**inputs), adapted(**inputs)
        plain = CLIPModel.from_pretrained(base_dir).eval()(**inputs)
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain.text_embeds, expected.text_embeds, atol=1e-4)  # training changed it


def test_save_adapter_loads_on_the_base_with_peft_and_matches_the_merged_checkpoint(tmp_path, processor):
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8), color_rows(6, offset=8))
    out = tmp_path / "out"
    train.main(
        train_flags(
            model,
            data,
            out,
            save_adapter="true",
            learning_rate=5e-2,
            card_base_model="someone/tiny-clip",
            eval_strategy="steps",
            eval_steps=2,
            **EXTRAS,
        )
    )
    # The PEFT-wrapped model evaluates like the full one: loss and negation accuracies.
    assert {"eval_loss", "eval_presence_accuracy", "eval_absence_choice_accuracy"} <= json.loads(
        (out / "eval_results.json").read_text()
    ).keys()
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (
        config["peft_type"] == "LORA" and config["r"] == 2 and config["base_model_name_or_path"] == "someone/tiny-clip"
    )
    assert set(config["modules_to_save"]) == {
        "text_model.embeddings.token_embedding",
        "text_model.embeddings.position_embedding",
        "text_model.final_layer_norm",
        "text_projection",
    }
    assert weights(out).keys() == weights(model).keys()  # the merged checkpoint beside it stays plain CLIP
    _assert_adapter_reproduces_merged(model, adapter, out, _probe_inputs(processor))


@pytest.mark.parametrize("own_repo", [False, True])
def test_pushed_adapter_goes_to_its_own_repo_or_the_model_repos_subfolder(tmp_path, processor, monkeypatch, own_repo):
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8))
    adapter_flags = dict(hub_adapter_id="tiny-omninegclip-lora") if own_repo else dict(save_adapter="true")
    train.main(
        train_flags(
            model,
            data,
            tmp_path / "out",
            push_to_hub="true",
            hub_model_id="tiny-omninegclip",
            learning_rate=5e-2,
            **adapter_flags,
            **EXTRAS,
        )
    )
    # With LoRA the repo's root gets the merged weights once, at the end (--hub_strategy every_save
    # pushes nothing before).
    (model_commit,) = [commit for commit in hub.commits if commit.repo_id == f"{USER}/tiny-omninegclip"]
    assert model_commit.message == "End of training"
    assert model_commit.repo_id == f"{USER}/tiny-omninegclip"
    model_files = {
        path.relative_to(model_commit.folder).as_posix() for path in model_commit.folder.rglob("*") if path.is_file()
    }
    if own_repo:
        assert len(hub.commits) == 2
        adapter_commit = hub.commits[1]
        assert adapter_commit.repo_id == f"{USER}/tiny-omninegclip-lora"
        adapter_dir = adapter_commit.folder
        assert not any(name.startswith("adapter_") for name in model_files)  # never next to the merged weights
    else:
        assert len(hub.commits) == 1
        adapter_dir = model_commit.folder / "adapter"
        assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= model_files
        # As a user loads it from the model repo: the repo, subfolder="adapter".
        _assert_adapter_reproduces_merged(
            model, model_commit.folder, model_commit.folder, _probe_inputs(processor), subfolder="adapter"
        )
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in adapter_dir.iterdir()}
    _assert_adapter_reproduces_merged(model, adapter_dir, model_commit.folder, _probe_inputs(processor))


def test_adapter_flags_are_checked_before_anything_slow(tmp_path, processor, capsys):
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = tmp_path / "no-data-needed"
    for overrides, phrase in (
        (dict(save_adapter="true"), "--save_adapter/--hub_adapter_id need --lora_r > 0"),
        (
            dict(lora_r=2, hub_adapter_id="someone/x"),
            "--hub_adapter_id names where to push the adapter: it needs --push_to_hub",
        ),
        (dict(lora_r=2, hub_adapter_id="not a repo"), "--hub_adapter_id must be a Hub repo id"),
        (dict(lora_r=2, train_logit_scale="true"), "--train_logit_scale does not work with --lora_r"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(train.main, train_flags(model, data, tmp_path / "out", **overrides))
        assert exit_info.value.code == 2
        assert phrase in capsys.readouterr().err
