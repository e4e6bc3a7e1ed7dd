"""The GPU path: bf16 autocast on CUDA gives the fp32 CPU loss terms and gradients within bf16's
precision; train.py --bf16 on CUDA trains and saves a plain float32 CLIP; evaluation embeddings on
CUDA match the CPU's. Marked `cuda`; skipped where torch sees no GPU (bench/gpu_check.sh runs them
with `pytest -m cuda tests/test_cuda.py`)."""

from __future__ import annotations

import json
import sys

import distributed_worker as worker
import pytest
import torch
from train_helpers import color_rows, run_command, save_dataset, save_tiny_clip, train_flags, weights
from transformers import CLIPModel

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)"),
]


def test_bf16_autocast_on_cuda_matches_fp32_on_cpu():
    batch = worker.global_batch("mixed")
    expected_terms, expected_grads = worker.step(worker.make_model(), batch)
    model = worker.make_model().cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        terms, grads = worker.step(model, {key: value.cuda() for key, value in batch.items()})
    assert terms.keys() == expected_terms.keys()
    for name, value in expected_terms.items():
        torch.testing.assert_close(terms[name].float().cpu(), value, rtol=3e-2, atol=3e-2, msg=name)
    assert grads.keys() == expected_grads.keys()
    largest = max(value.norm() for value in expected_grads.values())
    for name, value in expected_grads.items():
        got = grads[name].cpu()
        assert got.dtype == torch.float32, name  # parameters and their gradients stay float32 under autocast
        assert torch.isfinite(got).all(), name
        if value.norm() < 1e-4 * largest:  # e.g. the key biases: zero in exact arithmetic, rounding noise here
            continue
        # bf16 keeps ~3 significant digits: compare directions, not every element
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), value.flatten(), dim=0)
        assert cosine > 0.98, f"{name}: cosine {cosine:.3f}"


def test_train_py_bf16_on_cuda_saves_a_plain_float32_clip(tmp_path, processor):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(32), color_rows(16, offset=32))
    out = tmp_path / "out"
    result = run_command(
        [
            sys.executable,
            "train.py",
            *train_flags(model_dir, data, out, max_steps=4, bf16="true", eval_strategy="steps", eval_steps=4),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "training_provenance.json").read_text())
    assert record["training_arguments"]["bf16"] is True
    got = weights(out)
    assert all(tensor.dtype == torch.float32 and torch.isfinite(tensor).all() for tensor in got.values())
    assert not torch.equal(got["text_projection.weight"], weights(model_dir)["text_projection.weight"])
    assert set(got) == set(CLIPModel.from_pretrained(out).state_dict())
    eval_loss = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    assert eval_loss == eval_loss and eval_loss > 0  # finite, positive


def test_evaluation_embeddings_on_cuda_match_cpu(tiny_clip, tokenizer, processor):
    from omninegclip.common.embedding import embed_images, embed_texts

    texts = ["a red square", "a picture with no blue circle", "two green squares and a yellow one"]
    images = [row["image"] for row in color_rows(4)]
    on_cpu = (
        embed_texts(tiny_clip, tokenizer, texts, progress=False),
        embed_images(tiny_clip, processor.image_processor, images, progress=False),
    )
    model = tiny_clip.cuda()
    on_gpu = (
        embed_texts(model, tokenizer, texts, progress=False),
        embed_images(model, processor.image_processor, images, progress=False),
    )
    for cpu, gpu in zip(on_cpu, on_gpu):
        torch.testing.assert_close(
            torch.as_tensor(gpu).float().cpu(), torch.as_tensor(cpu).float().cpu(), rtol=1e-3, atol=1e-3
        )
