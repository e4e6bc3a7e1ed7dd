"""train.py against bad input and interruptions (issue 9).

- The bad-input matrix of train.py (table-driven, in-process through `run_cli`): every row exits
  with an `error:` paragraph naming the flag, file, row or column, or trains and reports its counted
  skips once. Rows for what the shared matrix (tests/test_bad_input.py) already pins are not repeated.
- Data checks done before training: corrupt, truncated and oversized images and empty captions are
  skipped with their rows and reasons; grayscale/palette/RGBA/16-bit images are converted.
- Interruptions: a run killed after a checkpoint and resumed ends with the same weights, tensor for
  tensor, as an uninterrupted one (the balanced two-source sampler included); a loss that becomes
  inf stops with the step, the rows and the terms, and the checkpoint saved before stays intact.
- Reproducibility and provenance: same seed, same weights; versions, seed and commit beside the
  final weights and every checkpoint-* folder. No remote code: the loaders say trust_remote_code=False.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
import sys
from pathlib import Path

import datasets
import pytest
import torch
from train_helpers import (
    BAD_IMAGES,
    Case,
    capture_trainers,
    check_case,
    color_rows,
    png_bytes,
    run_command,
    save_dataset,
    save_tiny_clip,
    train_flags,
    weights,
)  # noqa: F401  (single_thread: an autouse fixture)
from transformers import CLIPModel, TrainerCallback

import modeling_omninegclip
import train
from modeling_omninegclip import OmniNegCLIPModel
from omninegclip.common.cli import run_cli
from omninegclip.common.provenance import provenance
from omninegclip.training.data import CaptionColumns, SourceReport, prepare_dataset
from omninegclip.training.images import ImageTransform, image_pass
from omninegclip.training.trainer import NonFiniteLossError, OmniNegCLIPTrainer

LONG = "a red square " + "and a long winding description of the room around it " * 10 + "on a table"
FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "presence_negated": datasets.Value("string"),
        "absence_negated": datasets.Value("string"),
    }
)
_outputs = itertools.count()


# ---- inputs, written under the module's folder on first use ------------------------------------------


def image_rows(
    root: Path, name: str, images: list[bytes | None], captions: list[str | None] | None = None, **columns
) -> Path:
    """A save_to_disk DatasetDict: one row per image (raw bytes, None = no image), the given captions
    (default 'a red square'), each row with both negations unless `columns` replaces a column."""
    path = root / name
    if not path.exists():
        captions = captions or ["a red square"] * len(images)
        table = {
            "image": [None if data is None else {"bytes": data, "path": None} for data in images],
            "caption": captions,
            "presence_negated": ["a picture with no red square"] * len(images),
            "absence_negated": ["a red square with no blue circle"] * len(images),
        } | columns
        split = datasets.Dataset.from_dict(table)
        for key, feature in FEATURES.items():
            if key not in columns:
                split = split.cast_column(key, feature)
        datasets.DatasetDict(train=split).save_to_disk(str(path))
    return path


def good(root: Path) -> Path:
    return image_rows(root, "good", [png_bytes() for _ in range(4)])


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = root / name
    if not path.exists():
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def folder(root: Path, name: str, files: dict[str, str] | None = None) -> Path:
    path = root / name
    path.mkdir(exist_ok=True)
    for file, text in (files or {}).items():
        (path / file).write_text(text)
    return path


def flags(root: Path, data: Path | str, *extra: str, **overrides) -> list[str]:
    """train.py flags: one step, a fresh output folder, the module's tiny CLIP."""
    values = dict(max_steps=1, per_device_train_batch_size=4, cache_dir=root / "hf-cache") | overrides
    return train_flags(root / "clip", Path(data), root / "outputs" / f"run{next(_outputs)}", **values) + list(extra)


def clip_without_processor(root: Path) -> Path:
    path = root / "clip-no-processor"
    if not path.exists():
        path.mkdir()
        for name in ("config.json", "model.safetensors"):
            (path / name).write_bytes((root / "clip" / name).read_bytes())
    return path


def csv_with_image_paths(root: Path) -> Path:
    """A CSV data file whose image column holds paths relative to it: row 1 missing, row 2 corrupt."""
    images = folder(root, "csv_images")
    (images / "ok.png").write_bytes(png_bytes())
    (images / "bad.png").write_bytes(BAD_IMAGES["corrupt"][0])
    path = root / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "presence_negated", "absence_negated"])
        for image in (
            "csv_images/ok.png",
            "csv_images/missing.png",
            "csv_images/bad.png",
            "csv_images/ok.png",
            "csv_images/ok.png",
        ):
            writer.writerow([image, "a red square", "no red square", "a red square and no blue circle"])
    return path


