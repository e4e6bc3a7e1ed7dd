"""Shared fixtures: a tiny real CLIP (hidden 32, 5 text layers so "only the front N train" is
observable, image 30, patch 2) with the exact openai tokenizer built offline. No test touches the network."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from omninegclip.tokenization import build_clip_tokenizer

TINY_TEXT_LAYERS = 5

# Tiny models gain nothing from a second thread, and on a busy 2-core machine thread
# oversubscription makes them several times slower.
torch.set_num_threads(1)


def tiny_clip_config(text_layers: int = TINY_TEXT_LAYERS) -> CLIPConfig:
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=text_layers,
            num_attention_heads=4, max_position_embeddings=77,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            image_size=30, patch_size=2, hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4,
        ),
        projection_dim=16,
    )


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
