"""The notebook of docs/trainer.md, run exactly as written: the model and data names point to a tiny
CLIP and a tiny dataset, and the Hub is a fake (tests/test_hub.py). Then what a user meets: a
trained plain-CLIP repo with the project's card, the negation metrics, the run's settings in
config.json; and the Trainer refusing plain `TrainingArguments` with a message saying what to use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from test_hub import USER, fake_the_hub
from train_helpers import color_rows, save_dataset, save_tiny_clip, single_thread, weights  # noqa: F401  (single_thread: autouse)
from transformers import CLIPModel, TrainingArguments

from modeling_omninegclip import OmniNegCLIPModel
from omninegclip import OmniNegCLIPConfig, OmniNegCLIPTrainer

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "trainer.md"


def notebook_code() -> str:
    (code, *_) = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    return code


def test_the_notebook_trains_evaluates_and_pushes(tmp_path, processor, monkeypatch):
    code = notebook_code()
    statements = [
        line for line in code.splitlines() if line.strip() and not line.startswith(("from ", "import ", " ", ")"))
    ]
    assert len(statements) <= 10, statements  # a notebook cell of about ten lines, not a program
    model_dir = save_tiny_clip(
        tmp_path / "clip", processor, text_layers=12
    )  # ViT-B/32's text depth: front_blocks=6 fits
    data = save_dataset(tmp_path / "coco-neg", color_rows(16), color_rows(8, offset=3))
    hub = fake_the_hub(monkeypatch, tmp_path / "hub")
    monkeypatch.chdir(tmp_path)
    for name, local in (("openai/clip-vit-base-patch32", model_dir), ("data/coco-neg", data)):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(str(local)))
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102  (the page's own code)

    trainer, metrics, config = namespace["trainer"], namespace["metrics"], namespace["config"]
    assert isinstance(config, OmniNegCLIPConfig) and trainer.state.global_step == 3  # 16 rows, one batch, 3 epochs
    assert {"eval_loss", "eval_presence_accuracy", "eval_absence_choice_accuracy"} <= set(metrics)
    # --hub_strategy checkpoint: each epoch's weights at the root and the checkpoint in last-checkpoint/, then the end.
    messages = [commit.message for commit in hub.commits]
    assert messages[-1] == "End of training" and "Training in progress, epoch 1, checkpoint" in messages
    repo = hub.repos[(f"{USER}/omninegclip-vit-b32", "main")]
    assert {"config.json", "model.safetensors", "README.md", "last-checkpoint/trainer_state.json"} <= set(repo)
    final = hub.commits[-1].folder
    clip = CLIPModel.from_pretrained(final)
    assert all(torch.equal(tensor, weights(final)[name]) for name, tensor in clip.state_dict().items())
    assert not torch.equal(
        weights(final)["text_model.encoder.layers.0.mlp.fc1.weight"],
        weights(model_dir)["text_model.encoder.layers.0.mlp.fc1.weight"],
    )
    card = ModelCard.load(final / "README.md")
    assert card.data.pipeline_tag == "zero-shot-image-classification" and card.data.library_name == "transformers"
    assert {"omni-negclip", "negation"} <= set(card.data.tags) and card.data.to_dict()["widget"]
    assert "trained from scratch" not in card.text and "generated_from_trainer" not in (card.data.tags or [])
    settings = json.loads((final / "config.json").read_text())["omninegclip"]
    assert settings["loss"]["lambda_choice"] == 1.0 and settings["trainable"]["train_token_embedding"] is False
    assert OmniNegCLIPModel.from_pretrained(final).loss_config.lambda_choice == 1.0  # the settings come back


def test_settings_travel_in_config_json_and_plain_clip_ignores_them(tmp_path, processor):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    model = OmniNegCLIPModel.from_pretrained(model_dir)
    config = OmniNegCLIPConfig(
        output_dir=str(tmp_path / "out"),
        lambda_abs=0.5,
        margin=0.7,
        front_blocks=1,
        max_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
    )
    trainer = OmniNegCLIPTrainer(
        model, config, train_dataset=save_and_load(tmp_path, color_rows(8)), processing_class=processor
    )
    trainer.train()
    trainer.save_final_model()
    restored = OmniNegCLIPModel.from_pretrained(config.output_dir)
    assert (restored.loss_config.lambda_abs, restored.loss_config.margin) == (0.5, 0.7)
    assert restored.trainable_config.front_blocks == 1
    plain = CLIPModel.from_pretrained(config.output_dir)  # as the pipeline and the widget load it
    assert type(plain) is CLIPModel and plain.config.architectures == ["CLIPModel"]


def save_and_load(tmp_path: Path, rows: list[dict]):
    import datasets

    return datasets.load_from_disk(str(save_dataset(tmp_path / "rows", rows)))["train"]


def test_plain_training_arguments_get_one_paragraph_saying_what_to_use(tmp_path, processor):
    model = OmniNegCLIPModel.from_pretrained(save_tiny_clip(tmp_path / "clip", processor))
    with pytest.raises(
        TypeError, match=r"needs an OmniNegCLIPConfig, not a plain TrainingArguments.*OmniNegCLIPConfig\(\*\*"
    ):
        OmniNegCLIPTrainer(model, TrainingArguments(output_dir=str(tmp_path / "out")), processing_class=processor)
    with pytest.raises(Exception, match="remove_unused_columns=True would drop the negation columns"):
        OmniNegCLIPConfig(output_dir=str(tmp_path / "out"), remove_unused_columns=True)