MIXED_IMAGES = [
    png_bytes(),
    BAD_IMAGES["corrupt"][0],
    BAD_IMAGES["truncated"][0],
    BAD_IMAGES["huge"][0],
    BAD_IMAGES["bomb"][0],
    png_bytes("RGBA"),
    png_bytes("L"),
    png_bytes("P"),
    png_bytes("I;16"),
    png_bytes(),
    png_bytes("LA"),
    None,
]
MIXED_CAPTIONS = [
    "a red square",
    "a red square",
    "a red square",
    "a red square",
    "a red square",
    "a red square",
    "",
    None,
    "a red square",
    LONG,
    "a red square",
    "a red square",
]


def mixed_quality(root: Path) -> Path:
    """Row 0 good; 1 corrupt; 2 truncated; 3 too large for our guard; 4 refused by PIL itself; 5 RGBA;
    6 gray with an empty caption; 7 palette with a None caption; 8 16-bit; 9 good, long caption; 10 LA; 11 no image."""
    return image_rows(root, "mixed_quality", MIXED_IMAGES, MIXED_CAPTIONS)


SKIPS_OF_MIXED = (
    "corrupt_image: 1 [row 1: not an image PIL can read",
    "truncated_image: 1 [row 2: image file is truncated]",
    "image_too_large: 2 [row 3: 10000x10000 = 100000000 pixels, over the decompression-bomb limit",
    "row 4: Image size (400000000 pixels) exceeds limit",
    "empty_caption: 1 [row 6, column 'caption']",
    "missing_caption: 1 [row 7, column 'caption']",
    "missing_image: 1 [row 11: no image in this row",
    "kept 5 of 12 rows",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory, processor) -> Path:
    path = tmp_path_factory.mktemp("train_hardening")
    save_tiny_clip(path / "clip", processor)
    return path


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("OMNINEGCLIP_DEBUG", raising=False)


# ---- the matrix ------------------------------------------------------------------------------------

