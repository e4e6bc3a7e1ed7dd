"""The bad-input matrix (issue 9): every command-line tool against every kind of bad input, as one table.

A row is `Case(cli, name, args, exit_code, phrases)`: `args(fx)` builds the command line from the shared
fixture folder `fx`; the run must exit with `exit_code` and print every phrase (stdout, stderr and
logs together). A non-zero exit must come as an `error:` paragraph and never with a traceback; an
exit of 0 is a counted skip (or a handled input) whose reason the printed summary shows.

To add a row for another tool: append a `Case` to `CASES` (its `cli` a key of `CLIS`), building any
input it needs with a `Fixtures` method. Rows for `train.py` and `python -m eval` hold only what works
today. Also here: the real entry points in a subprocess (no traceback; `--debug` and
`OMNINEGCLIP_DEBUG=1` show one), and "no trust_remote_code=True anywhere".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from test_run_safety import gradient_16_bit_png
from train_helpers import invoke_cli
from transformers import CLIPModel, GPT2Config, GPT2LMHeadModel

import data_builder
from omninegclip.building import storage
from omninegclip.common.cli import UserError, run_cli

REPO = Path(__file__).resolve().parent.parent
CLIS = {"data_builder": "data_builder", "train": "train", "eval": "eval.__main__"}  # cli -> module with main(argv)
MARKER = "PWNED"  # what the malicious pickle would write if it were ever unpickled


class Evil:
    """Unpickling this runs code that writes a file: a loader that does so is unsafe."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


def png_bytes(mode: str = "RGB", size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128 if mode in ("L", "LA") else (200, 30, 30, 255)[: len(mode)]).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


class Fixtures:
    """Inputs for the rows, written once per session into one folder (each made on first use)."""

    def __init__(self, root: Path, processor):
        self.root = root
        self.processor = processor
        self._outputs = 0
        images = root / "images"
        images.mkdir()
        for name, mode, size in (
            ("ok.png", "RGB", 8),
            ("rgba.png", "RGBA", 8),
            ("gray.png", "L", 8),
            ("big.png", "RGB", 64),
        ):
            (images / name).write_bytes(png_bytes(mode, size))
        (images / "grad16.png").write_bytes(gradient_16_bit_png())
        (images / "corrupt.png").write_bytes(b"this is not an image")
        (images / "trunc.png").write_bytes(png_bytes()[:40])
        self.images = images

    def path(self, name: str) -> str:
        return str(self.root / name)

    def out(self) -> str:
        """A fresh output folder (not created); `last_out` remembers it for a row's `check`."""
        self._outputs += 1
        self.last_out = self.root / "outputs" / f"out{self._outputs}"
        return str(self.last_out)

    def existing_out(self) -> str:
        path = Path(self.out())
        path.mkdir(parents=True)
        (path / "precious.txt").write_text("x")
        return str(path)

    def locked_out(self, pid: int) -> str:
        """A fresh output folder holding a run lock of process `pid`."""
        path = Path(self.out())
        path.mkdir(parents=True)
        (path / "_omninegclip.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
        return str(path)

    @staticmethod
    def dead_pid() -> int:
        """The id of a process that has finished."""
        finished = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        )
        return int(finished.stdout)

    def write(self, name: str, text: str | bytes) -> str:
        path = self.root / name
        if not path.exists():
            path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text, encoding="utf-8")
        return str(path)

    def jsonl(self, name: str, rows: list[object]) -> str:
        return self.write(name, "".join(json.dumps(row) + "\n" for row in rows))

    def pairs(self, name: str, *extra: dict) -> str:
        """A JSONL image-caption file: two good rows, then `extra`."""
        good = [
            {"image": "images/ok.png", "caption": "a dog on a couch"},
            {"image": "images/ok.png", "caption": "a cat on a bed"},
        ]
        return self.jsonl(name, [*good, *extra])

    def coco(self, captions: dict | str | None = None) -> list[str]:
        """`coco` flags of a small valid COCO; `captions` replaces the captions file (a dict, or raw text)."""
        images = [
            {"id": 1, "file_name": "ok.png", "width": 8, "height": 8},
            {"id": 2, "file_name": "gray.png", "width": 8, "height": 8},
        ]
        if not (self.root / "instances.json").exists():
            self.write(
                "instances.json",
                json.dumps(
                    {
                        "images": images,
                        "categories": [{"id": 18, "name": "dog"}, {"id": 63, "name": "couch"}],
                        "annotations": [
                            {"image_id": 1, "category_id": 18, "bbox": [0, 0, 2, 2]},
                            {"image_id": 2, "category_id": 63, "bbox": [0, 0, 4, 4]},
                        ],
                    }
                ),
            )
        good = {
            "images": images,
            "annotations": [
                {"id": 1, "image_id": 1, "caption": "a dog"},
                {"id": 2, "image_id": 2, "caption": "a couch"},
            ],
        }
        if captions is None:
            name = self.write("captions.json", json.dumps(good))
        else:
            text = captions if isinstance(captions, str) else json.dumps(captions)
            name = self.write(f"captions-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json", text)
        return ["coco", "--captions", name, "--instances", self.path("instances.json"), "--images", str(self.images)]

    def ccneg(self, name: str, second_negative: object) -> str:
        """A CC-Neg .pt of two items on ok.png: a good one, and one whose negative prompt is `second_negative`."""
        path = self.root / name
        if not path.exists():

            def entry(negative):
                return {
                    "json": {"caption": "a dog on a couch"},
                    "sop_data": {"negative-prompt": negative, "sop_chosen_object": "dog"},
                }

            torch.save(
                {
                    "image_paths": ["/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/ok.png"] * 2,
                    "annotations": [entry("no dog on a couch"), entry(second_negative)],
                },
                path,
            )
        return str(path)

    def evil_pickle(self) -> str:
        path = self.root / "evil.pt"
        if not path.exists():
            with path.open("wb") as handle:
                pickle.dump({"image_paths": ["x.jpg"], "annotations": [Evil(self.root / MARKER)]}, handle, protocol=2)
        return str(path)

    # --- models and datasets for train.py and eval

    def clip(self) -> str:
        path = self.root / "clip"
        if not path.exists():
            torch.manual_seed(0)
            CLIPModel(tiny_clip_config()).save_pretrained(path)
            self.processor.save_pretrained(path)
        return str(path)

    def broken_clip(self, kind: str) -> str:
        """A CLIP folder whose weights are wrong: `deeper_config` (3-layer weights, config says 5),
        `truncated` (model.safetensors cut in half) or `no_processor` (weights and config only)."""
        path = self.root / f"clip_{kind}"
        if not path.exists():
            shutil.copytree(self.clip(), path)
            if kind == "deeper_config":
                torch.manual_seed(0)
                CLIPModel(tiny_clip_config(3)).save_pretrained(path)
                config = json.loads((path / "config.json").read_text())
                config["text_config"]["num_hidden_layers"] = 5
                (path / "config.json").write_text(json.dumps(config))
            elif kind == "truncated":
                data = (path / "model.safetensors").read_bytes()
                (path / "model.safetensors").write_bytes(data[: len(data) // 2])
            else:
                for name in path.iterdir():
                    if name.name not in ("config.json", "model.safetensors"):
                        name.unlink()
        return str(path)

    def gpt2(self) -> str:
        path = self.root / "gpt2"
        if not path.exists():
            config = GPT2Config(
                vocab_size=16, n_embd=8, n_layer=1, n_head=2, n_positions=32, bos_token_id=1, eos_token_id=1
            )
            GPT2LMHeadModel(config).save_pretrained(path)
        return str(path)

    def folder(self, name: str) -> str:
        (self.root / name).mkdir(exist_ok=True)
        return self.path(name)

    def dataset(
        self,
        name: str,
        captions: list[object],
        modes: tuple[str, ...] = ("RGB",),
        features: datasets.Features | None = None,
    ) -> str:
        """A save_to_disk DatasetDict with the builder's contract columns."""
        path = self.root / name
        if not path.exists():
            rows = [
                dict(
                    image={"bytes": png_bytes(modes[index % len(modes)]), "path": f"{index}.png"},
                    caption=caption,
                    presence_negated="no dog on a couch",
                    absence_negated="a dog on a couch with no cat",
                    absence_affirmed="a dog on a couch, with a cat",
                    present_objects=["dog", "couch"],
                    negated_object="dog",
                    absent_object="cat",
                    presence_rewrite="t",
                    absence_rewrite="t",
                    source="t",
                    image_id=str(index),
                    source_index=index,
                )
                for index, caption in enumerate(captions)
            ]
            features = features or data_builder.contract_features()
            split = (
                datasets.Dataset.from_list(rows, features=features)
                if rows
                else datasets.Dataset.from_dict({key: [] for key in features}, features=features)
            )
            datasets.DatasetDict(train=split).save_to_disk(str(path), num_shards={"train": 1})
        return str(path)

    def train_args(self, dataset: str, *extra: str) -> list[str]:
        output = [] if "--output_dir" in extra else ["--output_dir", self.out()]
        return [
            "--model_name_or_path",
            self.clip(),
            "--dataset_name",
            dataset,
            *output,
            "--report_to",
            "none",
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "2",
            "--use_cpu",
            "true",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            *extra,
        ]

    def checkpoint(self) -> str:
        """The checkpoint-1 folder of a one-step run on the `good` dataset (trained on first use)."""
        run = self.root / "run_with_checkpoint"
        if not (run / "checkpoint-1").is_dir():
            import train

            train.main(
                [
                    *self.train_args(self.dataset("good", ["a dog"] * 4), "--output_dir", str(run)),
                    "--save_strategy",
                    "steps",
                    "--save_steps",
                    "1",
                ]
            )
            self.checkpoint_digest = folder_digest(run)
        return str(run / "checkpoint-1")

    def good_run(self, *extra: str) -> list[str]:
        """train.py flags for a one-step run on four good rows, then `extra`."""
        return self.train_args(self.dataset("good", ["a dog"] * 4), *extra)

    def mcq(self, name: str, *images: str, caption: str = "a dog") -> str:
        header = "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
        return self.write(
            name,
            header + "".join(f"{self.images / image},0,{caption},no dog,a cat,no cat,negation\n" for image in images),
        )

    def eval_args(self, model: str, *extra: str) -> list[str]:
        return [model, "--out", self.out(), "--no_progress", *extra]


@dataclass(frozen=True)
class Case:
    cli: str  # a key of CLIS
    name: str
    args: Callable[[Fixtures], list[str]]
    exit_code: int
    phrases: tuple[str, ...]
    once: str | None = None  # a phrase that must be printed exactly once
    check: Callable[[Fixtures], None] | None = None  # asserts what was (not) written, after the run

    @property
    def id(self) -> str:
        return f"{self.cli}:{self.name}"


def no_weights(folder: Path) -> None:
    """Nothing that looks like a trained model was written into `folder`."""
    written = sorted(path.name for path in Path(folder).glob("*")) if Path(folder).is_dir() else []
    assert not [
        name for name in written if name.endswith((".safetensors", ".bin")) or name in ("README.md", "config.json")
    ], written


def gradient_kept(out: Path) -> None:
    """The built dataset holds the 16-bit gradient as >= 200 grey levels in their order (not whitened)."""
    import numpy as np

    built = storage.load_with_images(out)
    images = [image for split in built.values() for image in split["image"] if image.width == 256]
    assert len(images) == 1, len(images)
    row = np.asarray(images[0].convert("RGB"))[0, :, 0].tolist()
    assert len(set(row)) >= 200 and row == sorted(row) and max(row) < 255, row


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones aside) and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }


def unchanged(folder: Path, digest: dict[str, str]) -> None:
    assert folder_digest(folder) == digest


def tie_scored_both_ways(out: Path) -> None:
    """The right option tied with a later one: wrong by the project's rule, right by NegBench's argmax."""
    results = json.loads((Path(out) / "results.json").read_text())
    metrics = results["metrics"]["negbench_mcq"]
    assert list(metrics["accuracy"].values()) == [0.0] and list(metrics["accuracy_argmax"].values()) == [1.0], metrics
    assert results["tasks"]["negbench_mcq"]["counts"]["ties_won_by_order"] == 1


def nothing_written(folder: Path) -> None:
    assert not Path(folder).exists() or not any(Path(folder).iterdir()), sorted(Path(folder).iterdir())


def holds_only(folder: Path, names: list[str]) -> None:
    """Nothing was added to `folder`: its entries (hidden ones only where named) are exactly `names`."""
    found = sorted(path.name for path in Path(folder).iterdir() if not path.name.startswith(".") or path.name in names)
    assert found == sorted(names), found


def holds(folder: Path, names: list[str]) -> None:
    """The run wrote (or kept) each of `names` in `folder`."""
    missing = [name for name in names if not (Path(folder) / name).exists()]
    assert not missing, (missing, sorted(path.name for path in Path(folder).iterdir()))


def db(*args: str) -> list[str]:
    return [*args, "--no_progress"]


LONG_CAPTION = "a dog " + "and a long winding description of the room " * 12 + "on a couch"

