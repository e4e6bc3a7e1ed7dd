"""The training side of `bench/bench_data.py`: preparation and the input path, each against its limit.

    python -m bench.bench_data --sections preparation,input                 # on 2 idle CPU cores: ~2 minutes
    python -m bench.bench_data --sections preparation --device cuda --dtype bf16   # on a GPU: embedding images/s

Sections (`section_NAME(args, fixture) -> dict` and `NAME_table(result) -> lines`, registered in
bench/bench_data.py's SECTIONS):
  preparation  the fixture's realistic JPEGs (bench/coco_fixture.py) as a dataset of image paths,
               prepared as `train.py` prepares it (`prepare_dataset` + `image_pass`):
               - the limit: one core decoding once (draft mode) and preprocessing, images/s;
               - the previous path: full decode + `CLIPImageProcessorPil` per image, images/s;
               - preparation with 1 and 2 worker processes (images/s; CPU work per image in the
                 worker against the limit), with a stand-in tower that costs nothing on the CPU
                 (on `--device cuda`: a real ViT-B/32-geometry tower with random weights, embedded
                 images/s on the device);
               - bytes written by preparation against the images' bytes.
  input        the training input path at batch 256 (ms/step): the Trainer's fetch from the
               prepared table + the collator, against the previous path (token lists and an
               embedding per row in an Arrow table, padded row by row).
Targets (issue 13): CPU work per image <= 1.2x the limit; 1 -> 2 workers >= 1.6x on an idle 2-core
machine; disk written <= 5 % of the image bytes; input path <= 5 ms/step at batch 256.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import numpy as np
import torch
from transformers import CLIPModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from omninegclip.common.clip import BOS_TOKEN_ID, EOS_TOKEN_ID, VIT_B_32
from omninegclip.common.safe_load import open_rgb_image
from omninegclip.common.tokenization import build_clip_tokenizer
from omninegclip.training.data import CaptionColumns, OmniNegCollator, PackedRows, prepare_dataset
from omninegclip.training.images import ImageTransform, image_pass

TARGETS = {"cpu_per_image_over_limit": 1.2, "two_workers_speedup": 1.6, "disk_share": 0.05, "input_ms_per_step": 5.0}


def fixture_dataset(fixture, folder: Path) -> tuple[Path, int]:
    """The fixture's images as a save_to_disk dataset of absolute image paths with captions; their bytes."""
    paths = sorted(Path(fixture.images_dir).glob("*.jpg"))
    count = len(paths)
    datasets.Dataset.from_dict(
        {
            "image": [str(path.resolve()) for path in paths],
            "caption": [f"a photo of a dog on a sofa number {i}" for i in range(count)],
            "presence_negated": [f"a photo of a sofa with no dog number {i}" for i in range(count)],
            "absence_negated": [f"a photo of a dog on a sofa with no cat number {i}" for i in range(count)],
        }
    ).save_to_disk(str(folder))
    return folder, sum(path.stat().st_size for path in paths)