CASES = [
    # flags
    Case(
        "train",
        "flag_without_value",
        lambda r: [*flags(r, good(r)), "--learning_rate"],
        2,
        ("bad flag in the command line: argument --learning_rate/--learning-rate: expected one argument",),
    ),
    Case(
        "train",
        "boolean_flag_not_a_boolean",
        lambda r: flags(r, good(r), cache_image_embeddings="maybe"),
        2,
        ("argument --cache_image_embeddings/--cache-image-embeddings: Truthy value expected: got maybe",),
    ),
    Case(
        "train",
        "integer_flag_given_a_float",
        lambda r: flags(r, good(r), max_steps="2.5"),
        2,
        ("argument --max_steps/--max-steps: invalid int value: '2.5'",),
    ),
    Case(
        "train",
        "batch_size_zero",
        lambda r: flags(r, good(r), per_device_train_batch_size=0),
        2,
        ("--per_device_train_batch_size must be >= 1, got 0",),
    ),
    Case(
        "train",
        "unknown_text_preset",
        lambda r: flags(r, good(r), text_preset="sides"),
        2,
        ("bad trainable setting: text_preset must be one of ('front', 'middle', 'back', 'whole'), got 'sides'",),
    ),
    Case(
        "train",
        "text_blocks_not_integers",
        lambda r: flags(r, good(r), text_blocks="0,x"),
        2,
        ("--text_blocks must be comma-separated integers like '0,1,2', got '0,x'",),
    ),
    Case(
        "train",
        "negative_loss_weight",
        lambda r: flags(r, good(r), lambda_abs=-1),
        2,
        ("bad loss setting: lambda_abs must be a finite number >= 0, got -1.0",),
    ),
    # paths
    Case(
        "train",
        "output_dir_is_a_file",
        lambda r: flags(r, good(r), output_dir=write(r, "a_file", "x")),
        2,
        (
            "--output_dir",
            "a_file' is a file; expected a folder",
        ),
    ),
    Case(
        "train",
        "resume_from_missing_folder",
        lambda r: flags(r, good(r), resume_from_checkpoint=r / "nowhere"),
        2,
        (
            "--resume_from_checkpoint",
            "nowhere' does not exist or is not a folder",
        ),
    ),
    Case(
        "train",
        "resume_from_incomplete_checkpoint",
        lambda r: flags(r, good(r), resume_from_checkpoint=folder(r, "checkpoint-7", {"config.json": "{}"})),
        2,
        ("checkpoint-7' is not a complete checkpoint: it has no trainer_state.json",),
    ),
    Case(
        "train",
        "resume_latest_without_checkpoints",
        lambda r: flags(r, good(r), resume_from_checkpoint="latest"),
        2,
        ("--resume_from_checkpoint latest: no complete checkpoint-* folder",),
    ),
    Case(
        "train",
        "model_config_not_json",
        lambda r: [
            "--model_name_or_path",
            folder(r, "broken-config", {"config.json": "{model"}),
            *flags(r, good(r))[2:],
        ],
        2,
        (
            "broken-config': cannot read its config as a Hub id or folder (",
            "broken-config/config.json: not valid JSON: ",
        ),
    ),
    Case(
        "train",
        "model_without_processor",
        lambda r: ["--model_name_or_path", clip_without_processor(r), *flags(r, good(r))[2:]],
        2,
        ("no CLIP processor at", "clip-no-processor", "--processor_name_or_path"),
    ),
    # data files
    Case(
        "train",
        "malformed_jsonl_row",
        lambda r: flags(
            r, write(r, "broken.jsonl", '{"image": "a.png", "caption": "a"}\n{"image": "b.png", "caption": \n')
        ),
        2,
        ("could not load dataset", "broken.jsonl", "JSON parse error: Invalid value. in row 1"),
    ),
    Case(
        "train",
        "malformed_csv_row",
        lambda r: flags(r, write(r, "broken.csv", "image,caption\na.png,a dog\nb.png,a dog, with a hat\n")),
        2,
        ("broken.csv", "Expected 2 fields in line 3, saw 3"),
    ),
    Case(
        "train",
        "empty_data_file",
        lambda r: flags(r, write(r, "empty.jsonl", "")),
        2,
        ("empty.jsonl'] are empty: nothing to train on",),
    ),
    # columns and values
    Case(
        "train",
        "image_column_of_numbers",
        lambda r: flags(r, image_rows(r, "int_images", [None, None], image=[1, 2])),
        2,
        (
            "column 'image' (set by --image_column) holds Value('int64')",
            "expected images (a datasets Image column) or image file paths",
        ),
    ),
    Case(
        "train",
        "negation_not_text",
        lambda r: flags(r, image_rows(r, "int_negation", [png_bytes()] * 2, presence_negated=[3, 4])),
        2,
        (
            "int_negation': no usable row (column 'caption'): skipped 2 (presence_negated_not_text: 2 "
            "[row 0, column 'presence_negated': int 3; row 1, column 'presence_negated': int 4])",
        ),
    ),
    Case(
        "train",
        "every_image_unreadable",
        lambda r: flags(r, image_rows(r, "all_corrupt", [BAD_IMAGES["corrupt"][0]] * 2)),
        2,
        (
            "all_corrupt': no usable row (column 'image'): skipped 2 (corrupt_image: 2 [row 0: not an image PIL can "
            "read",
        ),
    ),
    # counted skips: the run goes on and reports them once
    Case(
        "train",
        "bad_images_and_captions_skipped",
        lambda r: flags(r, mixed_quality(r)),
        0,
        SKIPS_OF_MIXED + ("truncated 1 caption(s) longer than 77 tokens",),
        once="skipped 7",
    ),
    Case(
        "train",
        "bad_images_skipped_without_the_embedding_cache",
        lambda r: flags(
            r, mixed_quality(r), max_steps=3, per_device_train_batch_size=2, cache_image_embeddings="false"
        ),
        0,
        SKIPS_OF_MIXED,
        once="longer than 77 tokens",
    ),
    Case(
        "train",
        "csv_of_image_paths",
        lambda r: flags(r, csv_with_image_paths(r), per_device_train_batch_size=3),
        0,
        (
            "missing_image: 1 [row 1: no such image file",
            "csv_images/missing.png",
            "corrupt_image: 1 [row 2:",
            "kept 3 of 5 rows",
        ),
    ),
    Case(
        "train",
        "long_captions_in_two_datasets_reported_once",
        lambda r: flags(
            r,
            image_rows(r, "long_a", [png_bytes()] * 2, [LONG, "a red square"]),
            mix_dataset_name=image_rows(r, "long_b", [png_bytes("L")] * 2, [LONG, LONG]),
        ),
        0,
        (
            "truncated 3 caption(s) longer than 77 tokens (train",
            "long_a': 1, train",
            "long_b': 2); CLIP reads only the first 77",
        ),
        once="longer than 77 tokens",
    ),
]


def test_matrix_names_are_unique():
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_matrix(case: Case, root: Path, capsys, caplog):
    check_case(case, root, capsys, caplog)


# ---- data checks, exactly -------------------------------------------------------------------------------


