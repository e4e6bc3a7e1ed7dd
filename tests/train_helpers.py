"""Fixtures shared by the training tests (test_train, test_distributed, test_lora, test_hub): tiny
CLIP folders, small image/caption datasets in the published `save_to_disk` layout, train.py flags
that run in seconds, a way to keep hold of the Trainer that `train.main` builds, and a subprocess runner.
Also the bad-input matrix support of test_train_hardening and test_eval_hardening: `Case`,
`check_case`, and images that are corrupt, truncated or too large (`BAD_IMAGES`) in a few bytes."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel

from omninegclip.common.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def save_tiny_clip(
    path: Path, processor, text_layers: int = 5, logit_scale: float | None = None, seed: int = 0
) -> Path:
    """A Hub-style CLIP folder (weights + processor); `logit_scale` overrides the initial value."""
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(text_layers))
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def color_rows(n: int, presence: bool | int = 2, absence: bool | int = 3, offset: int = 0) -> list[dict]:
    """Rows of plain-colour images with captions. Row i carries a presence negation when `presence`
    is True, or every `presence`-th row when an int (likewise `absence`); None otherwise."""
    names = list(COLORS)

    def has(flag, i):
        return flag if isinstance(flag, bool) else i % flag == 0

    rows = []
    for i in range(offset, offset + n):
        color, other = names[i % 4], names[(i + 1 + i // 4) % 4]
        if other == color:
            other = names[(i + 2) % 4]
        rows.append(
            dict(
                image=Image.new("RGB", (32, 32), COLORS[color]),
                caption=f"a {color} square",
                presence_negated=f"a picture with no {color} square" if has(presence, i) else None,
                absence_negated=f"a {color} square with no {other} circle" if has(absence, i) else None,
            )
        )
    return rows


def save_dataset(path: Path, train_rows: list[dict], validation_rows: list[dict] | None = None) -> Path:
    """A `save_to_disk` DatasetDict with an Image column."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "presence_negated": datasets.Value("string"),
            "absence_negated": datasets.Value("string"),
        }
    )
    splits = {"train": datasets.Dataset.from_list(train_rows, features=features)}
    if validation_rows:
        splits["validation"] = datasets.Dataset.from_list(validation_rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def train_flags(model: Path, data: Path, out: Path, **overrides) -> list[str]:
    """train.py flags for a run of a few seconds; `overrides` replace or add flags (None drops one)."""
    values = dict(
        model_name_or_path=model,
        dataset_name=data,
        output_dir=out,
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        seed=0,
        front_blocks=2,
        logging_steps=1,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        image_embedding_cache_dir=out.parent / f"{out.name}-embedding-cache",
    )
    values.update(overrides)
    flags = []
    for key, value in values.items():
        if value is not None:
            flags += [f"--{key}", str(value)]
    return flags


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def subprocess_env(**extra) -> dict[str, str]:
    # The repository first; then whatever PYTHONPATH already held (bench/gpu_check.sh puts the
    # libraries it installed there).
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONPATH=path,
        **extra,
    )
    env.pop("OMNINEGCLIP_DEBUG", None)
    return env


def run_command(args: list[str], timeout: float | None = None, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=REPO,
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python_module(name: str) -> list[str]:
    return [sys.executable, "-m", name]


def capture_trainers(monkeypatch, *callbacks) -> list:
    """Make `train.main` build a Trainer that records itself (and carries `callbacks`); return the record."""
    import train

    built = []

    class RecordedTrainer(train.OmniNegCLIPTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for callback in callbacks:
                self.add_callback(callback)
            built.append(self)

    monkeypatch.setattr(train, "OmniNegCLIPTrainer", RecordedTrainer)
    return built


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: these tiny models gain nothing from more, and on a shared 2-core machine
    OpenMP threads spinning against other processes make each step several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- bad-input matrices (tests/test_train_hardening.py, tests/test_eval_hardening.py) ------------
#
# The same table-driven style as tests/test_bad_input.py: a row is a `Case` whose `args(root)` builds
# the command line (writing any input it needs under the shared folder `root`); the CLI's `main` runs
# in-process through `run_cli`, must exit with `exit_code` and print every phrase (stdout, stderr and
# logs together), never a traceback; `once` must be printed exactly once.


def png_bytes(mode: str = "RGB", size: int = 8, color=None) -> bytes:
    buffer = io.BytesIO()
    fill = (
        color
        if color is not None
        else {
            "L": 128,
            "LA": (128, 255),
            "P": 3,
            "I;16": 40000,
            "1": 1,
            "RGBA": (200, 30, 30, 128),
            "CMYK": (0, 200, 200, 0),
        }.get(mode, (200, 30, 30))
    )
    Image.new(mode, (size, size), fill).save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_bytes(side: int) -> bytes:
    """A PNG whose header claims side x side pixels, in a few bytes: PIL's decompression-bomb guard
    refuses it on opening when over twice Image.MAX_IMAGE_PIXELS (side 20000), warns above once (10000)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


BAD_IMAGES = {  # name -> bytes, and the skip reason each must be counted under
    "corrupt": (b"this is not an image", "corrupt_image"),
    "truncated": (None, "truncated_image"),  # filled below: a PNG cut in the middle of its pixel data
    "huge": (huge_png_bytes(10000), "image_too_large"),  # over PIL's limit: refused by our guard
    "bomb": (huge_png_bytes(20000), "image_too_large"),  # over twice: refused by PIL itself
}


def _truncated_in_pixel_data() -> bytes:
    noise = bytes((index * 2654435761 >> 13) % 251 for index in range(64 * 64 * 3))  # incompressible-ish
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


BAD_IMAGES["truncated"] = (_truncated_in_pixel_data(), "truncated_image")


@dataclass(frozen=True)
class Case:
    cli: str  # "train" or "eval"
    name: str
    args: Callable[[Path], list[str]]
    exit_code: int
    phrases: tuple[str, ...]
    once: str | None = None

    @property
    def id(self) -> str:
        return f"{self.cli}:{self.name}"


CLI_MODULES = {"train": "train", "eval": "eval.__main__"}


def invoke_cli(module: str, argv: list[str], capsys, caplog) -> tuple[int, str]:
    """Run a CLI's `main` in-process through `run_cli`; return its exit status and everything it
    printed or logged. Anything but SystemExit propagates: the CLI would have shown a traceback."""
    import importlib

    main = importlib.import_module(module).main
    code = 0
    try:
        run_cli(main, argv)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text


def run_case(case: Case, root: Path, capsys, caplog) -> tuple[int, str]:
    """Run the row's CLI in-process; return its exit status and everything it printed or logged."""
    return invoke_cli(CLI_MODULES[case.cli], [str(arg) for arg in case.args(root)], capsys, caplog)


def check_case(case: Case, root: Path, capsys, caplog) -> str:
    code, output = run_case(case, root, capsys, caplog)
    assert code == case.exit_code, output[-3000:]
    for phrase in case.phrases:
        assert phrase in output, f"{phrase!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output
    if case.exit_code:  # one paragraph: ours ("error: …") or argparse's ("python -m eval: error: …")
        errors = [line for line in output.splitlines() if re.search(r"(^|: )error: ", line)]
        assert len(errors) == 1, output[-3000:]
    if case.once:
        assert output.count(case.once) == 1, output[-3000:]
    return output