class FreeTower(torch.nn.Module):
    """An image tower that costs nothing: preparation's own work, measured alone."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.config = type("Config", (), {"projection_dim": dim})()
        self.vision_model = torch.nn.Identity()
        self.visual_projection = torch.nn.Linear(1, 1)

    def get_image_features(self, pixel_values):
        return pixel_values.new_zeros(pixel_values.shape[0], self.config.projection_dim)


def vit_b32(device: str) -> CLIPModel:
    return CLIPModel(VIT_B_32.config()).eval().to(device)


def _per_image(fn, values: list, repeats: int = 1) -> float:
    """CPU seconds per image of `fn`, in this process, one thread (CPU time: comparable with the
    workers' CPU time, and not inflated by other processes on a shared machine)."""
    start = time.process_time()
    for _ in range(repeats):
        for value in values:
            fn(value)
    return (time.process_time() - start) / (len(values) * repeats)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the decoding workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + usage.ru_utime + usage.ru_stime


def _dir_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _device_rates(raw, folder, columns, tokenizer, transform, images: int, device: str, dtype: str | None) -> dict:
    """On a GPU: preparation with ViT-B/32 embedding on the device (every core a worker), and the
    tower alone on random pixels (the limit preparation approaches)."""
    model = vit_b32(device)
    precision = torch.bfloat16 if dtype == "bf16" else None
    workers = os.cpu_count() or 1

    def refs_run(refs):
        return image_pass(
            refs, transform, model=model, device=device, autocast_dtype=precision, num_workers=workers, batch_size=256
        )

    prepare_dataset([raw], [str(folder)], columns, tokenizer, images=refs_run)  # warm-up: kernels, page cache
    torch.cuda.synchronize()
    start = time.perf_counter()
    prepare_dataset([raw], [str(folder)], columns, tokenizer, images=refs_run)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tower_start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", dtype=precision or torch.float32, enabled=precision is not None):
        pixels = torch.randn(256, 3, 224, 224, device=device)
        for _ in range(10):
            model.get_image_features(pixel_values=pixels)
    torch.cuda.synchronize()
    return {
        "name": torch.cuda.get_device_name(),
        "workers": workers,
        "dtype": dtype or "fp32",
        "prepared_images_per_second": images / seconds,
        "tower_only_images_per_second": 2560 / (time.perf_counter() - tower_start),
    }


def section_preparation(args, fixture) -> dict:
    """The preparation section (see the module docstring)."""
    torch.set_num_threads(1)
    device, dtype = getattr(args, "device", "cpu"), getattr(args, "dtype", None)
    workdir = Path(args.out) / "preparation"
    shutil.rmtree(workdir, ignore_errors=True)
    folder, image_bytes = fixture_dataset(fixture, workdir / "dataset")
    images = len(datasets.load_from_disk(str(folder)))
    processor = CLIPImageProcessorPil()
    tokenizer = build_clip_tokenizer()
    transform = ImageTransform.for_processor(processor)
    sample = sorted(str(path) for path in Path(fixture.images_dir).glob("*.jpg"))[:200]
    limit = _per_image(transform, sample)
    previous = _per_image(lambda path: processor(images=[open_rgb_image(path)], return_tensors="pt"), sample)
    raw = datasets.load_from_disk(str(folder))
    columns = CaptionColumns.from_flags("image", "caption", "presence_negated", "absence_negated")
    runs = {}
    for workers in (1, 2):
        cache = workdir / f"cache-{workers}"
        tower = FreeTower()
        load_before, cpu_before, start = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
        prepare_dataset(
            [raw],
            [str(folder)],
            columns,
            tokenizer,
            images=lambda refs: image_pass(
                refs, transform, model=tower, num_workers=workers, batch_size=64, cache_dir=cache
            ),
        )
        seconds = time.perf_counter() - start
        runs[workers] = {
            "seconds": seconds,
            "images_per_second": images / seconds,
            "cpu_seconds_per_image": (_cpu_seconds() - cpu_before) / images,
            "disk_written_bytes": _dir_bytes(cache),
            "load_average_before": load_before,
        }
    result = {
        "images": images,
        "image_bytes": image_bytes,
        "mean_image_kib": image_bytes / images / 1024,
        "limit_images_per_second_per_core": 1 / limit,
        "previous_images_per_second_per_core": 1 / previous,
        "runs": runs,
        "cpu_per_image_over_limit": runs[1]["cpu_seconds_per_image"] / limit,
        "two_workers_speedup": runs[2]["images_per_second"] / runs[1]["images_per_second"],
        "disk_share": runs[1]["disk_written_bytes"] / image_bytes,
    }
    if device != "cpu":
        result["device"] = _device_rates(raw, folder, columns, tokenizer, transform, images, device, dtype)
    return result


def _old_style_batch(rows: list[dict], pad_token_id: int) -> dict:
    """The previous collator: every caption set padded row by row, embeddings stacked from lists."""
    batch = {"row_ids": torch.tensor([row["row_id"] for row in rows])}
    for name in ("input_ids", "presence_negated_input_ids", "absence_negated_input_ids"):
        sequences = [row[name] for row in rows]
        length = max(len(ids) for ids in sequences)
        ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for index, sequence in enumerate(sequences):
            ids[index, : len(sequence)] = torch.tensor(sequence)
            mask[index, : len(sequence)] = 1
        batch[name], batch[name + "_mask"] = ids, mask
    batch["image_embeds"] = torch.tensor(np.array([row["image_embeds"] for row in rows], dtype=np.float32))
    return batch


def section_input(args, fixture=None, rows: int = 20000, batch: int = 256, steps: int = 30, seed: int = 0) -> dict:
    """The input section (see the module docstring)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    lengths = {
        name: rng.integers(low, high, rows)
        for name, (low, high) in {
            "input_ids": (10, 25),
            "presence_negated_input_ids": (12, 30),
            "absence_negated_input_ids": (13, 31),
        }.items()
    }
    tokens = {
        name: [[BOS_TOKEN_ID] + rng.integers(0, 49000, n - 2).tolist() + [EOS_TOKEN_ID] for n in values]
        for name, values in lengths.items()
    }
    embeds = torch.randn(rows, 512)
    packed = PackedRows(tokens, EOS_TOKEN_ID, image_index=np.arange(rows), image_embeds=embeds)
    table = datasets.Dataset.from_dict(
        {
            "row_id": np.arange(rows),
            "packed_row": np.arange(rows),
            "source_index": np.zeros(rows, dtype=np.int64),
            "source_row": np.arange(rows),
        }
    )
    collator = OmniNegCollator(packed)
    old_table = datasets.Dataset.from_dict({"row_id": np.arange(rows), **tokens, "image_embeds": embeds.numpy()})
    order = rng.permutation(rows)

    def timed(fetch_and_collate) -> float:
        times = []
        for step in range(steps + 3):
            indices = order[(step * batch) % (rows - batch) :][:batch].tolist()
            start = time.perf_counter()
            fetch_and_collate(indices)
            times.append(time.perf_counter() - start)
        return statistics.median(times[3:]) * 1000

    load = os.getloadavg()[0]
    new_ms = timed(lambda indices: collator(table.__getitems__(indices)))
    old_ms = timed(lambda indices: _old_style_batch(old_table.__getitems__(indices), EOS_TOKEN_ID))
    return {
        "rows": rows,
        "batch": batch,
        "steps": steps,
        "ms_per_step": new_ms,
        "previous_ms_per_step": old_ms,
        "speedup": old_ms / new_ms,
        "load_average_before": load,
    }


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def preparation_table(prep: dict) -> list[str]:
    runs = {int(workers): run for workers, run in prep["runs"].items()}
    lines = [
        f"Preparation of {prep['images']} JPEGs (mean {prep['mean_image_kib']:.0f} KiB) as `train.py` prepares them; "
        "CPU time per image, so other processes on the machine do not inflate the per-core figures:",
        "",
        "| what | value | limit / target | verdict |",
        "| --- | --- | --- | --- |",
        "| decode once + preprocess, one core (the limit) "
        f"| {prep['limit_images_per_second_per_core']:.0f} images/s | | |",
        "| previous path (full decode + image processor), one core "
        f"| {prep['previous_images_per_second_per_core']:.0f} images/s | | |",
        f"| preparation, 1 worker | {runs[1]['images_per_second']:.0f} images/s | | |",
        f"| preparation, 2 workers | {runs[2]['images_per_second']:.0f} images/s | | |",
        "| preparation's CPU work per image (all processes, 1 worker) / the limit's "
        f"| {prep['cpu_per_image_over_limit']:.2f}x | <= {TARGETS['cpu_per_image_over_limit']}x "
        f"| {_verdict(prep['cpu_per_image_over_limit'] <= TARGETS['cpu_per_image_over_limit'])} |",
        f"| 1 -> 2 workers | {prep['two_workers_speedup']:.2f}x | >= {TARGETS['two_workers_speedup']}x "
        f"| {_verdict(prep['two_workers_speedup'] >= TARGETS['two_workers_speedup'])} |",
        f"| disk written / image bytes | {100 * prep['disk_share']:.2f} % | <= {100 * TARGETS['disk_share']:.0f} % "
        f"| {_verdict(prep['disk_share'] <= TARGETS['disk_share'])} |",
    ]
    if prep.get("device"):
        device = prep["device"]
        lines.append(
            f"| on {device['name']} ({device['dtype']}, {device['workers']} workers): prepared and embedded "
            f"| {device['prepared_images_per_second']:.0f} images/s "
            f"| the tower alone: {device['tower_only_images_per_second']:.0f} images/s | |"
        )
    return lines


def input_table(inputs: dict) -> list[str]:
    ok = inputs["ms_per_step"] <= TARGETS["input_ms_per_step"]
    return [
        f"Training input path, batch {inputs['batch']} (the Trainer's fetch from its table + the collator), median of "
        f"{inputs['steps']} steps:",
        "",
        "| path | ms/step | target | verdict |",
        "| --- | --- | --- | --- |",
        f"| project (packed rows) | {inputs['ms_per_step']:.2f} | <= {TARGETS['input_ms_per_step']} "
        f"| {_verdict(ok)} |",
        "| previous (token lists and an embedding per row, padded row by row) "
        f"| {inputs['previous_ms_per_step']:.2f} | | |",
    ]