def test_prepare_dataset_skips_exactly_the_bad_rows_and_keeps_where_the_rest_came_from(
    root, tokenizer, processor, tiny_clip
):
    raw = datasets.load_from_disk(str(mixed_quality(root)))["train"]
    columns = CaptionColumns.from_flags("image", "caption", "presence_negated", "absence_negated")
    transform = ImageTransform.for_processor(processor.image_processor)
    for images in (
        None,
        lambda refs: image_pass(refs, transform, model=tiny_clip, num_workers=0),
    ):  # checked, or embedded
        prepared, (report,) = prepare_dataset([raw], ["mixed"], columns, tokenizer, max_length=77, images=images)
        assert isinstance(report, SourceReport)
        assert (report.rows, report.kept, report.truncated_captions) == (12, 5, 1)
        assert report.skips.counts == {
            "corrupt_image": 1,
            "truncated_image": 1,
            "image_too_large": 2,
            "empty_caption": 1,
            "missing_caption": 1,
            "missing_image": 1,
        }
        assert prepared.source_row.tolist() == [0, 5, 8, 9, 10] and prepared.order.tolist() == list(range(5))
        tokens = prepared.tokens["input_ids"][3]
        assert len(tokens) == 77 and tokens[-1] == tokenizer.eos_token_id
    # The kept images decode: the frozen tower's embeddings are computed for every kept row's image.
    kept_images = prepared.image_index
    assert (
        torch.isfinite(prepared.image_embeds[kept_images]).all() and prepared.image_embeds[kept_images].abs().sum() > 0
    )


def test_the_provenance_records_what_was_skipped(root):
    out = root / "outputs" / "skips-recorded"
    train.main(train_flags(root / "clip", mixed_quality(root), out, max_steps=1, per_device_train_batch_size=4))
    (data,) = json.loads((out / "training_provenance.json").read_text())["data"]
    assert data["skips"]["image_too_large"] == 2 and data["kept"] == 5 and data["truncated_captions"] == 1
    assert data["skip_examples"]["empty_caption"] == ["row 6, column 'caption'"]
    assert data["skip_examples"]["missing_caption"] == ["row 7, column 'caption'"]


# ---- interruptions ---------------------------------------------------------------------------------------


