"""Preparation for a real run: each unique image decoded once (in worker processes), embedded on the
training device in its precision, cached so that a relaunch decodes nothing, no copy of the image
bytes written; the batch gathered from packed arrays; the NaN check without a host sync per step."""

from __future__ import annotations

import collections
import io
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import xxhash
from PIL import Image
from train_helpers import color_rows, save_dataset, save_tiny_clip, train_flags
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import train
from bench.coco_fixture import jpeg_of
from omninegclip.training import images as images_module
from omninegclip.training import prepare
from omninegclip.training.data import CaptionColumns, prepare_dataset
from omninegclip.training.images import ImageRefs, ImageTransform, image_pass
from omninegclip.training.trainer import OmniNegCLIPTrainer

# The draft-mode JPEG path's mean distance from the image processor's pixel values (normalised
# units, where the values span about 4): measured 0.011-0.026 on generated photo-like 640x480 and
# 1024x768 JPEGs at quality 90; the README states "within 0.03".
DRAFT_MEAN_TOLERANCE = 0.03


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def processor_pixels(image_processor, data: bytes) -> np.ndarray:
    return image_processor(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="np")["pixel_values"][
        0
    ]


# ---- one image -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (333, 500), (224, 224), (230, 1000)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_the_plain_path_gives_the_image_processors_pixels(size, mode):
    image_processor = CLIPImageProcessorPil()
    transform = ImageTransform.for_processor(image_processor)
    assert transform.plain is not None  # CLIP's usual settings: the PIL/numpy path
    rng = np.random.default_rng(sum(size))
    picture = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    data = encoded(picture)
    np.testing.assert_allclose(
        transform({"bytes": data, "path": None}), processor_pixels(image_processor, data), atol=1e-5
    )


def test_draft_mode_jpegs_stay_within_the_stated_tolerance():
    image_processor = CLIPImageProcessorPil()
    fast = ImageTransform.for_processor(image_processor)
    full = ImageTransform.for_processor(image_processor, draft=False)
    drafted = 0
    for index in (0, 6, 7, 8, 9):  # COCO's shapes: 640x480, 480x640, 640x427, 500x375, 640x512
        data = jpeg_of(index)
        reference = processor_pixels(image_processor, data)
        np.testing.assert_allclose(full({"bytes": data, "path": None}), reference, atol=1e-5)  # no draft: exact
        difference = np.abs(fast({"bytes": data, "path": None}) - reference)
        assert difference.mean() < DRAFT_MEAN_TOLERANCE, (index, difference.mean())
        drafted += difference.max() > 0
    assert drafted >= 3  # not vacuous: 640x480, 480x640 and 640x512 decode at half scale (the others cannot)


def test_unusual_processor_settings_run_the_processor_itself():
    image_processor = CLIPImageProcessorPil(size={"height": 40, "width": 30}, crop_size={"height": 30, "width": 30})
    transform = ImageTransform.for_processor(image_processor)
    assert transform.plain is None
    data = jpeg_of(3)
    np.testing.assert_allclose(
        transform({"bytes": data, "path": None}), processor_pixels(image_processor, data), atol=1e-6
    )


# ---- the pass over the unique images -----------------------------------------------------------------


def jpeg_dataset(count: int, repeat: int = 0, seed: int = 0) -> tuple[datasets.Dataset, list[bytes]]:
    """`count` distinct small JPEGs, then `repeat` rows that reuse the first images' bytes."""
    pictures = [jpeg_of(i, seed=seed) for i in range(count)]
    rows = pictures + pictures[:repeat]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "presence_negated": datasets.Value("string"),
            "absence_negated": datasets.Value("string"),
        }
    )
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": data, "path": None} for data in rows],
            "caption": [f"a photo number {i}" for i in range(len(rows))],
            "presence_negated": [f"a photo with no number {i}" for i in range(len(rows))],
            "absence_negated": [f"a photo number {i} with no dog" for i in range(len(rows))],
        },
        features=features,
    )
    return table, pictures


@pytest.fixture
def counted_decodes(monkeypatch) -> collections.Counter:
    """How often each image (by its bytes or path) is decoded in this process."""
    seen = collections.Counter()
    real = images_module.open_rgb_image

    def counting(source, *args, **kwargs):
        data = source.get("bytes") if isinstance(source, dict) else source
        seen[xxhash.xxh3_64_hexdigest(data) if isinstance(data, bytes) else str(data)] += 1
        return real(source, *args, **kwargs)

    monkeypatch.setattr(images_module, "open_rgb_image", counting)
    return seen


