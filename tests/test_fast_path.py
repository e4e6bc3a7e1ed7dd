"""The fast training path computes exactly what the plain one does.

Fast: image embeddings computed once (and cached on disk), each caption set padded to its own longest
caption by the real collator, all caption sets through the text encoder in one call. Plain: pixel
values through the image tower, each caption set padded to 77 tokens in its own text-encoder call
(`bench/workload.py: plain_loss_terms`, the benchmark's step (a)). Also: the cache key, padding
invariance, and the benchmark's FLOP model against torch's own FLOP counter."""

from __future__ import annotations

import pickle
from functools import partial

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPModel, Trainer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from bench.measure import Device, record_text_shapes
from bench.trainer_loop import trainer_config, trainer_table
from bench.workload import (
    Geometry,
    coco_like_captions,
    fast_batch,
    fast_loss_terms,
    packed_rows,
    plain_loss_terms,
    text_forward_flops,
    text_train_flops,
)
from modeling_omninegclip import OmniNegCLIPModel, OmniNegLossConfig, TrainableConfig, apply_trainable
from omninegclip import OmniNegCLIPTrainer
from omninegclip.common.embedding import embed_images
from omninegclip.training import images as images_module
from omninegclip.training.data import OmniNegCollator, PackedRows, PreparedSplit
from omninegclip.training.images import ImageRefs, ImageTransform, image_pass, pixel_values
from omninegclip.training.rowstore import RowStore

CAPTIONS = [
    ("a dog on a sofa", "a sofa with no dog", "a dog on a sofa with no cat in the room"),
    (
        "two cats playing in the tall grass near an old tree",
        "two cats playing in the tall grass near no tree",
        "two cats playing in the grass, and there is no dog anywhere",
    ),
    ("a red car", "a street without a red car", "a red car with no people inside it"),
    (
        "a man riding a horse along the beach at sunset",
        "a man on a beach at sunset, not riding a horse",
        "a man riding a horse along the beach with no boats",
    ),
]


def images(count: int = 4, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (36 + 3 * i, 40, 3), dtype=np.uint8)) for i in range(count)]


def omni_model(front_blocks: int = 2) -> OmniNegCLIPModel:
    torch.manual_seed(0)
    model = OmniNegCLIPModel(tiny_clip_config(), loss_config=OmniNegLossConfig(lambda_choice=0.5))
    apply_trainable(model, TrainableConfig(front_blocks=front_blocks))
    return model.train()


def fast_and_plain_batches(model, processor):
    tokenizer, image_processor = processor.tokenizer, processor.image_processor
    pictures = images()
    image_embeds = embed_images(
        model, image_processor, pictures, normalize=False, progress=False
    )  # what the cache holds
    tokens = {
        name: [tokenizer(row[index])["input_ids"] for row in CAPTIONS]
        for index, name in enumerate(("input_ids", "presence_negated_input_ids", "absence_negated_input_ids"))
    }
    packed = PackedRows(
        tokens, tokenizer.pad_token_id, image_index=np.arange(len(CAPTIONS)), image_embeds=image_embeds
    )
    fast = OmniNegCollator(packed)([{"row_id": row, "packed_row": row} for row in range(len(CAPTIONS))])
    fast.pop("row_ids")
    assert not any(key.startswith("absence_affirmed") for key in fast)  # rows without the field have no twin
    plain = {"pixel_values": image_processor(images=pictures, return_tensors="pt")["pixel_values"]}
    for index, kind in enumerate(("original", "presence", "absence")):
        encoded = tokenizer([row[index] for row in CAPTIONS], padding="max_length", max_length=77, return_tensors="pt")
        plain[f"{kind}_input_ids"], plain[f"{kind}_attention_mask"] = encoded["input_ids"], encoded["attention_mask"]
    return fast, plain


def loss_and_gradients(model, loss_terms, batch):
    model.zero_grad(set_to_none=True)
    with record_text_shapes(model) as calls:
        terms = loss_terms(model, batch)
    terms["loss"].backward()
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    return {name: value.detach() for name, value in terms.items()}, gradients, calls