CASES = [
    # ------------------------------------------------------------------ data_builder.py: flags
    Case("data_builder", "no_source", lambda fx: [], 2, ("the following arguments are required: SOURCE",)),
    Case("data_builder", "missing_out", lambda fx: ["shapes"], 2, ("the following arguments are required: --out",)),
    Case(
        "data_builder",
        "unknown_source",
        lambda fx: ["imagenet", "--out", fx.out()],
        2,
        ("invalid choice: 'imagenet'",),
    ),
    Case(
        "data_builder",
        "unknown_flag",
        lambda fx: ["shapes", "--out", fx.out(), "--colour", "red"],
        2,
        ("unrecognized arguments: --colour red",),
    ),
    Case(
        "data_builder",
        "wrong_type_int",
        lambda fx: ["shapes", "--out", fx.out(), "--num_train", "many"],
        2,
        ("argument --num_train: invalid int value: 'many'",),
    ),
    Case(
        "data_builder",
        "wrong_type_float",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--validation_fraction", "half"),
        2,
        ("argument --validation_fraction: invalid float value: 'half'",),
    ),
    Case(
        "data_builder",
        "fraction_out_of_range",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--validation_fraction", "1.5"),
        2,
        ("--validation_fraction 1.5 must be in [0, 1)",),
    ),
    Case(
        "data_builder",
        "negative_count",
        lambda fx: db("shapes", "--out", fx.out(), "--num_train", "-1"),
        2,
        ("--num_train -1 must be at least 0",),
    ),
    Case(
        "data_builder",
        "image_size_zero",
        lambda fx: db("shapes", "--out", fx.out(), "--image_size", "0"),
        2,
        ("--image_size 0 must be between 8 and 1024",),
    ),
    Case(
        "data_builder",
        "max_image_pixels_zero",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--max_image_pixels", "0"),
        2,
        ("--max_image_pixels 0 must be at least 1",),
    ),
    Case(
        "data_builder",
        "download_timeout_zero",
        lambda fx: db("captions", "--dataset", fx.pairs("p.jsonl"), "--out", fx.out(), "--download_timeout", "0"),
        2,
        ("--download_timeout 0.0 must be > 0 seconds",),
    ),
    Case(
        "data_builder",
        "out_is_a_file",
        lambda fx: db(*fx.coco(), "--out", fx.write("a_file", "x")),
        2,
        ("a_file: is a file, expected a folder",),
    ),
    Case(
        "data_builder",
        "out_not_writable",
        lambda fx: db(*fx.coco(), "--out", fx.write("a_file", "x") + "/sub/out"),
        2,
        (
            "--out",
            "a_file/sub/out: its folder",
            "is not writable (Not a directory); nothing was done",
        ),
    ),
    Case(
        "data_builder",
        "out_exists",
        lambda fx: db(*fx.coco(), "--out", fx.existing_out()),
        2,
        ("already exists; pass --overwrite to replace it",),
    ),
    Case(
        "data_builder",
        "overwrite_not_ours",
        lambda fx: db(*fx.coco(), "--out", fx.existing_out(), "--overwrite"),
        2,
        ("--overwrite only replaces a dataset this tool built",),
    ),
    # ------------------------------------------------------------------ data_builder.py: files
    Case(
        "data_builder",
        "captions_file_missing",
        lambda fx: db("coco", "--captions", fx.path("nowhere.json"), *fx.coco()[3:], "--out", fx.out()),
        2,
        ("nowhere.json: no such file (expected a COCO captions_*.json file)",),
    ),
    Case(
        "data_builder",
        "images_folder_missing",
        lambda fx: db(*fx.coco()[:5], "--images", fx.path("no_images"), "--out", fx.out()),
        2,
        ("no_images: no such folder (the --images folder of images)",),
    ),
    Case(
        "data_builder",
        "malformed_json",
        lambda fx: db(*fx.coco('{"images": [}'), "--out", fx.out()),
        2,
        ("not valid JSON (line 1, column 13",),
    ),
    Case(
        "data_builder",
        "missing_key",
        lambda fx: db(
            *fx.coco({"images": [], "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1}]}),
            "--out",
            fx.out(),
        ),
        2,
        ("annotations[1] has no 'caption' key",),
    ),
    Case(
        "data_builder",
        "id_of_wrong_type",
        lambda fx: db(*fx.coco({"images": [], "annotations": [{"image_id": [1], "caption": "a"}]}), "--out", fx.out()),
        2,
        ("'image_id' in annotations[0] is a list ([1]), expected an integer or a string id",),
    ),
    Case(
        "data_builder",
        "empty_coco",
        lambda fx: db(*fx.coco({"images": [], "annotations": []}), "--out", fx.out()),
        2,
        ("the source has no usable rows: no rows at all",),
    ),
    Case(
        "data_builder",
        "dataset_missing",
        lambda fx: db("captions", "--dataset", fx.path("nowhere.jsonl"), "--out", fx.out()),
        2,
        ("nowhere.jsonl: no such file or folder",),
    ),
    Case(
        "data_builder",
        "unknown_file_type",
        lambda fx: db("captions", "--dataset", fx.write("pairs.txt", "x"), "--out", fx.out()),
        2,
        ("pairs.txt: cannot tell how to read a '.txt' file; pass --loader json|csv|parquet",),
    ),
    Case(
        "data_builder",
        "missing_column",
        lambda fx: db("captions", "--dataset", fx.pairs("p.jsonl"), "--caption_column", "text", "--out", fx.out()),
        2,
        ("p.jsonl: has no column 'text' (--caption_column); its columns are ['image', 'caption']",),
    ),
    Case(
        "data_builder",
        "missing_split",
        lambda fx: db("captions", "--dataset", fx.pairs("p.jsonl"), "--split", "test", "--out", fx.out()),
        2,
        ("has no split 'test' (--split); it has ['train']",),
    ),
    Case(
        "data_builder",
        "malformed_jsonl_row",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.write("broken.jsonl", '{"image": "images/ok.png", "caption": "a dog"}\n{"image": "x", "caption": \n'),
            "--out",
            fx.out(),
        ),
        2,
        ("broken.jsonl: line 2 is not valid JSON (Expecting value, column 27)",),
    ),
    Case(
        "data_builder",
        "jsonl_row_not_an_object",
        lambda fx: db(
            "captions", "--dataset", fx.pairs("list_row.jsonl", ["images/ok.png", "a dog"]), "--out", fx.out()
        ),
        2,
        ("list_row.jsonl: line 3 is a list (['images/ok.png', 'a dog']), expected an object",),
    ),
    Case(
        "data_builder",
        "malformed_csv_row",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.write("broken.csv", "image,caption\nimages/ok.png,a dog\nimages/ok.png,a dog, with a hat\n"),
            "--out",
            fx.out(),
        ),
        2,
        ("broken.csv: line 3 has 3 fields, but the header has 2 (image, caption)",),
    ),
    Case(
        "data_builder",
        "empty_csv",
        lambda fx: db("captions", "--dataset", fx.write("empty.csv", ""), "--out", fx.out()),
        2,
        ("empty.csv: empty, expected a header row",),
    ),
    Case(
        "data_builder",
        "empty_jsonl",
        lambda fx: db("captions", "--dataset", fx.write("empty.jsonl", "\n"), "--out", fx.out()),
        2,
        ("empty.jsonl: the source has no usable rows: no rows at all",),
    ),
    Case(
        "data_builder",
        "not_utf8",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.write("latin1.csv", "image,caption\nimages/ok.png,caf\xe9\n".encode("latin-1")),
            "--out",
            fx.out(),
        ),
        2,
        ("latin1.csv: not UTF-8 text",),
    ),
    Case(
        "data_builder",
        "no_usable_caption",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.jsonl(
                "bad_captions.jsonl",
                [
                    {"image": "images/ok.png", "caption": 3},
                    {"image": "images/ok.png", "caption": " "},
                    {"image": "images/ok.png"},
                ],
            ),
            "--out",
            fx.out(),
        ),
        2,
        (
            "bad_captions.jsonl: the source has no usable rows: skipped 3 (caption_not_text: 1 [bad_captions.jsonl "
            "line 1 (column 'caption')]; "
            "empty_caption: 1 [bad_captions.jsonl line 2 (column 'caption')]; missing_caption: 1 [bad_captions.jsonl "
            "line 3 (column 'caption')])",
        ),
    ),
    Case(
        "data_builder",
        "no_image_found",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.jsonl(
                "no_images.jsonl",
                [
                    {"image": "images/nope1.png", "caption": "a dog on a couch"},
                    {"image": "images/nope2.png", "caption": "a cat on a bed"},
                ],
            ),
            "--out",
            fx.out(),
        ),
        2,
        ("no_images.jsonl: no row could be written (", "row:missing_image: 2"),
    ),
    Case(
        "data_builder",
        "malicious_pickle",
        lambda fx: db("ccneg", "--annotations", fx.evil_pickle(), "--images", str(fx.images), "--out", fx.out()),
        2,
        ("evil.pt: refused to load: the file needs arbitrary unpickling of exec, which could run code",),
    ),
    Case(
        "data_builder",
        "not_a_torch_file",
        lambda fx: db(
            "ccneg",
            "--annotations",
            fx.write("garbage.pt", b"not a torch file"),
            "--images",
            str(fx.images),
            "--out",
            fx.out(),
        ),
        2,
        ("garbage.pt: not a readable torch.save file",),
    ),
    Case(
        "data_builder",
        "negationclip_missing_key",
        lambda fx: db(
            "negationclip",
            "--annotations",
            fx.write(
                "negclip.json",
                json.dumps(
                    {
                        "images": [{"id": 1, "file_name": "ok.png"}],
                        "annotations": [{"image_id": 1, "caption": "a dog"}],
                    }
                ),
            ),
            "--images",
            str(fx.images),
            "--out",
            fx.out(),
        ),
        2,
        ("negclip.json: annotations[0] has no 'updated_caption' key",),
    ),
    Case(
        "data_builder",
        "rewriter_folder_missing",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--rewriter_model", fx.path("no_model")),
        2,
        ("--rewriter_model", "no_model': no such folder (expected a text-generation model folder or a Hub id)"),
    ),
    Case(
        "data_builder",
        "rewriter_is_clip",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--rewriter_model", fx.clip()),
        2,
        ("its config.json has model_type 'clip', which is not a text-generation (causal language) model",),
    ),
    Case(
        "data_builder",
        "rewriter_not_a_model",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--rewriter_model", fx.folder("not_a_model")),
        2,
        ("not_a_model': holds no config.json (expected a text-generation model folder)",),
    ),
    Case(
        "data_builder",
        "rewriter_hub_id_offline",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--rewriter_model", "nobody/no-such-lm"),
        2,
        ("--rewriter_model 'nobody/no-such-lm': could not load a text-generation model",),
    ),
    # ------------------------------------------------------------------ data_builder.py: counted skips
    Case(
        "data_builder",
        "caption_not_text",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs(
                "not_text.jsonl",
                {"image": "images/ok.png", "caption": 7},
                {"image": "images/ok.png", "caption": {"en": "a dog"}},
            ),
            "--out",
            fx.out(),
        ),
        0,
        (
            "source:caption_not_text: 2 [not_text.jsonl line 3 (column 'caption'); not_text.jsonl line 4 (column "
            "'caption')]",
        ),
    ),
    Case(
        "data_builder",
        "empty_and_missing_captions",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs(
                "empty_caps.jsonl",
                {"image": "images/ok.png", "caption": ""},
                {"image": "images/ok.png", "caption": None},
                {"image": "images/ok.png"},
            ),
            "--out",
            fx.out(),
        ),
        0,
        (
            "source:empty_caption: 1 [empty_caps.jsonl line 3 (column 'caption')]",
            "source:missing_caption: 2 [empty_caps.jsonl line 4 (column 'caption'); empty_caps.jsonl line 5 (column "
            "'caption')]",
        ),
    ),
    Case(
        "data_builder",
        "csv_empty_cell",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.write("cells.csv", "image,caption\nimages/ok.png,a dog on a couch\nimages/ok.png,\n"),
            "--out",
            fx.out(),
        ),
        0,
        ("source:empty_caption: 1 [cells.csv line 3 (column 'caption')]",),
    ),
    Case(
        "data_builder",
        "corrupt_image",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("corrupt.jsonl", {"image": "images/corrupt.png", "caption": "a dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("row:corrupt_image: 1 [corrupt.png]",),
    ),
    Case(
        "data_builder",
        "truncated_image",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("trunc.jsonl", {"image": "images/trunc.png", "caption": "a dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("row:corrupt_image: 1 [trunc.png]",),
    ),
    Case(
        "data_builder",
        "missing_image",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("missing.jsonl", {"image": "images/nope.png", "caption": "a dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("row:missing_image: 1 [nope.png]",),
    ),
    Case(
        "data_builder",
        "huge_image",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("huge.jsonl", {"image": "images/big.png", "caption": "a dog"}),
            "--out",
            fx.out(),
            "--max_image_pixels",
            "1000",
        ),
        0,
        ("row:image_too_large: 1 [big.png]",),
    ),
    Case(
        "data_builder",
        "grayscale_and_rgba_images",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs(
                "modes.jsonl",
                {"image": "images/gray.png", "caption": "a dog"},
                {"image": "images/rgba.png", "caption": "a cat"},
            ),
            "--out",
            fx.out(),
        ),
        0,
        ("converted to RGB from L: 1", "converted to RGB from RGBA: 1"),
    ),
    Case(
        "data_builder",
        "image_16_bit_scaled_not_whitened",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("grad16.jsonl", {"image": "images/grad16.png", "caption": "a dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("converted to RGB from I;16: 1",),
        check=lambda fx: gradient_kept(fx.last_out),
    ),
    Case(
        "data_builder",
        "presence_negation_still_affirms_its_object",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("two_dogs.jsonl", {"image": "images/ok.png", "caption": "a dog and another dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("presence:object_still_affirmed: 1",),
    ),
    Case(
        "data_builder",
        "image_url_not_http",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("file_url.jsonl", {"image": "file:///etc/hostname", "caption": "a dog"}),
            "--out",
            fx.out(),
        ),
        0,
        ("row:image_url_not_http: 1 [file:///etc/hostname]",),
    ),
    Case(
        "data_builder",
        "caption_of_unknown_image",
        lambda fx: db(
            *fx.coco(
                {
                    "images": [{"id": 1, "file_name": "ok.png"}],
                    "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 99, "caption": "a cat"}],
                }
            ),
            "--out",
            fx.out(),
        ),
        0,
        ("source:caption_of_unknown_image: 1 [", "annotations[1] (image_id 99)]"),
    ),
    Case(
        "data_builder",
        "caption_over_77_tokens",
        lambda fx: db(
            "captions",
            "--dataset",
            fx.pairs("long.jsonl", {"image": "images/ok.png", "caption": LONG_CAPTION}),
            "--out",
            fx.out(),
        ),
        0,
        ("longer than CLIP's 77 tokens (the text encoder reads only their start): caption 1",),
        once="77 tokens",
    ),
    # ---------------------------------------------------------- data_builder.py: COCO / CC-Neg readers (issue 14)
    Case(
        "data_builder",
        "coco_duplicate_image_id",
        lambda fx: db(
            *fx.coco(
                {
                    "images": [{"id": 1, "file_name": "ok.png"}, {"id": 1, "file_name": "gray.png"}],
                    "annotations": [{"image_id": 1, "caption": "a dog"}],
                }
            ),
            "--out",
            fx.out(),
        ),
        2,
        (
            "images[1] repeats id 1 of images[0] with another file ('gray.png', not 'ok.png'); image ids must be "
            "unique",
        ),
    ),
    Case(
        "data_builder",
        "coco_image_id_string_vs_int",
        lambda fx: db(
            *fx.coco(
                {"images": [{"id": 1, "file_name": "ok.png"}], "annotations": [{"image_id": "1", "caption": "a dog"}]}
            ),
            "--out",
            fx.out(),
        ),
        2,
        (
            "'image_id' in annotations[0] is the string '1' but its 'images' list has the id as the integer 1; the "
            "types differ",
        ),
    ),
    Case(
        "data_builder",
        "captions_per_image_negative",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--captions_per_image", "-3"),
        2,
        ("--captions_per_image -3 must be 0 (all of an image's captions) or more",),
    ),
    Case(
        "data_builder",
        "images_dir_missing",
        lambda fx: db(
            "captions", "--dataset", fx.pairs("p.jsonl"), "--images_dir", fx.path("no_such_dir"), "--out", fx.out()
        ),
        2,
        ("no_such_dir: no such folder (the --images_dir folder of images)",),
    ),
    Case(
        "data_builder",
        "num_proc_zero",
        lambda fx: db(*fx.coco(), "--out", fx.out(), "--num_proc", "0"),
        2,
        ("--num_proc 0 must be at least 1",),
    ),
    Case(
        "data_builder",
        "ccneg_negative_prompt_not_text",
        lambda fx: db(
            "ccneg",
            "--annotations",
            fx.ccneg("int_prompt.pt", 7),
            "--images",
            str(fx.images),
            "--eval_size",
            "0",
            "--out",
            fx.out(),
        ),
        0,
        ("presence:ccneg_negative_prompt_not_text: 1",),
    ),
    # ------------------------------------------------------------------ train.py (what works today)
    Case("train", "no_dataset", lambda fx: [], 2, ("--dataset_name is required",)),
    Case(
        "train",
        "unknown_flag",
        lambda fx: fx.train_args(fx.dataset("good", ["a dog"] * 4), "--colour", "red"),
        2,
        ("unknown flag(s) in the command line: ['--colour', 'red']",),
    ),
    Case(
        "train",
        "wrong_type",
        lambda fx: fx.train_args(fx.dataset("good", ["a dog"] * 4), "--learning_rate", "fast"),
        2,
        ("argument --learning_rate/--learning-rate: invalid float value: 'fast'",),
    ),
    Case(
        "train",
        "caption_length_over_77",
        lambda fx: fx.train_args(fx.dataset("good", ["a dog"] * 4), "--max_caption_length", "100"),
        2,
        ("--max_caption_length must be in 3..77 (CLIP's context), got 100",),
    ),
    Case(
        "train",
        "model_folder_missing",
        lambda fx: [
            "--model_name_or_path",
            fx.path("no_model"),
            *fx.train_args(fx.dataset("good", ["a dog"] * 4))[2:],
        ],
        2,
        ("no_model' does not exist (expected a CLIP checkpoint folder or a Hub id)",),
    ),
    Case(
        "train",
        "model_not_clip",
        lambda fx: ["--model_name_or_path", fx.gpt2(), *fx.train_args(fx.dataset("good", ["a dog"] * 4))[2:]],
        2,
        (
            "--model_name_or_path '",
            "gpt2': not a CLIP checkpoint (its config.json has model_type 'gpt2', expected 'clip')",
        ),
    ),
    Case(
        "train",
        "model_folder_without_config",
        lambda fx: [
            "--model_name_or_path",
            fx.folder("not_a_model"),
            *fx.train_args(fx.dataset("good", ["a dog"] * 4))[2:],
        ],
        2,
        (
            "--model_name_or_path '",
            "not_a_model': not a CLIP checkpoint (a folder without config.json)",
        ),
    ),
    Case(
        "train",
        "model_hub_id_offline",
        lambda fx: [
            "--model_name_or_path",
            "nobody/no-such-clip",
            *fx.train_args(fx.dataset("good", ["a dog"] * 4))[2:],
        ],
        2,
        ("--model_name_or_path 'nobody/no-such-clip': cannot read its config as a Hub id or folder",),
    ),
    Case(
        "train",
        "dataset_missing",
        lambda fx: fx.train_args(fx.path("no_data")),
        2,
        ("no_data' does not exist: expected a save_to_disk folder, data files or a Hub id",),
    ),
    Case(
        "train",
        "empty_dataset",
        lambda fx: fx.train_args(fx.dataset("empty", [])),
        2,
        ("empty': its training split (--train_split) is empty: nothing to train on",),
    ),
    Case(
        "train",
        "missing_column",
        lambda fx: fx.train_args(fx.dataset("good", ["a dog"] * 4), "--presence_column", "negated"),
        2,
        ("has no column 'negated' (set by --presence_column)",),
    ),
    Case(
        "train",
        "caption_not_text",
        lambda fx: fx.train_args(
            fx.dataset(
                "int_captions",
                [1, 2, 3],
                features=datasets.Features({**data_builder.contract_features(), "caption": datasets.Value("int64")}),
            )
        ),
        2,
        (
            "int_captions': no usable row (column 'caption'): skipped 3 (caption_not_text: 3 [row 0, column "
            "'caption': int 1; "
            "row 1, column 'caption': int 2; row 2, column 'caption': int 3])",
        ),
    ),
    Case(
        "train",
        "empty_captions",
        lambda fx: fx.train_args(fx.dataset("empty_captions", ["", "", ""])),
        2,
        (
            "empty_captions': no usable row (column 'caption'): skipped 3 (empty_caption: 3 [row 0, column 'caption'; "
            "row 1, column 'caption'; row 2, column 'caption'])",
        ),
    ),
    Case("train", "config_file_missing", lambda fx: [fx.path("nowhere.yaml")], 2, ("nowhere.yaml does not exist",)),
    Case(
        "train",
        "config_file_malformed",
        lambda fx: [fx.write("bad.yaml", "learning_rate: [1, 2\n")],
        2,
        ("bad.yaml is not valid YAML/JSON",),
    ),
    Case(
        "train",
        "config_file_not_a_mapping",
        lambda fx: [fx.write("list.yaml", "- a\n- b\n")],
        2,
        ("must hold a mapping of flag names to values, got list",),
    ),
    Case(
        "train",
        "long_captions_and_rgba_gray_images",
        lambda fx: fx.train_args(fx.dataset("long_captions", [LONG_CAPTION] * 4, modes=("RGBA", "L"))),
        0,
        ("truncated 4 caption(s) longer than 77 tokens",),
        once="longer than 77 tokens",
    ),
    # ------------------------------------------------------------------ train.py: runs that would be wrong (issue 14)
    Case(
        "train",
        "zero_steps_drop_last",
        lambda fx: fx.good_run("--per_device_train_batch_size", "64", "--dataloader_drop_last", "true"),
        2,
        (
            "this run would train 0 steps",
            "4 training rows, a global batch of 64 rows",
            "--dataloader_drop_last",
            "0 batches per epoch",
            "--per_device_train_batch_size <= 4",
        ),
        check=lambda fx: no_weights(fx.last_out),
    ),
    Case(
        "train",
        "zero_steps_zero_epochs",
        lambda fx: fx.good_run("--max_steps", "-1", "--num_train_epochs", "0"),
        2,
        (
            "this run would train 0 steps",
            "--num_train_epochs 0.0 with 4 training rows",
            "pass --max_steps >= 1 or --num_train_epochs > 0",
        ),
        check=lambda fx: no_weights(fx.last_out),
    ),
    Case(
        "train",
        "zero_steps_max_steps_0",
        lambda fx: fx.good_run("--max_steps", "0"),
        2,
        ("this run would train 0 steps", "--max_steps 0 with 4 training rows"),
        check=lambda fx: no_weights(fx.last_out),
    ),
    Case(
        "train",
        "output_dir_not_empty",
        lambda fx: fx.good_run("--output_dir", fx.existing_out()),
        2,
        ("is not empty (precious.txt) and this run does not resume a checkpoint of it: pass --overwrite_output_dir",),
        check=lambda fx: holds_only(fx.last_out, ["precious.txt"]),
    ),
    Case(
        "train",
        "output_dir_not_empty_overwrite",
        lambda fx: fx.good_run("--output_dir", fx.existing_out(), "--overwrite_output_dir", "true"),
        0,
        ("--overwrite_output_dir: writing over the files in",),
        check=lambda fx: holds(fx.last_out, ["model.safetensors", "precious.txt"]),
    ),
    Case(
        "train",
        "output_dir_is_the_dataset",
        lambda fx: fx.good_run("--output_dir", fx.dataset("good", [])),
        2,
        ("overlaps the training data", "the model would overwrite the dataset's files"),
        check=lambda fx: holds_only(fx.root / "good", ["dataset_dict.json", "train"]),
    ),
    Case(
        "train",
        "output_dir_inside_the_dataset",
        lambda fx: fx.good_run("--output_dir", fx.path("good/model")),
        2,
        ("overlaps the training data",),
        check=lambda fx: holds_only(fx.root / "good", ["dataset_dict.json", "train"]),
    ),
    Case(
        "train",
        "output_dir_locked_by_a_running_run",
        lambda fx: fx.good_run("--output_dir", fx.locked_out(pid=1)),
        2,
        ("is in use by another run (pid 1, lock file",),
        check=lambda fx: holds_only(fx.last_out, ["_omninegclip.lock"]),
    ),
    Case(
        "train",
        "output_dir_lock_of_a_dead_run",
        lambda fx: fx.good_run("--output_dir", fx.locked_out(pid=fx.dead_pid())),
        0,
        ("taking over the lock of pid", "which is no longer running"),
        check=lambda fx: holds(fx.last_out, ["model.safetensors"]),
    ),
    Case(
        "train",
        "output_dir_not_writable",
        lambda fx: fx.good_run("--output_dir", fx.write("a_file", "x") + "/run"),
        2,
        (
            "--output_dir",
            "a_file/run' is not writable (Not a directory); nothing was done",
        ),
    ),
    Case(
        "train",
        "prepared_data_cache_dir_not_writable",
        lambda fx: fx.good_run("--prepared_data_cache_dir", fx.write("a_cache_file", "x") + "/rows"),
        2,
        (
            "--prepared_data_cache_dir",
            "a_cache_file/rows' is not writable (Not a directory); nothing was done",
        ),
    ),
    Case(
        "train",
        "text_blocks_blank",
        lambda fx: fx.good_run("--text_blocks", " "),
        2,
        ("--text_blocks ' ' selects no text block",),
    ),
    Case(
        "train",
        "text_preset_overrides_front_blocks",
        lambda fx: fx.good_run("--front_blocks", "1", "--text_preset", "back"),
        0,
        (
            "--text_preset back decides the text blocks; --front_blocks 1 given too and ignored",
            "text blocks that train: [3, 4] of 5 (chosen by --text_preset back)",
        ),
    ),
    Case(
        "train",
        "text_blocks_logged",
        lambda fx: fx.good_run(),
        0,
        ("text blocks that train: [0, 1] of 5 (chosen by the default (the front half))",),
    ),
    Case(
        "train",
        "resume_with_other_settings",
        lambda fx: fx.train_args(
            fx.dataset("other", ["a cat"] * 6),
            "--resume_from_checkpoint",
            fx.checkpoint(),
            "--output_dir",
            str(Path(fx.checkpoint()).parent),
            "--max_steps",
            "2",
            "--lambda_text",
            "0.5",
            "--text_blocks",
            "0",
        ),
        2,
        (
            "checkpoint-1 was saved by a run with other settings: datasets",
            "good'] in the checkpoint",
            "other'] now",
            "loss settings (--lambda_*, --margin)",
            "text blocks that train: [0, 1] in the checkpoint, [0] now",
            "or start a new run from its weights with --model_name_or_path",
        ),
        check=lambda fx: unchanged(Path(fx.checkpoint()).parent, fx.checkpoint_digest),
    ),
    Case(
        "train",
        "resume_with_the_same_settings",
        lambda fx: fx.good_run(
            "--resume_from_checkpoint",
            fx.checkpoint(),
            "--output_dir",
            str(Path(fx.checkpoint()).parent),
            "--max_steps",
            "2",
        ),
        0,
        ("wrote the checkpoint",),
    ),
    Case(
        "train",
        "batch_of_one_row",
        lambda fx: fx.good_run("--per_device_train_batch_size", "1"),
        0,
        (
            "a global batch of 1 row (--per_device_train_batch_size 1 x 1 process): the in-batch terms "
            "loss_presence_text, "
            "loss_absence_negated, loss_absence_original compare each row only with itself and are 0",
        ),
    ),
    Case(
        "train",
        "no_negation_at_all",
        lambda fx: fx.good_run("--presence_column", "none", "--absence_column", "none"),
        0,
        ("no training row has a presence or an absence negation", "this is plain CLIP fine-tuning, not Omni-NegCLIP"),
    ),
    Case(
        "train",
        "learning_rate_nan",
        lambda fx: fx.good_run("--learning_rate", "nan"),
        2,
        ("--learning_rate nan: expected a finite number >= 0",),
    ),
    Case(
        "train",
        "learning_rate_negative",
        lambda fx: fx.good_run("--learning_rate", "-1"),
        2,
        ("--learning_rate -1.0: expected a finite number >= 0",),
    ),
    Case(
        "train",
        "loss_weight_infinite",
        lambda fx: fx.good_run("--lambda_text", "inf"),
        2,
        ("bad loss setting: lambda_text must be a finite number >= 0, got inf",),
    ),
    Case(
        "train",
        "negation_columns_swapped",
        lambda fx: fx.good_run("--presence_column", "absence_negated", "--absence_column", "presence_negated"),
        0,
        (
            "in 4 of 4 rows checked, the --absence_column 'presence_negated' text negates the row's negated_object",
            "the two columns look swapped (try --presence_column presence_negated --absence_column absence_negated)",
        ),
    ),
    Case(
        "train",
        "negation_identical_to_caption",
        lambda fx: fx.train_args(fx.dataset("same_as_caption", ["no dog on a couch", "a dog"] * 2)),
        0,
        (
            "dataset",
            "same_as_caption': 2 of the first 4 rows have a --presence_column 'presence_negated' text identical to "
            "their caption (rows 0, 2)",
        ),
    ),
    Case(
        "train",
        "config_file_list_for_a_scalar",
        lambda fx: [fx.write("list_lr.yaml", "learning_rate: [1.0e-5, 2.0e-5]\n")],
        2,
        (
            "config file",
            "list_lr.yaml: key 'learning_rate' holds a list ([1e-05, 2e-05]), but --learning_rate takes one value",
        ),
    ),
    Case(
        "train",
        "config_file_save_strategy_no",
        lambda fx: [fx.write("strategy_no.yaml", "save_strategy: no\neval_strategy: no\n"), *fx.good_run()],
        0,
        ("wrote the checkpoint",),
    ),
    Case(
        "train",
        "weights_do_not_fit_the_config",
        lambda fx: ["--model_name_or_path", fx.broken_clip("deeper_config"), *fx.good_run()[2:]],
        2,
        (
            "clip_deeper_config/model.safetensors does not fit its config.json: missing from the weights (they would "
            "stay random): "
            "text_model.encoder.layers.3.layer_norm1.bias",
        ),
    ),
    Case(
        "train",
        "weights_truncated",
        lambda fx: ["--model_name_or_path", fx.broken_clip("truncated"), *fx.good_run()[2:]],
        2,
        ("clip_truncated/model.safetensors cannot be read (", "the file is truncated or corrupt"),
    ),
    # ------------------------------------------------------------------ python -m eval (what works today)
    Case("eval", "no_arguments", lambda fx: [], 2, ("the following arguments are required: MODEL, --tasks, --out",)),
    Case(
        "eval",
        "missing_tasks",
        lambda fx: fx.eval_args(fx.clip()),
        2,
        ("the following arguments are required: --tasks",),
    ),
    Case(
        "eval",
        "unknown_flag",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "negbench_mcq", "--colour"),
        2,
        ("unrecognized arguments: --colour",),
    ),
    Case(
        "eval",
        "wrong_type",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "negbench_mcq", "--batch_size", "many"),
        2,
        ("argument --batch_size: invalid int value: 'many'",),
    ),
    Case(
        "eval",
        "negative_max_items",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png"), "--max_items", "-1"
        ),
        2,
        ("--max_items must be positive",),
    ),
    Case(
        "eval",
        "unknown_task",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "imagenet"),
        2,
        ("--tasks: unknown task 'imagenet'; known tasks:",),
    ),
    Case(
        "eval",
        "missing_data_flag",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "negbench_mcq"),
        2,
        ("task negbench_mcq needs --negbench_mcq",),
    ),
    Case(
        "eval",
        "model_folder_missing",
        lambda fx: fx.eval_args(
            fx.path("no_model"), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png")
        ),
        2,
        (
            "model ",
            "no_model does not exist (expected a CLIP checkpoint folder or a Hub id)",
        ),
    ),
    Case(
        "eval",
        "model_not_clip",
        lambda fx: fx.eval_args(
            fx.gpt2(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png")
        ),
        2,
        (
            "model ",
            "gpt2: not a CLIP checkpoint (its config.json has model_type 'gpt2', expected 'clip')",
        ),
    ),
    Case(
        "eval",
        "model_folder_without_config",
        lambda fx: fx.eval_args(
            fx.folder("not_a_model"), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png")
        ),
        2,
        ("not_a_model: not a CLIP checkpoint (a folder without config.json)",),
    ),
    Case(
        "eval",
        "model_hub_id_offline",
        lambda fx: fx.eval_args(
            "nobody/no-such-clip", "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png")
        ),
        2,
        ("model nobody/no-such-clip: cannot read its config as a Hub id or folder",),
    ),
    Case(
        "eval",
        "data_file_missing",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.path("nowhere.csv")),
        2,
        ("--negbench_mcq", "nowhere.csv: no such file or folder"),
    ),
    Case(
        "eval",
        "malformed_csv_row",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.write(
                "mcq_short.csv",
                "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\nx.png,0,a,b,c\n",
            ),
        ),
        2,
        (
            "mcq_short.csv: line 2 has 5 fields, but the header has 7 (image_path, correct_answer, caption_0, "
            "caption_1, caption_2, "
            "caption_3, correct_answer_template)",
        ),
    ),
    Case(
        "eval",
        "missing_column",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.write("mcq_cols.csv", "image_path,caption\nx.png,a\n"),
        ),
        2,
        ("mcq_cols.csv: the header has no column 'correct_answer'",),
    ),
    Case(
        "eval",
        "empty_csv",
        lambda fx: fx.eval_args(fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.write("empty.csv", "")),
        2,
        ("empty.csv: empty, expected a header row naming the columns",),
    ),
    Case(
        "eval",
        "malformed_json",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "valse", "--valse", fx.write("valse.json", '{"a": {"image_file": "ok.png"')
        ),
        2,
        ("valse.json: not valid JSON (line 1",),
    ),
    Case(
        "eval",
        "malicious_pickle",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "ccneg", "--ccneg", fx.evil_pickle(), "--ccneg_images", str(fx.images)
        ),
        2,
        ("evil.pt: refused to load: the file needs arbitrary unpickling",),
    ),
    Case(
        "eval",
        "corrupt_image",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_corrupt.csv", "corrupt.png")
        ),
        2,
        ("cannot read the image", "corrupt.png"),
    ),
    Case(
        "eval",
        "truncated_image",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_trunc.csv", "trunc.png")
        ),
        2,
        ("cannot read the image", "trunc.png"),
    ),
    Case(
        "eval",
        "missing_image",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_missing.csv", "nope.png")
        ),
        2,
        ("mcq_missing.csv, line 2: missing image",),
    ),
    Case(
        "eval",
        "empty_caption",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "layerwise",
            "--layerwise",
            fx.dataset("empty_captions", ["", "", ""]),
            "--layerwise_split",
            "train",
        ),
        2,
        ("no caption pairs to analyse: skipped 3 (empty_caption: 3",),
    ),
    Case(
        "eval",
        "image_16_bit",
        lambda fx: fx.eval_args(
            fx.clip(), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_16bit.csv", "grad16.png")
        ),
        0,
        ("negbench_mcq",),
    ),
    Case(
        "eval",
        "weights_do_not_fit_the_config",
        lambda fx: fx.eval_args(
            fx.broken_clip("deeper_config"),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.mcq("mcq_ok.csv", "ok.png"),
        ),
        2,
        (
            "model ",
            "clip_deeper_config/model.safetensors does not fit its config.json: missing from the weights",
        ),
    ),
    Case(
        "eval",
        "weights_truncated",
        lambda fx: fx.eval_args(
            fx.broken_clip("truncated"), "--tasks", "negbench_mcq", "--negbench_mcq", fx.mcq("mcq_ok.csv", "ok.png")
        ),
        2,
        ("clip_truncated/model.safetensors cannot be read (",),
    ),
    Case(
        "eval",
        "second_model_without_processor",
        lambda fx: [
            fx.clip(),
            *fx.eval_args(
                fx.broken_clip("no_processor"),
                "--tasks",
                "negbench_mcq",
                "--negbench_mcq",
                fx.mcq("mcq_ok.csv", "ok.png"),
            ),
        ],
        2,
        ("clip_no_processor: cannot load the CLIP weights and processor",),
        check=lambda fx: nothing_written(fx.last_out),
    ),
    Case(
        "eval",
        "single_option_mcq",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.write("mcq_one_option.csv", f"image_path,correct_answer,caption_0\n{fx.images / 'ok.png'},0,a dog\n"),
        ),
        2,
        (
            "task negbench_mcq: no item to evaluate",
            "left out 1 item(s) with a single option, which any model gets right",
        ),
        check=lambda fx: nothing_written(fx.last_out),
    ),
    Case(
        "eval",
        "retrieval_over_one_image",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "retrieval",
            "--retrieval",
            fx.write(
                "karpathy_one.json",
                json.dumps(
                    {
                        "images": [
                            {
                                "filename": "ok.png",
                                "split": "test",
                                "sentences": [{"raw": "a dog"}, {"raw": "a red square"}],
                            }
                        ]
                    }
                ),
            ),
            "--retrieval_images",
            str(fx.images),
        ),
        2,
        ("task retrieval: retrieval over 1 image(s) scores 100 % for any model",),
        check=lambda fx: nothing_written(fx.last_out),
    ),
    Case(
        "eval",
        "karpathy_image_without_sentences",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "retrieval",
            "--retrieval",
            fx.write(
                "karpathy_empty.json",
                json.dumps(
                    {
                        "images": [
                            {
                                "filename": name,
                                "split": "test",
                                "sentences": [{"raw": f"a {name}"}] if name != "gray.png" else [],
                            }
                            for name in ("ok.png", "gray.png", "rgba.png")
                        ]
                    }
                ),
            ),
            "--retrieval_images",
            str(fx.images),
        ),
        0,
        ("image_without_caption: 1 [",),
    ),
    Case(
        "eval",
        "out_not_writable",
        lambda fx: [
            fx.clip(),
            "--out",
            fx.write("a_file", "x") + "/results",
            "--no_progress",
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.mcq("mcq_ok.csv", "ok.png"),
        ],
        2,
        (
            "--out",
            "a_file/results' is not writable (Not a directory); nothing was done",
        ),
    ),
    Case(
        "eval",
        "tied_options_scored_by_both_rules",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.write(
                "mcq_tie.csv",
                "image_path,correct_answer,caption_0,caption_1\n" + f"{fx.images / 'ok.png'},0,a dog,a dog\n",
            ),
        ),
        0,
        ("negbench_mcq",),
        check=lambda fx: tie_scored_both_ways(fx.last_out),
    ),
    Case(
        "eval",
        "long_caption_rgba_gray_images",
        lambda fx: fx.eval_args(
            fx.clip(),
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            fx.mcq("mcq_long.csv", "rgba.png", "gray.png", caption=LONG_CAPTION),
        ),
        0,
        ("1 texts longer than 77 tokens were truncated",),
        once="longer than 77 tokens",
    ),
]