def refs_of(*tables: datasets.Dataset) -> tuple[ImageRefs, list[np.ndarray]]:
    return ImageRefs.find(
        list(tables), "image", [f"t{k}" for k in range(len(tables))], [list(range(len(t))) for t in tables]
    )


def test_rows_that_repeat_an_image_share_it(tmp_path):
    first, _ = jpeg_dataset(4, repeat=2)
    second, _ = jpeg_dataset(3, seed=10)
    (tmp_path / "a.jpg").write_bytes(jpeg_of(0, seed=20))
    paths = datasets.Dataset.from_dict({"image": ["a.jpg", str(tmp_path / "a.jpg"), "missing.jpg", None]})
    refs, index = ImageRefs.find(
        [first, second, paths],
        "image",
        ["first", "second", str(tmp_path)],
        [list(range(6)), list(range(3)), list(range(4))],
    )
    assert index[0].tolist() == [0, 1, 2, 3, 0, 1]  # same bytes, same image
    assert index[1].tolist() == [4, 5, 6]
    assert index[2][0] == index[2][1] == 7  # a relative and an absolute path to one file: one image
    assert len(set(index[2][2:].tolist()) | {7}) == 3  # a missing file and no image at all are each their own
    assert len(refs) == 10


def test_each_unique_image_is_decoded_once_and_a_relaunch_decodes_none(
    tmp_path, processor, tiny_clip, counted_decodes
):
    table, pictures = jpeg_dataset(5, repeat=3)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    first = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert sorted(counted_decodes.values()) == [1] * 5 and len(counted_decodes) == len(pictures)
    counted_decodes.clear()
    again = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert not counted_decodes  # read from the cache: nothing decoded, nothing checked again
    torch.testing.assert_close(again.embeds, first.embeds)
    assert len(list(tmp_path.glob("image_embeds-*.safetensors"))) == 1


