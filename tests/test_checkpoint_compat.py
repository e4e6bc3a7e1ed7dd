"""A checkpoint trained here stays plain CLIP for every loader: with the pinned transformers 5.x and
with the oldest version the project supports (5.0.0, installed by `make setup` into
`.venv/transformers-oldest`; 4.x cannot read the processor files that 5.x writes),
`CLIPModel.from_pretrained` and the zero-shot pipeline load it and give the same scores, though its
config.json carries the run's settings (`omninegclip`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from modeling_omninegclip import SETTINGS_KEY, OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig

ROOT = Path(__file__).resolve().parent.parent
OLDEST = ROOT / ".venv" / "transformers-oldest"
OLDEST_VERSION = "5.0.0"
LABELS = ["a red square", "a picture with no red square"]

LOAD = """
import json, sys
import torch, transformers
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, pipeline
folder, image = sys.argv[1], Image.open(sys.argv[2])
model = CLIPModel.from_pretrained(folder).eval()
processor = CLIPProcessor.from_pretrained(folder)
inputs = processor(text=%r, images=image, return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(**inputs).logits_per_image[0].tolist()
answers = pipeline("zero-shot-image-classification", model=folder)(image, candidate_labels=%r)
print(json.dumps({"version": transformers.__version__, "class": type(model).__name__, "logits": logits,
                  "labels": sorted(answer["label"] for answer in answers)}))
""" % (LABELS, LABELS)


@pytest.fixture
def checkpoint(tmp_path, tiny_clip, processor) -> Path:
    """A checkpoint as the Trainer saves it: OmniNegCLIPModel.save_pretrained with the run's settings."""
    model = OmniNegCLIPModel(tiny_clip.config, loss_config=OmniNegLossConfig(margin=0.7, lambda_choice=1.0))
    model.load_state_dict(tiny_clip.state_dict())
    model.trainable_config = TrainableConfig(front_blocks=2)
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    Image.new("RGB", (30, 30), (220, 30, 30)).save(tmp_path / "red.png")
    return folder


def load_with(folder: Path, pythonpath: str | None) -> dict:
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    environment.pop("PYTHONPATH", None)
    if pythonpath:
        environment["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(folder), str(folder.parent / "red.png")],
        cwd=folder.parent,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_settings_are_in_config_json_and_the_architecture_is_clips(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    assert config[SETTINGS_KEY]["loss"]["margin"] == 0.7 and config[SETTINGS_KEY]["trainable"]["front_blocks"] == 2
    assert not (checkpoint / "omninegclip_config.json").exists()  # no side file
    restored = OmniNegCLIPModel.from_pretrained(checkpoint)
    assert restored.loss_config == OmniNegLossConfig(margin=0.7, lambda_choice=1.0)
    assert "omni-negclip" in restored.model_tags


def test_the_pinned_and_the_oldest_transformers_load_it_as_plain_clip(checkpoint):
    if not (OLDEST / "transformers").is_dir():
        pytest.skip(f"transformers {OLDEST_VERSION} is not installed in {OLDEST} (make setup installs it)")
    pinned, oldest = load_with(checkpoint, None), load_with(checkpoint, str(OLDEST))
    assert pinned["version"] != OLDEST_VERSION and oldest["version"] == OLDEST_VERSION
    for loaded in (pinned, oldest):
        assert loaded["class"] == "CLIPModel" and loaded["labels"] == sorted(LABELS)
    torch.testing.assert_close(torch.tensor(oldest["logits"]), torch.tensor(pinned["logits"]), rtol=1e-4, atol=1e-4)
    model, processor = CLIPModel.from_pretrained(checkpoint).eval(), CLIPProcessor.from_pretrained(checkpoint)
    inputs = processor(
        text=LABELS, images=Image.open(checkpoint.parent / "red.png"), return_tensors="pt", padding=True
    )
    with torch.no_grad():
        here = model(**inputs).logits_per_image[0]
    torch.testing.assert_close(torch.tensor(pinned["logits"]), here, rtol=1e-5, atol=1e-5)