@pytest.fixture(scope="module")
def fx(tmp_path_factory, processor) -> Fixtures:
    return Fixtures(tmp_path_factory.mktemp("bad_input"), processor)


@pytest.fixture(autouse=True)
def no_debug(monkeypatch, caplog):
    monkeypatch.delenv("OMNINEGCLIP_DEBUG", raising=False)
    caplog.set_level(logging.INFO, logger="omninegclip.train")  # what train.py says it trains


def run_case(case: Case, fx: Fixtures, capsys, caplog) -> tuple[int, str]:
    return invoke_cli(CLIS[case.cli], case.args(fx), capsys, caplog)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_matrix(case: Case, fx: Fixtures, capsys, caplog):
    code, output = run_case(case, fx, capsys, caplog)
    assert code == case.exit_code, output[-3000:]
    for phrase in case.phrases:
        assert phrase in output, f"{phrase!r} not in:\n{output[-3000:]}"
    assert "Traceback" not in output
    if case.exit_code:
        assert re.search(r"(^|: |\r\s*)error: ", output, re.MULTILINE), output[-3000:]  # \r: after a progress bar
    if case.once:
        assert output.count(case.once) == 1, output[-3000:]
    if case.check:
        case.check(fx)
    assert not (fx.root / MARKER).exists()  # the malicious pickle was never unpickled


