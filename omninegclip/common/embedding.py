"""Batched, gradient-free embedding of images and texts with any `CLIPModel`.

One function each for images and texts, shared by training (the frozen image tower's embeddings
are computed once) and by `eval/` (each image and each text once per model). Both return the
projected embeddings as float32 on the CPU, L2-normalised unless `normalize=False`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from omninegclip.common.clip import CONTEXT_LENGTH


def _features(output) -> torch.Tensor:
    # transformers 5.x returns BaseModelOutputWithPooling (projected embedding in pooler_output); 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def embed_images(
    model,
    image_processor,
    images: Sequence[Image.Image],
    batch_size: int = 64,
    normalize: bool = True,
    progress: bool = True,
    desc: str = "images",
) -> torch.Tensor:
    """Projected image embeddings, shape (len(images), projection_dim)."""
    device = next(model.parameters()).device
    dtype = next(model.vision_model.parameters()).dtype
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"embedding {desc}", disable=not progress, leave=False):
        batch = [image.convert("RGB") for image in images[start : start + batch_size]]
        pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device, dtype)
        chunks.append(_features(model.get_image_features(pixel_values=pixel_values)).float().cpu())
    embeds = torch.cat(chunks) if chunks else torch.empty(0, model.config.projection_dim)
    return torch.nn.functional.normalize(embeds, dim=-1) if normalize else embeds


@torch.no_grad()
def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    normalize: bool = True,
    progress: bool = True,
    desc: str = "texts",
) -> torch.Tensor:
    """Projected text embeddings, shape (len(texts), projection_dim); each batch padded to its longest text."""
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"embedding {desc}", disable=not progress, leave=False):
        encoded = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=CONTEXT_LENGTH,
            return_tensors="pt",
        ).to(device)
        chunks.append(_features(model.get_text_features(**encoded)).float().cpu())
    embeds = torch.cat(chunks) if chunks else torch.empty(0, model.config.projection_dim)
    return torch.nn.functional.normalize(embeds, dim=-1) if normalize else embeds
