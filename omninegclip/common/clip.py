"""CLIP's constants (openai's tokenizer and text encoder) and the one factory of CLIP configs.

Every CLIP this project builds from scratch (the built-in default's small base, the tests' tiny
model in tests/conftest.py, the benchmarks' ViT-B/32 geometry) comes from `ClipSize.config()`, so
the vocabulary, context length and special tokens are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import CLIPConfig

CONTEXT_LENGTH = 77  # tokens CLIP's text encoder reads, start and end tokens included; the rest is cut off
VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406  # <|startoftext|>
EOS_TOKEN_ID = 49407  # <|endoftext|>, also CLIP's padding token
PAD_TOKEN_ID = EOS_TOKEN_ID


@dataclass(frozen=True)
class ClipSize:
    """The sizes of a CLIP (text and vision towers); intermediate sizes default to 4x hidden."""

    text_hidden: int
    text_layers: int
    text_heads: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    projection_dim: int
    text_intermediate: int | None = None
    vision_intermediate: int | None = None

    def __post_init__(self):
        for hidden, heads, tower in (
            (self.text_hidden, self.text_heads, "text"),
            (self.vision_hidden, self.vision_heads, "vision"),
        ):
            if hidden % heads:
                raise ValueError(f"{tower} hidden size {hidden} is not divisible by its {heads} attention heads")
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not a multiple of patch size {self.patch_size}")

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def config(self) -> CLIPConfig:
        """A `CLIPConfig` with openai's vocabulary, context length and special tokens."""
        return CLIPConfig(
            text_config=dict(
                vocab_size=VOCAB_SIZE,
                hidden_size=self.text_hidden,
                intermediate_size=self.text_intermediate or 4 * self.text_hidden,
                num_hidden_layers=self.text_layers,
                num_attention_heads=self.text_heads,
                max_position_embeddings=CONTEXT_LENGTH,
                bos_token_id=BOS_TOKEN_ID,
                eos_token_id=EOS_TOKEN_ID,
                pad_token_id=PAD_TOKEN_ID,
            ),
            vision_config=dict(
                image_size=self.image_size,
                patch_size=self.patch_size,
                hidden_size=self.vision_hidden,
                intermediate_size=self.vision_intermediate or 4 * self.vision_hidden,
                num_hidden_layers=self.vision_layers,
                num_attention_heads=self.vision_heads,
            ),
            projection_dim=self.projection_dim,
        )


VIT_B_32 = ClipSize(
    text_hidden=512,
    text_layers=12,
    text_heads=8,
    vision_hidden=768,
    vision_layers=12,
    vision_heads=12,
    image_size=224,
    patch_size=32,
    projection_dim=512,
)