def test_matrix_covers_every_cli_and_names_are_unique():
    assert {case.cli for case in CASES} == set(CLIS)
    assert len({case.id for case in CASES}) == len(CASES)


def test_debug_flag_and_environment_show_the_traceback(fx, monkeypatch, capsys):
    argv = db(*fx.coco({"images": [], "annotations": []}), "--out", fx.out())
    with pytest.raises(UserError, match="the source has no usable rows"):
        run_cli(data_builder.main, [*argv, "--debug"])
    monkeypatch.setenv("OMNINEGCLIP_DEBUG", "1")
    with pytest.raises(UserError, match="the source has no usable rows"):
        run_cli(data_builder.main, argv)
    monkeypatch.setenv("OMNINEGCLIP_DEBUG", "0")
    with pytest.raises(SystemExit):
        run_cli(data_builder.main, argv)


def _run(*command: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "OMNINEGCLIP_DEBUG"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True, env=environment)


def test_real_entry_points_print_one_paragraph_and_no_traceback(fx):
    missing = fx.path("nowhere.json")
    plain = _run(
        "data_builder.py",
        "coco",
        "--captions",
        missing,
        "--instances",
        missing,
        "--images",
        str(fx.images),
        "--out",
        fx.out(),
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith(f"error: {missing}: no such file (expected a COCO captions_*.json file)\n")
    debug = _run(
        "data_builder.py",
        "coco",
        "--captions",
        missing,
        "--instances",
        missing,
        "--images",
        str(fx.images),
        "--out",
        fx.out(),
        "--debug",
    )
    assert (
        debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr and "UserError" in debug.stderr
    )
    evaluation = _run("-m", "eval", fx.path("no_model"), "--tasks", "nonsense", "--out", fx.out())
    assert (
        evaluation.returncode == 2
        and "Traceback" not in evaluation.stderr
        and "unknown task 'nonsense'" in evaluation.stderr
    )


def test_help_of_every_subcommand_describes_it():
    parser = data_builder._parser()
    top = parser.format_help()
    for source in ("coco", "captions", "ccneg", "negationclip", "shapes"):
        assert source in top
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([source, "--help"])
        assert exit_info.value.code == 0
    assert "--debug" in top and "OMNINEGCLIP_DEBUG=1" in top


# ---------------------------------------------------------------------------------------- safe loading

_TRUST_REMOTE_CODE_ON = re.compile(r"trust_remote_code\s*[=:]\s*True|[\"']trust_remote_code[\"']\s*:\s*True")


def _repository_files() -> list[Path]:
    """Tracked files and new ones git does not ignore (not .venv, build outputs or caches)."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:  # not a git checkout: every file outside hidden folders
        return [
            path for path in REPO.rglob("*") if not any(part.startswith(".") for part in path.relative_to(REPO).parts)
        ]
    return [REPO / line for line in listed.stdout.splitlines()]


def test_no_trust_remote_code_anywhere():
    offenders = []
    for path in _repository_files():
        if path.suffix not in (".py", ".yaml", ".yml", ".json", ".md", ".toml", ".cfg", ".txt") or not path.is_file():
            continue
        if path == Path(__file__).resolve():
            continue  # this file names the pattern
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(REPO)}: {match.group(0)}" for match in _TRUST_REMOTE_CODE_ON.finditer(text)]
    assert offenders == []
    assert any(path.name == "data_builder.py" for path in _repository_files())  # the search did look at the code


def test_model_loaders_here_refuse_remote_code_explicitly(monkeypatch):
    """The rewriter passes trust_remote_code=False to transformers; datasets 5.x runs no dataset scripts at all."""
    import transformers

    from omninegclip.building.rewrite import LLMRewriter

    seen = {}
    monkeypatch.setattr(
        transformers,
        "pipeline",
        lambda *args, **kwargs: seen.update(kwargs) or (lambda prompt, **kw: [{"generated_text": ""}]),
    )
    LLMRewriter.from_pretrained("some/model")
    assert seen["trust_remote_code"] is False
    import inspect

    assert "trust_remote_code" not in inspect.signature(datasets.load_dataset).parameters


# ======================================================================================================
# Issue 25: the demo, the image-embedding cache and the data builder. Rows for `app.py` refuse a model
# at start (a successful start would serve, so it is tested in test_app.py, with the demo's inputs);
# the full disk and two concurrent builds need a mount, a monkeypatch or a second process: tests below.

CLIS["app"] = "app"


def bert_with_clip_processor(fx: Fixtures) -> str:
    """A BERT checkpoint folder holding CLIP's processor files: it looks like a CLIP folder to anything
    that reads only the processor."""
    from transformers import BertConfig, BertModel

    path = fx.root / "bert_with_clip_processor"
    if not path.exists():
        BertModel(
            BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
        ).save_pretrained(path)
        fx.processor.save_pretrained(path)
    return str(path)


def truncated_embedding_cache(fx: Fixtures) -> str:
    """An image-embedding cache folder whose one file was cut in half (made by a one-step run on first
    use); `fx.intact_cache` keeps the file's bytes."""
    cache = fx.root / "embedding_cache_cut_short"
    if not cache.exists():
        import train

        train.main(fx.good_run("--image_embedding_cache_dir", str(cache)))
        (path,) = cache.glob("image_embeds-*.safetensors")
        fx.intact_cache = path.read_bytes()
        path.write_bytes(fx.intact_cache[: len(fx.intact_cache) // 2])
    return str(cache)


def cache_rebuilt(fx: Fixtures) -> None:
    (path,) = (fx.root / "embedding_cache_cut_short").glob("image_embeds-*.safetensors")
    assert path.read_bytes() == fx.intact_cache


def statement_shapes(fx: Fixtures) -> list[str]:
    return db(
        "shapes",
        "--out",
        fx.out(),
        "--num_train",
        "12",
        "--num_validation",
        "2",
        "--num_test",
        "2",
        "--image_size",
        "16",
        "--statement_rate",
        "1",
    )


CASES += [  # the table the matrix test is parametrized with (pytest reads it at collection, after this line)
    Case(
        "app",
        "model_weights_do_not_fit_the_config",
        lambda fx: ["--model", fx.broken_clip("deeper_config"), "--base", fx.clip()],
        2,
        (
            "--model ",
            "clip_deeper_config/model.safetensors does not fit its config.json: missing from the weights (they would "
            "stay random): "
            "text_model.encoder.layers.3.layer_norm1.bias",
        ),
    ),
    Case(
        "app",
        "model_is_bert_with_clip_processor",
        lambda fx: ["--model", bert_with_clip_processor(fx), "--base", fx.clip()],
        2,
        (
            "--model ",
            "bert_with_clip_processor: not a CLIP checkpoint (its config.json has model_type 'bert', expected 'clip')",
        ),
    ),
    Case(
        "app",
        "base_weights_truncated",
        lambda fx: ["--model", fx.clip(), "--base", fx.broken_clip("truncated")],
        2,
        ("--base ", "clip_truncated/model.safetensors cannot be read (", "the file is truncated or corrupt"),
    ),
    Case(
        "train",
        "image_embedding_cache_truncated",
        lambda fx: fx.good_run("--image_embedding_cache_dir", truncated_embedding_cache(fx)),
        0,
        (
            "the cached image pass ",
            "embedding_cache_cut_short/image_embeds-",
            ".safetensors cannot be used (",
            "decoding the images again and replacing it",
            "wrote the checkpoint",
        ),
        check=cache_rebuilt,
    ),
    Case(
        "data_builder",
        "statement_rate_without_absence_negations",
        lambda fx: db(
            "ccneg",
            "--annotations",
            fx.ccneg("presence_only.pt", "a couch with no dog"),
            "--images",
            str(fx.images),
            "--eval_size",
            "0",
            "--out",
            fx.out(),
            "--statement_rate",
            "1",
        ),
        0,
        (
            "statements (--statement_rate 1.0): 0 extra rows, for the 2 rows; a statement row needs both a presence "
            "and an absence negation, which 0 rows have "
            "(2 presence only, 0 absence only)",
            "WARNING: --statement_rate 1.0 wrote no statement: no row has both negations (none has an absence "
            "negation); "
            "CC-Neg gives presence negations only: pass --synthesize_absence",
        ),
    ),
    Case(
        "data_builder",
        "statement_rate_reported",
        statement_shapes,
        0,
        ("statements (--statement_rate 1.0): ",),
        once="statements (",
    ),
]


def test_data_builder_on_a_full_disk_names_out_and_leaves_it_unchanged(fx, capsys, caplog, monkeypatch):
    """No space left while the dataset is saved (as pyarrow reports it: errno 28 and no file name),
    here raised by a stand-in so that the row runs everywhere; the real disk is the next test."""
    import errno

    out = fx.out()
    code, output = invoke_cli("data_builder", db(*fx.coco(), "--out", out), capsys, caplog)
    assert code == 0, output[-3000:]
    before = folder_digest(Path(out))

    def disk_full(self, path, *args, **kwargs):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "data-00000-of-00001.arrow").write_bytes(b"half a table")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", disk_full)
    case = Case(
        "data_builder",
        "disk_full",
        lambda fx: db(*fx.coco(), "--out", out, "--overwrite"),
        2,
        (
            f"error: --out {out}: the disk is full (No space left on device): the build had written ",
            " MiB beside --out when it ran out of space",
            "Nothing at --out was changed and the partial build was removed (",
            " MiB free there now): free space on that disk, or pass an --out on a disk with more room",
        ),
    )
    test_bad_input_matrix(case, fx, capsys, caplog)
    unchanged(Path(out), before)
    assert [
        path.name for path in Path(out).parent.iterdir() if path.name.startswith(f".{Path(out).name}.")
    ] == []  # no partial build, no lock


@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MiB tmpfs, unmounted afterwards; skipped where this process may not mount one."""
    mount = tmp_path / "full_disk"
    mount.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount command here: a real full disk (a 1 MiB tmpfs) cannot be made")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"mounting a 1 MiB tmpfs is not allowed here ({mounted.stderr.strip() or 'mount failed'}): it needs root "
            f"and a container that may mount"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, check=False)


def test_data_builder_on_a_real_full_disk(fx, full_disk, capsys, caplog):
    """A 1.4 MB image into a 1 MiB tmpfs: the worker that stores it runs out of space."""
    noise = fx.root / "noise.png"
    if not noise.exists():
        Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)).save(noise)  # random pixels do not compress
    pairs = fx.jsonl(
        "noise.jsonl",
        [{"image": str(noise), "caption": "a dog on a couch"}, {"image": str(noise), "caption": "a cat on a bed"}],
    )
    out = full_disk / "pairs"
    case = Case(
        "data_builder",
        "disk_full_tmpfs",
        lambda fx: db("captions", "--dataset", pairs, "--out", str(out)),
        2,
        (
            f"error: --out {out}: the disk is full (No space left on device)",
            "the partial build was removed (1.0 MiB free there now)",
        ),
    )
    test_bad_input_matrix(case, fx, capsys, caplog)
    assert list(full_disk.iterdir()) == []


def test_data_builder_refuses_a_second_build_into_the_same_folder(fx):
    """Two real processes with --overwrite into one folder: the second is refused while the first
    holds it (the first is paused once it holds the lock, so the order does not depend on timing),
    naming the folder and the first build; the first then finishes and its build is the one kept."""
    import signal
    import time

    out = Path(fx.out())
    lock = out.parent / f".{out.name}.omninegclip.lock"
    environment = {key: value for key, value in os.environ.items() if key != "OMNINEGCLIP_DEBUG"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    flags = [
        "--out",
        str(out),
        "--overwrite",
        "--num_validation",
        "2",
        "--num_test",
        "2",
        "--image_size",
        "16",
        "--no_progress",
    ]
    first = subprocess.Popen(
        [sys.executable, "data_builder.py", "shapes", "--num_train", "300", *flags],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (lock.is_file() and f'"pid": {first.pid},' in lock.read_text()):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = _run("data_builder.py", "shapes", "--num_train", "4", *flags)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        first_out, first_err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert second.stderr.startswith(
        f"error: --out '{out}' is in use by another build (pid {first.pid}, lock file {lock}; "
        f"its command: data_builder.py shapes --num_train 300 --out {out} --overwrite"
    ), second.stderr
    assert (
        "two builds into one folder would replace each other's data; wait for it, pass another --out" in second.stderr
    )
    assert first.returncode == 0 and f"built shapes -> {out}" in first_out, first_err[-3000:]
    written = json.loads((out / "build_summary.json").read_text())
    assert (
        written["rows_in"] == 304 and written["rows_out"]["train"] > 300
    )  # the first build's (and its statement rows)
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------
# Issue 25: train.py. Rows that refuse before anything slow, or that handle the input; the stale
# checkpoints of an overwritten run, SIGTERM (a real signal) and a full disk (a real 1 MiB tmpfs) need
# several runs, a second process or a mount: tests below.

NOTHING_TRAINS = [
    "--front_blocks",
    "0",
    "--train_token_embedding",
    "false",
    "--train_position_embedding",
    "false",
    "--train_final_layer_norm",
    "false",
    "--train_text_projection",
    "false",
    "--train_logit_scale",
    "false",
]


def empty_validation_split(fx: Fixtures) -> str:
    """Four good training rows and a validation split with no row."""
    path = fx.root / "empty_validation"
    if not path.exists():
        train_split = datasets.load_from_disk(fx.dataset("good", ["a dog"] * 4))["train"]
        splits = datasets.DatasetDict({"train": train_split, "validation": train_split.select([])})
        splits.save_to_disk(str(path), num_shards={"train": 1, "validation": 1})  # an empty split needs its one shard
    return str(path)


def fp16_recorded_off(fx: Fixtures) -> None:
    record = json.loads((fx.last_out / "training_provenance.json").read_text())
    assert record["training_arguments"]["fp16"] is False


CASES += [
    Case(
        "train",
        "nothing_trains",
        lambda fx: fx.good_run(*NOTHING_TRAINS),
        2,
        ("nothing would train: --front_blocks/--text_preset/--text_blocks chose no text block and every --train_*",),
    ),
    Case(
        "train",
        "best_model_metric_that_no_evaluation_reports",
        lambda fx: fx.good_run(
            "--metric_for_best_model",
            "eval_nonexistent_accuracy",
            "--load_best_model_at_end",
            "true",
            "--eval_strategy",
            "steps",
            "--save_strategy",
            "steps",
        ),
        2,
        (
            "--metric_for_best_model eval_nonexistent_accuracy: no evaluation reports it; the evaluation reports "
            "eval_loss, "
            "eval_presence_accuracy, eval_absence_choice_accuracy, eval_which_object_accuracy",
        ),
    ),
    Case(
        "train",
        "load_best_model_without_evaluation",
        lambda fx: fx.good_run("--load_best_model_at_end", "true"),
        2,
        ("--load_best_model_at_end keeps the checkpoint with the best evaluation, but --eval_strategy is no",),
    ),
    Case(
        "train",
        "output_dir_is_the_base_model",
        lambda fx: fx.good_run("--output_dir", fx.clip(), "--overwrite_output_dir", "true"),
        2,
        ("overlaps the model trained from, --model_name_or_path", "would replace its base in place"),
        check=lambda fx: holds(Path(fx.clip()), ["config.json", "model.safetensors"]),
    ),
    Case(
        "train",
        "fp16_on_the_cpu",
        lambda fx: fx.good_run("--fp16", "true"),
        0,
        ("--fp16 has no effect on the CPU: training runs in float32", "wrote the checkpoint"),
        check=fp16_recorded_off,
    ),
    Case(
        "train",
        "mix_dataset_is_the_dataset",
        lambda fx: fx.good_run("--mix_dataset_name", fx.dataset("good", ["a dog"] * 4)),
        2,
        (
            "--mix_dataset_name",
            "is --dataset_name itself: every row would be there twice (false in-batch negatives)",
        ),
    ),
    Case(
        "train",
        "empty_validation_split",
        lambda fx: fx.train_args(empty_validation_split(fx), "--eval_strategy", "steps", "--eval_steps", "1"),
        2,
        (
            "empty_validation': its evaluation split",
            "(--eval_split) is empty: pass --eval_split none",
        ),
    ),
    Case(
        "train",
        "push_to_hub_offline",
        lambda fx: fx.good_run("--push_to_hub", "true", "--hub_model_id", "someone/x"),
        2,
        ("--push_to_hub: the Hub refused or could not be reached for repo 'someone/x'", "Nothing has trained yet"),
        check=lambda fx: nothing_written(fx.last_out),
    ),
]


def test_overwriting_a_run_removes_its_checkpoints_and_resume_compares_the_schedule(fx, capsys, caplog):
    import train

    out = fx.out()
    steps = ("--save_strategy", "steps", "--save_steps", "1", "--output_dir", out)
    train.main(fx.good_run(*steps, "--max_steps", "2", "--learning_rate", "1e-3"))
    assert sorted(path.name for path in Path(out).glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    caplog.clear()
    train.main(fx.good_run(*steps, "--overwrite_output_dir", "true", "--learning_rate", "5e-4"))
    assert "removed the old run's checkpoint-1, checkpoint-2" in caplog.text
    assert sorted(path.name for path in Path(out).glob("checkpoint-*")) == ["checkpoint-1"]  # the new run's only
    code, output = invoke_cli(
        "train",
        fx.good_run(*steps, "--max_steps", "2", "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest"),
        capsys,
        caplog,
    )
    assert code == 2 and "was saved by a run with other settings: schedule and optimiser" in output
    assert "'learning_rate': 0.0005" in output and "'learning_rate': 0.001" in output
    code, output = invoke_cli(
        "train",
        fx.good_run(*steps, "--max_steps", "2", "--learning_rate", "5e-4", "--resume_from_checkpoint", "latest"),
        capsys,
        caplog,
    )
    assert code == 0 and f"resuming from {out}/checkpoint-1 (step 1)" in output, output[-3000:]


def test_sigterm_stops_a_run_like_ctrl_c(fx, tmp_path):
    """A real SIGTERM to a running train.py: one line, exit 143, the lock released, no traceback."""
    out = Path(fx.out())
    started = tmp_path / "training"
    # A callback notes the first checkpoint, so the signal lands during training (no deadline: a
    # loaded machine only waits longer).
    code = (
        "import sys, pathlib, train\n"
        "from transformers import TrainerCallback\n"
        "from omninegclip.training import trainer as module\n"
        "class Started(TrainerCallback):\n"
        "    def on_save(self, args, state, control, **kwargs):\n"
        f"        pathlib.Path({str(started)!r}).touch()\n"
        "real = module.OmniNegCLIPTrainer.__init__\n"
        "def init(self, *args, **kwargs):\n"
        "    real(self, *args, **kwargs)\n"
        "    self.add_callback(Started())\n"
        "module.OmniNegCLIPTrainer.__init__ = init\n"
        "from omninegclip.common.cli import run_cli\n"
        "run_cli(train.main, sys.argv[1:])\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "OMNINEGCLIP_DEBUG"}
    environment.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    argv = fx.good_run(
        "--output_dir", str(out), "--max_steps", "100000", "--save_strategy", "steps", "--save_steps", "1"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not started.exists():
            assert process.poll() is None, process.stderr.read()[-3000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert (
        "terminated (SIGTERM):" in stderr and "--resume_from_checkpoint latest" in stderr and "Traceback" not in stderr
    )
    assert not (out / "_omninegclip.lock").exists()
    assert any(path.is_dir() for path in out.glob("checkpoint-*"))  # the complete checkpoints are kept


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (root and a kernel that allows it), unmounted afterwards."""
    mount = tmp_path / "tiny_disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {result.stderr.strip() or result.returncode}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_disk_too_small_for_the_checkpoint_is_refused_before_preparation(fx, tiny_disk, capsys, caplog):
    out = tiny_disk / "run"
    code, output = invoke_cli("train", fx.good_run("--output_dir", str(out)), capsys, caplog)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert f"--output_dir {out}: its disk has" in output and "and this run needs about" in output
    assert "data: " not in output  # refused before the data was prepared
    assert not out.exists() or not any(out.iterdir())
