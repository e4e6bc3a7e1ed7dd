"""Shared fixtures: a tiny real CLIP (hidden 32, 5 text layers so "only the front N train" is
observable, image 30, patch 2) with the exact openai tokenizer built offline. No test touches the network."""

from __future__ import annotations

import os
from dataclasses import replace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from omninegclip.common.clip import ClipSize
from omninegclip.common.tokenization import build_clip_tokenizer

# The tests' tiny real CLIP: 5 text layers so that "only the front N train" is observable.
TINY_CLIP = ClipSize(
    text_hidden=32,
    text_layers=5,
    text_heads=4,
    vision_hidden=32,
    vision_layers=2,
    vision_heads=4,
    image_size=30,
    patch_size=2,
    projection_dim=16,
    text_intermediate=37,
    vision_intermediate=37,
)
TINY_TEXT_LAYERS = TINY_CLIP.text_layers

# Tiny models gain nothing from a second thread, and on a busy 2-core machine thread
# oversubscription makes them several times slower.
torch.set_num_threads(1)


def tiny_clip_config(text_layers: int = TINY_TEXT_LAYERS) -> CLIPConfig:
    return replace(TINY_CLIP, text_layers=text_layers).config()


@pytest.fixture(scope="session")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="session")
def processor(tokenizer):
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture
def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    return CLIPModel(tiny_clip_config()).eval()


@pytest.fixture
def tiny_clip_dir(tmp_path, tiny_clip, processor):
    """A Hub-style folder: plain CLIP weights with the processor beside them."""
    path = tmp_path / "tiny-clip"
    tiny_clip.save_pretrained(path)
    processor.save_pretrained(path)
    return path