class CrashAt(TrainerCallback):
    """Stands for a killed run: raises as step `step` begins (the checkpoints before it are on disk)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt(f"simulated interruption before step {self.step}")


def recording_rows(monkeypatch) -> list[list[int]]:
    seen = []
    real = OmniNegCLIPTrainer.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(inputs["row_ids"].tolist())
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(OmniNegCLIPTrainer, "compute_loss", compute_loss)
    return seen


def test_resumed_run_ends_with_the_same_weights_and_data_order_as_an_uninterrupted_one(
    tmp_path, processor, monkeypatch
):
    """Two sources (the balanced sampler), 4 steps an epoch; checkpoint at step 5 (inside the second
    epoch, whose order differs from the first), killed before step 7, resumed from checkpoint-5."""
    model = save_tiny_clip(tmp_path / "clip", processor)
    presence = save_dataset(tmp_path / "presence", color_rows(6, presence=True, absence=False))
    absence = save_dataset(tmp_path / "absence", color_rows(8, presence=False, absence=True, offset=40))
    settings = dict(
        mix_dataset_name=absence,
        max_steps=8,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=5,
        learning_rate=1e-2,
        lr_scheduler_type="cosine",
        warmup_steps=2,
    )
    rows = recording_rows(monkeypatch)

    train.main(train_flags(model, presence, tmp_path / "whole", **settings))
    uninterrupted = list(rows)
    assert uninterrupted[:4] != uninterrupted[4:8]  # the second epoch is reshuffled

    rows.clear()
    crash = CrashAt(7)
    capture_trainers(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(train_flags(model, presence, tmp_path / "resumed", **settings))
    assert rows == uninterrupted[:6] and (tmp_path / "resumed" / "checkpoint-5").is_dir()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    rows.clear()
    crash.step = -1
    train.main(train_flags(model, presence, tmp_path / "resumed", resume_from_checkpoint="latest", **settings))
    assert rows == uninterrupted[5:]  # steps 6..8, in the same order

    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    different = [name for name in whole if not torch.equal(whole[name], resumed[name])]
    assert different == []
    assert not torch.equal(whole["text_projection.weight"], weights(model)["text_projection.weight"])
    record = json.loads((tmp_path / "resumed" / "training_provenance.json").read_text())
    assert record["resumed_from"] == str(tmp_path / "resumed" / "checkpoint-5") and record["global_step"] == 8


def test_a_loss_that_becomes_inf_stops_cleanly_and_keeps_the_last_good_checkpoint(
    tmp_path, processor, monkeypatch, capsys
):
    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(12, presence=True, absence=True))
    real_margin = modeling_omninegclip.text_margin_loss
    calls = []

    def margin_that_fails_in_step_3(*args, **kwargs):
        calls.append(1)
        value = real_margin(*args, **kwargs)
        return value + float("inf") if len(calls) == 3 else value

    monkeypatch.setattr(modeling_omninegclip, "text_margin_loss", margin_that_fails_in_step_3)
    saved = {}

    class Snapshot(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            saved[folder] = {
                path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir() if path.is_file()
            }

    capture_trainers(monkeypatch, Snapshot())
    out = tmp_path / "out"
    argv = train_flags(
        model,
        data,
        out,
        max_steps=6,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        train_sampling_strategy="sequential",
    )
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train.main, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert (
        "the loss became NaN or inf in training step 3: terms that went bad: loss_absence_text=inf, loss_absence=inf, "
        "loss=inf" in error
    )
    assert f"training batch of 4 rows: '{data}' row 8, '{data}' row 9, '{data}' row 10, '{data}' row 11" in error
    checkpoint = out / "checkpoint-2"
    assert (
        f"the last good checkpoint, {checkpoint}, is kept as it was; resume from it with --resume_from_checkpoint "
        f"{checkpoint}" in error
    )

    assert sorted(path.name for path in out.iterdir()) == ["checkpoint-2"]  # no final weights were written
    assert saved[checkpoint] == {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in checkpoint.iterdir() if path.is_file()
    }
    loaded = CLIPModel.from_pretrained(checkpoint)
    assert all(torch.isfinite(param).all() for param in loaded.parameters())
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2

    calls.clear()
    with pytest.raises(NonFiniteLossError):  # the same error, as an exception, for library callers
        train.main(train_flags(model, data, tmp_path / "again", max_steps=6, per_device_train_batch_size=4))


# ---- reproducibility and provenance ---------------------------------------------------------------------


def test_same_seed_same_weights_and_provenance_beside_every_checkpoint(tmp_path, processor):
    model = save_tiny_clip(tmp_path / "clip", processor)
    presence = save_dataset(tmp_path / "presence", color_rows(6, presence=True, absence=False))
    absence = save_dataset(tmp_path / "absence", color_rows(6, presence=False, absence=True, offset=20))
    runs = {}
    for name, seed in (("first", 3), ("second", 3), ("other_seed", 4)):
        runs[name] = tmp_path / name
        train.main(
            train_flags(
                model,
                presence,
                runs[name],
                mix_dataset_name=absence,
                max_steps=4,
                seed=seed,
                save_strategy="steps",
                save_steps=2,
                cache_image_embeddings="false",
            )
        )
    first, second, other = (weights(runs[name]) for name in ("first", "second", "other_seed"))
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)  # the seed does matter

    expected = provenance(seed=3)
    for folder in (runs["first"], runs["first"] / "checkpoint-2", runs["first"] / "checkpoint-4"):
        record = json.loads((folder / "training_provenance.json").read_text())
        assert record["seed"] == 3 and record["git_commit"] == expected["git_commit"]
        assert record["libraries"] == expected["libraries"] and record["libraries"]["torch"] == torch.__version__
        assert record["global_step"] == (2 if folder.name == "checkpoint-2" else 4)
        assert record["training_arguments"]["seed"] == 3 and record["datasets"] == [str(presence), str(absence)]
    if (Path(train.__file__).parent / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", expected["git_commit"])


def test_loaders_refuse_remote_code_explicitly(root, monkeypatch):
    from transformers import CLIPProcessor

    seen = []
    for owner in (OmniNegCLIPModel, CLIPProcessor):
        real = owner.from_pretrained.__func__

        def spy(cls, *args, _real=real, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code", "not given")))
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))
    train.load_model(train.ModelArguments(model_name_or_path=str(root / "clip")))
    assert seen == [("OmniNegCLIPModel", False), ("CLIPProcessor", False)]


# ---- the real entry point ----------------------------------------------------------------------------------


def test_debug_shows_the_traceback_of_the_real_entry_point(root):
    argv = [sys.executable, "train.py", *flags(root, good(root), resume_from_checkpoint=root / "nowhere"), "--debug"]
    result = run_command(argv)
    assert result.returncode == 1
    assert (
        "Traceback (most recent call last)" in result.stderr and "UserError: --resume_from_checkpoint" in result.stderr
    )