def _damaged(data: bytes, damage: str) -> bytes:
    """A cache file's bytes after `damage`: cut in half, emptied, or another file's bytes."""
    return {"truncated": data[: len(data) // 2], "empty": b"", "not_safetensors": b"not a safetensors file" * 8}[
        damage
    ]


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_safetensors"])
def test_a_damaged_cache_file_is_named_in_a_warning_rebuilt_and_replaced(
    tmp_path, processor, tiny_clip, counted_decodes, caplog, damage
):
    table, pictures = jpeg_dataset(3)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    first = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    (path,) = tmp_path.glob("image_embeds-*.safetensors")
    expected = first.embeds.clone()  # `first` maps the file that is damaged in place below
    intact = path.read_bytes()
    path.write_bytes(_damaged(intact, damage))
    counted_decodes.clear()
    with caplog.at_level(logging.WARNING, logger=images_module.logger.name):
        again = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert f"the cached image pass {path} cannot be used (" in caplog.text
    assert "decoding the images again and replacing it" in caplog.text
    assert sum(counted_decodes.values()) == len(pictures)  # rebuilt from the images
    torch.testing.assert_close(again.embeds, expected)
    assert path.read_bytes() == intact  # replaced by a whole file: the next run reuses it without a word
    caplog.clear()
    image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert "cannot be used" not in caplog.text


def test_a_cache_file_of_another_shape_is_not_reused(tmp_path, processor, tiny_clip, caplog):
    from safetensors.torch import save_file

    table, _ = jpeg_dataset(3)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    first = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    (path,) = tmp_path.glob("image_embeds-*.safetensors")
    expected = first.embeds.clone()  # `first` maps the file that is damaged in place below
    save_file(
        {"image_embeds": torch.zeros(2, 16)}, str(path), metadata={"unreadable": "{}"}
    )  # two rows for three images
    with caplog.at_level(logging.WARNING, logger=images_module.logger.name):
        again = image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert f"{path} cannot be used (it holds (2, 16) image embeddings, expected 3 rows)" in caplog.text
    torch.testing.assert_close(again.embeds, expected)


def test_a_write_cut_short_leaves_nothing_under_the_real_name(tmp_path, processor, tiny_clip, monkeypatch):
    """A run stopped while writing the cache (here: half the file written, then Ctrl-C) leaves no
    file under the name a relaunch reads; a temporary file of a process that is gone (killed before
    it could clean up) is removed by the next write."""
    table, _ = jpeg_dataset(2)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    real_fsync = os.fsync

    def cut_short(descriptor):  # the file is written up to here; the flush to disk is interrupted
        os.ftruncate(descriptor, 40)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", cut_short)
    with pytest.raises(KeyboardInterrupt):
        image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    key = images_module.cache_key(tiny_clip, transform, refs, str(torch.float32))
    left_by_a_killed_run = tmp_path / f"image_embeds-{key}.partial-{socket.gethostname()}-{int(finished.stdout)}"
    left_by_a_killed_run.write_bytes(b"half a file")
    image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == [f"image_embeds-{key}.safetensors"]


def test_worker_processes_give_the_same_embeddings(processor, tiny_clip):
    table, _ = jpeg_dataset(7)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    alone = image_pass(refs, transform, model=tiny_clip, batch_size=2, num_workers=0)
    workers = image_pass(refs, transform, model=tiny_clip, batch_size=2, num_workers=2)
    torch.testing.assert_close(workers.embeds, alone.embeds)
    assert alone.embeds.shape == (7, tiny_clip.config.projection_dim) and alone.embeds.abs().sum() > 0


def test_an_unreadable_image_is_counted_in_the_same_pass_and_remembered_by_the_cache(
    tmp_path, processor, tiny_clip, counted_decodes
):
    table, pictures = jpeg_dataset(3)
    truncated = table.cast_column("image", datasets.Image(decode=False)).to_dict()
    truncated["image"][1] = {"bytes": pictures[1][: len(pictures[1]) // 2], "path": None}
    table = datasets.Dataset.from_dict(truncated, features=table.features)
    columns = CaptionColumns.from_flags("image", "caption", "presence_negated", "absence_negated")
    transform = ImageTransform.for_processor(processor.image_processor)
    run = lambda refs: image_pass(refs, transform, model=tiny_clip, num_workers=0, cache_dir=tmp_path)  # noqa: E731
    for decodes in (3, 0):  # the first pass decodes each image once; the relaunch none, with the same skip
        counted_decodes.clear()
        prepared, (report,) = prepare_dataset([table], ["photos"], columns, processor.tokenizer, images=run)
        assert sum(counted_decodes.values()) == decodes
        assert report.skips.counts == {"truncated_image": 1} and report.kept == 2
        assert prepared.source_row.tolist() == [0, 2]


def test_the_cache_key_records_the_precision_and_autocast_reaches_the_tower(tmp_path, processor, tiny_clip):
    table, _ = jpeg_dataset(2)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    seen = []
    real = tiny_clip.get_image_features

    def recording(pixel_values):
        seen.append((pixel_values.device.type, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(pixel_values=pixel_values)

    tiny_clip.get_image_features = recording
    full = image_pass(refs, transform, model=tiny_clip, device="cpu", num_workers=0, cache_dir=tmp_path)
    half = image_pass(
        refs,
        transform,
        model=tiny_clip,
        device="cpu",
        autocast_dtype=torch.bfloat16,
        num_workers=0,
        cache_dir=tmp_path,
    )
    assert seen == [("cpu", False, torch.get_autocast_dtype("cpu")), ("cpu", True, torch.bfloat16)]
    assert len(list(tmp_path.glob("image_embeds-*.safetensors"))) == 2  # one per precision
    # Kept in the dtype the tower gave them: bf16 under bf16 autocast (half the bytes, nothing rounded twice).
    assert full.embeds.dtype == torch.float32 and half.embeds.dtype == torch.bfloat16
    assert not torch.equal(full.embeds, half.embeds.float())
    torch.testing.assert_close(half.embeds.float(), full.embeds, rtol=0.05, atol=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs it)")
def test_embeddings_on_the_gpu_equal_the_cpus(processor, tiny_clip):
    table, _ = jpeg_dataset(6)
    refs, _ = refs_of(table)
    transform = ImageTransform.for_processor(processor.image_processor)
    cpu = image_pass(refs, transform, model=tiny_clip, num_workers=0)
    gpu = image_pass(refs, transform, model=tiny_clip.to("cuda"), num_workers=2, batch_size=2)
    torch.testing.assert_close(gpu.embeds, cpu.embeds, rtol=1e-3, atol=1e-4)


# ---- through train.py -------------------------------------------------------------------------------


def test_train_embeds_on_its_device_in_its_precision_before_the_trainer_exists(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8))
    calls = []
    real = prepare.image_pass

    def recording(refs, transform, **kwargs):
        model = kwargs["model"]
        calls.append((kwargs["device"], kwargs["autocast_dtype"], next(model.parameters()).device))
        return real(refs, transform, **kwargs)

    monkeypatch.setattr(prepare, "image_pass", recording)
    model_args, data_args, config = train.parse_args(
        train_flags(model_dir, data, tmp_path / "out", bf16="true", use_cpu="true")
    )
    model, loaded_processor = train.load_model(model_args)
    train_datasets, _ = train.load_datasets(data_args, config, None)
    prepare.prepare_splits(config, loaded_processor, model, {"train": train_datasets})
    ((device, precision, model_device),) = calls  # called by prepare_splits: no Trainer exists yet
    assert device == config.device and model_device.type == config.device.type
    assert precision == torch.bfloat16


def test_preparation_writes_no_copy_of_the_images(tmp_path, processor):
    """Two mixed datasets (the smaller one repeated) with a skipped row: what preparation writes is
    the embedding cache only, a small fraction of the images' bytes, and none of their bytes."""
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    presence, pictures = jpeg_dataset(12, repeat=4)
    absence, more = jpeg_dataset(6, seed=50)
    presence = presence.map(lambda row, i: {"caption": "" if i == 3 else row["caption"]}, with_indices=True)  # a skip
    datasets.DatasetDict({"train": presence}).save_to_disk(str(tmp_path / "presence"))
    datasets.DatasetDict({"train": absence}).save_to_disk(str(tmp_path / "absence"))
    before = {path: path.stat().st_size for path in tmp_path.rglob("*") if path.is_file()}
    model_args, data_args, config = train.parse_args(
        train_flags(model_dir, tmp_path / "presence", tmp_path / "runs" / "out", mix_dataset_name=tmp_path / "absence")
    )
    model, loaded_processor = train.load_model(model_args)
    train_datasets, _ = train.load_datasets(data_args, config, None)
    tables, packed, _, reports = prepare.prepare_splits(config, loaded_processor, model, {"train": train_datasets})
    written = [path for path in tmp_path.rglob("*") if path.is_file() and before.get(path) != path.stat().st_size]
    image_bytes = sum(len(data) for data in pictures + more)
    # Written: the embeddings (in their cache) and the tokenized rows (in theirs, which hold no image bytes).
    embedded = [path for path in written if path.parent == Path(config.image_embedding_cache_dir)]
    rows = [path for path in written if prepare.prepared_cache_dir(config) in path.parents]
    assert embedded and rows and len(embedded) + len(rows) == len(written)
    assert sum(path.stat().st_size for path in embedded) <= 0.05 * image_bytes
    for path in written:
        content = path.read_bytes()
        assert not any(data[200:400] in content for data in pictures + more), path  # no image's bytes anywhere
    assert (
        len(tables["train"]) == 2 * 15 and len(packed.image_index) == 15 + 6
    )  # 16 rows, one skipped; repeats share rows
    assert packed.image_embeds.shape[0] == 12 + 6  # unique images embedded once: 12 + 6, not 30 rows
    assert reports[0].skips.counts == {"empty_caption": 1}


# ---- batches and steps ------------------------------------------------------------------------------


def test_the_nan_check_syncs_once_per_check_interval_not_every_step(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8))
    checks = []
    real = OmniNegCLIPTrainer.check_finite

    def counting(self, model):
        checks.append((self.state.global_step, len(self._unchecked)))
        return real(self, model)

    monkeypatch.setattr(OmniNegCLIPTrainer, "check_finite", counting)
    train.main(
        train_flags(
            model_dir,
            data,
            tmp_path / "out",
            max_steps=6,
            nan_check_steps=4,
            logging_steps=100,
            per_device_train_batch_size=4,
        )
    )
    assert checks == [(4, 4), (6, 2)]  # steps 1-4 checked together, then 5-6 as training stops


def test_a_file_replaced_in_place_is_embedded_again(tmp_path, processor, tiny_clip):
    (tmp_path / "a.jpg").write_bytes(jpeg_of(0))
    table = datasets.Dataset.from_dict({"image": ["a.jpg"]})
    transform = ImageTransform.for_processor(processor.image_processor)

    def run():
        return image_pass(
            ImageRefs.find([table], "image", [str(tmp_path)], [[0]])[0],
            transform,
            model=tiny_clip,
            num_workers=0,
            cache_dir=tmp_path / "cache",
        )

    first = run().embeds
    (tmp_path / "a.jpg").write_bytes(jpeg_of(1))  # same name, other picture (and size)
    os.utime(tmp_path / "a.jpg", ns=(1, 1))  # whatever the clock's resolution
    second = run().embeds
    assert len(list((tmp_path / "cache").glob("image_embeds-*.safetensors"))) == 2
    assert not torch.equal(first, second)