@pytest.mark.parametrize("bucket_rows", [None, 5])
def test_fast_path_gives_the_plain_losses_and_gradients(processor, bucket_rows):
    model = omni_model()
    model.text_bucket_rows = bucket_rows  # None: one call padded to the longest caption
    fast, plain = fast_and_plain_batches(model, processor)
    fast_terms, fast_grads, fast_calls = loss_and_gradients(model, fast_loss_terms, fast)
    plain_terms, plain_grads, plain_calls = loss_and_gradients(model, plain_loss_terms, plain)

    # The two paths really differ: one text pass over dynamically padded captions (one call, or
    # length-sorted buckets each cut to its longest caption) vs three calls padded to 77.
    lengths = sorted(len(processor.tokenizer(text)["input_ids"]) for row in CAPTIONS for text in row)
    if bucket_rows is None:
        assert fast_calls == [(len(lengths), lengths[-1])]
    else:
        buckets = [lengths[start : start + bucket_rows] for start in range(0, len(lengths), bucket_rows)]
        assert fast_calls == [(len(bucket), bucket[-1]) for bucket in buckets]
    assert plain_calls == [(len(CAPTIONS), 77)] * 3
    assert "pixel_values" not in fast

    assert set(plain_terms) <= set(fast_terms)
    assert plain_terms["loss_choice"] > 0  # lambda_choice is on: every term is exercised
    for name, value in plain_terms.items():
        torch.testing.assert_close(fast_terms[name], value, rtol=1e-5, atol=1e-6, msg=f"loss term {name}")

    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert set(fast_grads) == set(plain_grads) == trainable
    assert not any(name.startswith(("vision_model", "visual_projection")) for name in fast_grads)
    for name, gradient in plain_grads.items():
        if not name.endswith("k_proj.bias"):  # a key bias shifts every score alike: softmax gives it no gradient
            assert gradient.abs().max() > 1e-4, name
        torch.testing.assert_close(fast_grads[name], gradient, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")


# ---- padding --------------------------------------------------------------------------------------


def right_pad(input_ids, attention_mask, extra, pad_id):
    return (
        torch.nn.functional.pad(input_ids, (0, extra), value=pad_id),
        torch.nn.functional.pad(attention_mask, (0, extra), value=0),
    )


def test_extra_right_padding_changes_no_embedding(tiny_clip, tokenizer):
    texts = [row[0] for row in CAPTIONS] + ["a cat"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    length = encoded["input_ids"].shape[1]
    with torch.no_grad():
        reference = tiny_clip.get_text_features(**encoded).pooler_output
        for extra in (1, 9, 77 - length):
            ids, mask = right_pad(encoded["input_ids"], encoded["attention_mask"], extra, tokenizer.pad_token_id)
            padded = tiny_clip.text_model(input_ids=ids, attention_mask=mask)
            torch.testing.assert_close(
                tiny_clip.text_projection(padded.pooler_output), reference, rtol=1e-5, atol=1e-6
            )
            # Not vacuous: the state at the last position does move with padding, first-EOS pooling avoids it.
            last = padded.last_hidden_state[:, -1]
            assert not torch.allclose(tiny_clip.text_projection(last), reference, atol=1e-3)
        max_length = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
        torch.testing.assert_close(
            tiny_clip.get_text_features(**max_length).pooler_output, reference, rtol=1e-5, atol=1e-6
        )


def test_one_text_pass_equals_each_set_alone(tokenizer):
    model = omni_model().eval()
    sets = [tokenizer([row[index] for row in CAPTIONS], padding=True, return_tensors="pt") for index in range(3)]
    lengths = {encoded["input_ids"].shape[1] for encoded in sets}
    assert len(lengths) == 3  # each set is padded to a different length before the joint pass
    with torch.no_grad():
        joint = model.encode_texts([(encoded["input_ids"], encoded["attention_mask"]) for encoded in sets])
        for together, encoded in zip(joint, sets):
            torch.testing.assert_close(
                together, model.get_text_features(**encoded).pooler_output, rtol=1e-5, atol=1e-6
            )


# ---- the image-embedding cache ----------------------------------------------------------------------


@pytest.fixture
def counted_passes(monkeypatch):
    """How often the image tower embeds a batch (a cache hit embeds none)."""
    calls = []
    real = images_module._features

    def counting(output):
        calls.append(1)
        return real(output)

    monkeypatch.setattr(images_module, "_features", counting)
    return calls


def image_refs() -> ImageRefs:
    table = datasets.Dataset.from_dict(
        {"image": images(5, seed=1)}, features=datasets.Features({"image": datasets.Image()})
    )
    refs, _ = ImageRefs.find([table], "image", ["pictures"], [list(range(5))])
    return refs


def cached(model, image_processor, refs, cache_dir) -> np.ndarray:
    return image_pass(
        refs, ImageTransform.for_processor(image_processor), model=model, num_workers=0, cache_dir=cache_dir
    ).embeds.numpy()


def test_image_embedding_cache_is_reused_until_vision_weights_or_transform_change(tmp_path, processor, counted_passes):
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config()).eval()
    refs = image_refs()
    image_processor = processor.image_processor
    files = lambda: sorted(path.name for path in tmp_path.glob("image_embeds-*.safetensors"))  # noqa: E731

    first = cached(model, image_processor, refs, tmp_path)
    assert len(counted_passes) == 1 and len(files()) == 1
    direct = embed_images(model, image_processor, images(5, seed=1), normalize=False, progress=False)
    np.testing.assert_allclose(first, direct.numpy(), rtol=1e-5, atol=1e-6)

    # Nothing changed: reused, no new file. A text-tower change does not touch image embeddings: reused too.
    np.testing.assert_array_equal(cached(model, image_processor, refs, tmp_path), first)
    with torch.no_grad():
        model.text_model.final_layer_norm.weight.add_(1.0)
        model.text_projection.weight.mul_(2.0)
    np.testing.assert_array_equal(cached(model, image_processor, refs, tmp_path), first)
    assert len(counted_passes) == 1 and len(files()) == 1

    # Vision weights changed: recomputed under a new key.
    with torch.no_grad():
        model.vision_model.post_layernorm.weight.add_(0.5)
    changed_weights = cached(model, image_processor, refs, tmp_path)
    assert len(counted_passes) == 2 and len(files()) == 2
    assert not np.allclose(changed_weights, first)

    # Transform changed (same weights): recomputed under a new key.
    other_transform = CLIPImageProcessorPil(
        size={"shortest_edge": 30},
        crop_size={"height": 30, "width": 30},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    changed_transform = cached(model, other_transform, refs, tmp_path)
    assert len(counted_passes) == 3 and len(files()) == 3
    assert not np.allclose(changed_transform, changed_weights)

    # Other images: recomputed under a new key.
    table = datasets.Dataset.from_dict(
        {"image": images(5, seed=2)}, features=datasets.Features({"image": datasets.Image()})
    )
    other_refs, _ = ImageRefs.find([table], "image", ["pictures"], [list(range(5))])
    cached(model, image_processor, other_refs, tmp_path)
    assert len(counted_passes) == 4 and len(files()) == 4

    # Back to a setting seen before: its file is found again.
    np.testing.assert_array_equal(cached(model, image_processor, refs, tmp_path), changed_weights)
    assert len(counted_passes) == 4


# ---- the benchmark's FLOP model -----------------------------------------------------------------


@pytest.mark.parametrize("front_blocks", [1, 3, 5])
def test_flop_model_matches_torch_flop_counter(front_blocks, tokenizer):
    config = tiny_clip_config()
    text = config.text_config
    text.intermediate_size = 4 * text.hidden_size  # the FLOP model's MLP width, as in CLIP
    torch.manual_seed(0)
    model = OmniNegCLIPModel(config)
    apply_trainable(model, TrainableConfig(front_blocks=front_blocks))
    model.set_attn_implementation("eager")  # attention as plain matmuls, which the counter sees
    geometry = Geometry(
        name="tiny",
        text_hidden=text.hidden_size,
        text_layers=text.num_hidden_layers,
        text_heads=text.num_attention_heads,
        vision_hidden=32,
        vision_layers=2,
        vision_heads=4,
        image_size=30,
        patch_size=2,
        projection_dim=config.projection_dim,
    )
    encoded = tokenizer([row[1] for row in CAPTIONS], padding=True, return_tensors="pt")
    sequences, length = encoded["input_ids"].shape
    blocks = list(range(front_blocks))
    with FlopCounterMode(display=False) as counter:
        model.get_text_features(**encoded).pooler_output.sum().backward()
    assert counter.get_total_flops() == text_train_flops(geometry, sequences, length, blocks)
    with FlopCounterMode(display=False) as forward_counter, torch.no_grad():
        model.get_text_features(**encoded)
    assert forward_counter.get_total_flops() == text_forward_flops(geometry, sequences, length)
    if front_blocks == text.num_hidden_layers:  # everything trains: backward = 2 x forward
        assert text_train_flops(geometry, sequences, length, blocks) == 3 * text_forward_flops(
            geometry, sequences, length
        )


# ---- the benchmark's step (c): the Trainer on step (b)'s rows -------------------------------------


def test_the_trainer_step_takes_the_project_batch(tmp_path):
    model = omni_model()
    captions = coco_like_captions(8, torch.Generator().manual_seed(0), vocab_size=1000)
    rows = packed_rows(captions, torch.randn(8, model.config.projection_dim))
    config = trainer_config(str(tmp_path / "out"), 8, 2, steps=3, logging_steps=3, device=Device("cpu", None), seed=0)
    collator = OmniNegCollator(rows, caption_sets=config.loss_config().caption_sets_read())
    trainer = OmniNegCLIPTrainer(model, config, train_dataset=trainer_table(8, 3), data_collator=collator)
    batches = list(trainer.get_train_dataloader())
    expected = fast_batch(captions, rows.image_embeds)
    assert len(batches) == 3
    for step, batch in enumerate(batches):  # every batch is step (b)'s, row for row
        assert batch.pop("row_ids").tolist() == list(range(8 * step, 8 * step + 8)) and set(batch) == set(expected)
        assert all(torch.equal(batch[name], expected[name]) for name in expected)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batches[0]))
        torch.testing.assert_close(loss, fast_loss_terms(model, expected)["loss"], rtol=0, atol=0)
    # The Trainer's FLOP count, with the parameters counted once: as transformers counts it.
    assert trainer.floating_point_ops(batches[0]) == Trainer.floating_point_ops(trainer, batches[0]) > 0


def test_the_collator_crosses_to_spawned_workers(processor):
    # DataLoader workers started by spawn or forkserver (safe once CUDA has started) get the collator
    # pickled: the pixel path (a training image tower) too.
    refs = image_refs()
    split = PreparedSplit(
        store=RowStore.from_lists({"caption": [[49406, 320 + row, 49407] for row in range(5)]}, np.arange(5)),
        kept=np.arange(5),
        starts=np.zeros(1, dtype=np.int64),
        order=np.arange(5),
        images=refs,
    )
    transform = ImageTransform.for_processor(processor.image_processor)
    packed, tables = PackedRows.from_splits({"train": split}, 49407, pixels=partial(pixel_values, transform))
    collator = OmniNegCollator(packed)
    items = [tables["train"][row] for row in (4, 0, 2)]
    batch, again = collator(items), pickle.loads(pickle.dumps(collator))(items)
    assert batch["pixel_values"].shape == (3, 3, 30, 30) and set(again) == set(batch)
    assert all(torch.equal(again[name], value) for name, value in batch.items())
