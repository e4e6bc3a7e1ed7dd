"""Prepared rows stored once and read back without being held (issue 28): one preparation shared
by the processes of a run and reused by the next launch; batches from the stored rows equal those
from rows held in memory; token files are read, not mapped; a file changed in place is embedded again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from train_helpers import (  # noqa: F401  (single_thread: an autouse fixture)
    color_rows,
    run_command,
    save_dataset,
    save_tiny_clip,
    single_thread,
    train_flags,
)

from omninegclip.training.data import CaptionColumns, OmniNegCollator, PackedRows, prepare_dataset
from omninegclip.training.images import ImageRefs
from omninegclip.training.rowstore import FlatFile

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
COLUMNS = CaptionColumns.from_flags("image", "caption", "presence", "absence")


def photo_rows(folder: Path, count: int, images: int) -> datasets.Dataset:
    """`count` rows over `images` JPEG files given by path; some rows lack a negation, one a caption."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(images):
        path = folder / f"{index}.jpg"
        Image.new("RGB", (36 + index, 40), (20 * index % 256, 90, 160)).save(path)
        paths.append(str(path))
    return datasets.Dataset.from_dict(
        {
            "image": [paths[row % images] for row in range(count)],
            "caption": [None if row == 5 else f"a red ball number {row}" for row in range(count)],
            "presence": [f"no red ball {row}" if row % 2 else None for row in range(count)],
            "absence": [f"a red ball but no cat {row}" if row % 3 else "" for row in range(count)],
        }
    )


def image_numbers(refs, offsets, indices: np.ndarray) -> torch.Tensor:
    """Stands in for the pixels of a batch: each row's image number."""
    return torch.from_numpy(indices)


def log_lines(output: str, words: str) -> list[str]:
    return [line for line in output.splitlines() if words in line]


def test_the_processes_of_a_run_share_one_preparation_and_the_next_launch_reuses_it(tmp_path, processor):
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(32), color_rows(16, offset=32))
    cache = tmp_path / "prepared"
    flags = lambda out: train_flags(  # noqa: E731
        model,
        data,
        out,
        max_steps=1,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        eval_strategy="steps",
        eval_steps=1,
        prepared_data_cache_dir=cache,
    )
    result = run_command(
        TORCHRUN + ["--nproc_per_node", "2", "train.py", *flags(tmp_path / "run")], ACCELERATE_USE_CPU="1"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # One process (the first) tokenized and stored each split; the other read what it stored.
    for split in ("train", "eval"):
        assert len(log_lines(output, f"{split} rows: stored the prepared rows in")) == 1, split
        assert len(log_lines(output, f"{split} rows: reusing the prepared rows in")) == 1, split
    folders = sorted(path.name for path in cache.iterdir() if path.is_dir())
    assert len(folders) == 2 and all(name.startswith("split-") for name in folders)  # no partial folder left
    # A later launch on the same data tokenizes nothing and stores nothing.
    result = run_command([sys.executable, "train.py", *flags(tmp_path / "again")])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert len(log_lines(output, "rows: reusing the prepared rows in")) == 2
    assert not log_lines(output, "stored the prepared rows") and "tokenizing" not in output


def test_batches_from_stored_rows_equal_batches_from_rows_in_memory(tmp_path, tokenizer):
    dataset = photo_rows(tmp_path / "images", 40, 7)
    prepared = {}
    for where in ("memory", "disk"):
        split, (report,) = prepare_dataset(
            [dataset], ["photos"], COLUMNS, tokenizer, cache_dir=None if where == "memory" else tmp_path / "cache"
        )
        prepared[where] = (split, report)
        assert report.kept == 39 and report.skips.counts == {"missing_caption": 1}
    (memory, _), (disk, _) = prepared["memory"], prepared["disk"]
    assert all(isinstance(flat, FlatFile) for flat in disk.store.ids.values())  # read with pread, not mapped
    assert all(isinstance(flat, np.ndarray) for flat in memory.store.ids.values())
    assert memory.tokens == disk.tokens and np.array_equal(memory.image_index, disk.image_index)
    batches = {}
    for where, (split, _) in prepared.items():
        packed, tables = PackedRows.from_splits({"train": split}, tokenizer.pad_token_id, pixels=image_numbers)
        rows = [tables["train"][row] for row in (38, 0, 17, 5, 6)]
        batches[where] = OmniNegCollator(packed)(rows)
        assert not any(".npy" in line and "ids." in line for line in Path("/proc/self/maps").read_text().splitlines())
    assert batches["memory"].keys() == batches["disk"].keys()
    for name, value in batches["memory"].items():
        assert torch.equal(value, batches["disk"][name]), name
    # Row 5 (no caption) is left out: table rows 38, 0, 17, 5, 6 are dataset rows 39, 0, 18, 6, 7, and the
    # odd ones carry a presence negation.
    assert [tables["train"][row]["source_row"] for row in (38, 0, 17, 5, 6)] == [39, 0, 18, 6, 7]
    assert batches["disk"]["presence_mask"].tolist() == [True, False, False, False, True]


def test_rows_reused_but_an_image_changed_in_place_is_another_image(tmp_path, tokenizer):
    dataset = photo_rows(tmp_path / "images", 12, 3)
    seen = []

    def record(refs: ImageRefs):
        from omninegclip.training.images import image_pass

        seen.append(refs.digest)
        return image_pass(refs, None, num_workers=0)

    prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, images=record, cache_dir=tmp_path / "cache")
    prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, images=record, cache_dir=tmp_path / "cache")
    assert seen[0] == seen[1]
    changed = tmp_path / "images" / "1.jpg"
    Image.new("RGB", (50, 50), (0, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # another time, whatever the clock says
    prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, images=record, cache_dir=tmp_path / "cache")
    assert seen[2] != seen[0]  # the embeddings' cache key changes: the image is embedded again


def test_a_damaged_stored_split_is_named_rebuilt_and_replaced(tmp_path, tokenizer, caplog):
    dataset = photo_rows(tmp_path / "images", 12, 3)
    cache = tmp_path / "cache"
    first, _ = prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, cache_dir=cache)
    expected = first.tokens
    (folder,) = cache.glob("split-*")
    ids = folder / "ids.caption.npy"
    ids.write_bytes(ids.read_bytes()[:-10])  # a copy cut short
    with caplog.at_level("WARNING"):
        again, _ = prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, cache_dir=cache)
    assert f"the prepared rows in {folder} cannot be read" in caplog.text
    assert again.tokens == expected and [path.name for path in cache.iterdir()] == [folder.name]


def test_partial_folders_of_other_machines_are_left_alone(tmp_path, tokenizer):
    dataset = photo_rows(tmp_path / "images", 12, 3)
    cache = tmp_path / "cache"
    cache.mkdir()
    other_machine = cache / "split-0123456789abcdef.partial-another-host-1"  # pid 1 lives there, not here
    gone_here = cache / f"split-0123456789abcdef.partial-{socket.gethostname()}-{dead_pid()}"
    for folder in (other_machine, gone_here):
        folder.mkdir()
    prepare_dataset([dataset], ["photos"], COLUMNS, tokenizer, cache_dir=cache)
    assert other_machine.is_dir() and not gone_here.exists()


def dead_pid() -> int:
    """The pid of a process that has finished."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(finished.stdout)
