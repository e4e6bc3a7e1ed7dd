"""`python -m eval` against bad input (issue 9), and the safe loaders it shares with training.

- The bad-input matrix of the eval CLI (table-driven, in-process through `run_cli`): an `error:`
  paragraph naming the file, row or flag, or a run whose counted skips (with file, row and reason)
  are in the task's notes. Rows the shared matrix (tests/test_bad_input.py) already pins are not repeated.
- Unreadable images (corrupt, truncated, over the decompression-bomb limit) are left out while the
  first model embeds them: every model scores the same items and no model opens them again.
- results.json carries the seed, the git commit and the library versions.
- `omninegclip.common.safe_load`: `load_torch_file` never unpickles code; `open_rgb_image` converts every
  image mode and names what is wrong with a bad image. No remote code: trust_remote_code=False.
"""

from __future__ import annotations

import csv
import itertools
import json
import pickle
from pathlib import Path

import datasets
import pytest
import torch
import transformers
from PIL import Image
from train_helpers import BAD_IMAGES, Case, check_case, png_bytes, save_tiny_clip

import eval.files
from eval.harness import drop_unreadable_images, embed_tasks, evaluate_tasks
from eval.items import ChoiceItem, RetrievalSet, TaskData
from eval.runner import load_clip, run_evaluation
from eval.zeroshot import ZeroShotSet, ZeroShotTaskData
from omninegclip.common.cli import UserError
from omninegclip.common.provenance import provenance
from omninegclip.common.safe_load import UNREADABLE_KINDS, UnreadableImage, load_torch_file, open_rgb_image

HEADER = [
    "image_path",
    "correct_answer",
    "caption_0",
    "caption_1",
    "caption_2",
    "caption_3",
    "correct_answer_template",
]
IMAGE_FILES = {
    "ok.png": png_bytes(),
    "rgba.png": png_bytes("RGBA"),
    "gray.png": png_bytes("L"),
    "palette.png": png_bytes("P"),
    "deep.png": png_bytes("I;16"),
    **{f"{name}.png": data for name, (data, _) in BAD_IMAGES.items()},
}
_outputs = itertools.count()


class Evil:
    """Unpickling this would write a file: a loader that does so runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


# ---- inputs, written under the module's folder on first use ------------------------------------------


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = root / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
    return path


def mcq(root: Path, name: str, images: list[str], captions: list[str] | None = None) -> Path:
    """A NegBench MCQ CSV, one question per image (answer 0); `captions` replaces the four options."""
    path = root / name
    if not path.exists():
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            for image in images:
                writer.writerow(
                    [
                        root / "images" / image,
                        0,
                        *(captions or ["a red square", "no red square", "a cat", "no cat"]),
                        "negative",
                    ]
                )
    return path


def args(root: Path, *extra) -> list:
    return [
        root / "clip",
        "--out",
        root / "outputs" / f"out{next(_outputs)}",
        "--no_progress",
        "--batch_size",
        "4",
        *extra,
    ]


def mcq_args(root: Path, name: str, images: list[str], captions: list[str] | None = None) -> list:
    return args(root, "--tasks", "negbench_mcq", "--negbench_mcq", mcq(root, name, images, captions))


def model_folder(root: Path, name: str, config: str) -> Path:
    """A folder holding only a config.json."""
    return write(root, f"{name}/config.json", config).parent


def with_model(root: Path, model: Path) -> list:
    """Evaluation arguments for `model` on a one-question MCQ."""
    return [model, *args(root, "--tasks", "negbench_mcq", "--negbench_mcq", mcq(root, "ok.csv", ["ok.png"]))[1:]]


def karpathy(root: Path) -> Path:
    """Three test images: the second is corrupt (2 captions), the third has one empty caption."""
    entries = [
        {"filename": name, "split": "test", "sentences": [{"raw": f"{name} one"}, {"raw": text}]}
        for name, text in (("ok.png", "a red square"), ("corrupt.png", "a broken file"), ("gray.png", " "))
    ]
    return write(root, "dataset_coco.json", json.dumps({"images": entries}))


def zeroshot_dataset(root: Path) -> Path:
    path = root / "pets"
    if not path.exists():
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
        images = [{"bytes": data, "path": None} for data in (png_bytes(), BAD_IMAGES["corrupt"][0], png_bytes("L"))]
        split = datasets.Dataset.from_dict({"img": images, "label": [0, 1, 1]}, features=features)
        datasets.DatasetDict(test=split).save_to_disk(str(path))
    return path


def ccneg_file(root: Path, name: str, data) -> Path:
    path = root / name
    if not path.exists():
        torch.save(data, path)
    return path


def valse(root: Path, name: str, samples: dict) -> Path:
    return write(root, name, json.dumps(samples))


def long_csv_with_latin1_row(root: Path) -> Path:
    """Valid rows past the reader's first buffer, then one row that is not UTF-8."""
    rows = "".join(
        f"{root / 'images' / 'ok.png'},0,a red square {index},no red square,a cat,no cat,negative\n"
        for index in range(150)
    )
    return write(
        root,
        "latin1.csv",
        (",".join(HEADER) + "\n" + rows).encode() + "x.png,0,caf\xe9,b,c,d,negative\n".encode("latin-1"),
    )


def pairs_csv(root: Path) -> Path:
    return write(
        root,
        "pairs.csv",
        "caption,presence_negated,absence_negated\n"
        "a dog,no dog,a dog and no cat\n"
        ",no cat,\n"
        "a cat,no cat,a cat and no bird\n",
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory, processor) -> Path:
    path = tmp_path_factory.mktemp("eval_hardening")
    save_tiny_clip(path / "clip", processor)
    (path / "images").mkdir()
    for name, data in IMAGE_FILES.items():
        (path / "images" / name).write_bytes(data)
    return path


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("OMNINEGCLIP_DEBUG", raising=False)


# ---- the matrix ------------------------------------------------------------------------------------

CASES = [
    # flags and paths
    Case(
        "eval",
        "flag_without_value",
        lambda r: [r / "clip", "--out", r / "o", "--tasks"],
        2,
        ("argument --tasks: expected one argument",),
    ),
    Case(
        "eval",
        "seed_not_an_integer",
        lambda r: args(r, "--tasks", "negbench_mcq", "--seed", "x"),
        2,
        ("argument --seed: invalid int value: 'x'",),
    ),
    Case(
        "eval",
        "out_is_a_file",
        lambda r: [
            r / "clip",
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            mcq(r, "ok.csv", ["ok.png"]),
            "--out",
            write(r, "a_file", "x"),
        ],
        2,
        (
            "--out",
            "a_file: is a file; expected a folder",
        ),
    ),
    Case(
        "eval",
        "model_config_not_json",
        lambda r: with_model(r, model_folder(r, "broken_model", "{model")),
        2,
        ("broken_model: cannot read its config as a Hub id or folder",),
    ),
    Case(
        "eval",
        "model_without_weights",
        lambda r: with_model(r, model_folder(r, "no_weights", (r / "clip" / "config.json").read_text())),
        2,
        ("no_weights: a CLIP config but no weights beside it (expected model.safetensors or pytorch_model.bin)",),
    ),
    # malformed files and rows
    Case(
        "eval",
        "csv_row_not_utf8",
        lambda r: args(r, "--tasks", "negbench_mcq", "--negbench_mcq", long_csv_with_latin1_row(r)),
        2,
        ("latin1.csv: after line", "not UTF-8 text"),
    ),
    Case(
        "eval",
        "json_record_missing_a_key",
        lambda r: args(
            r,
            "--tasks",
            "valse",
            "--valse",
            valse(
                r, "no_foil.json", {"s1": {"image_file": "ok.png", "caption": "a red square", "mturk": {"caption": 3}}}
            ),
            "--valse_images",
            r / "images",
        ),
        2,
        (
            "no_foil.json, sample 's1': expected keys image_file, caption, foil, mturk; "
            "found ['caption', 'image_file', 'mturk']",
        ),
    ),
    Case(
        "eval",
        "torch_file_that_is_not_one",
        lambda r: args(r, "--tasks", "ccneg", "--ccneg", write(r, "garbage.pt", b"not a torch file")),
        2,
        ("garbage.pt: not a readable torch.save file (Unsupported operand",),
    ),
    Case(
        "eval",
        "torch_file_that_runs_code",
        lambda r: args(
            r,
            "--tasks",
            "ccneg",
            "--ccneg",
            write(r, "evil.pt", pickle.dumps({"image_paths": [], "annotations": [Evil(r / "PWNED")]}, protocol=2)),
        ),
        2,
        ("evil.pt: refused to load: the file needs arbitrary unpickling of exec, which could run code",),
    ),
    Case(
        "eval",
        "ccneg_annotations_not_a_list",
        lambda r: args(
            r,
            "--tasks",
            "ccneg",
            "--ccneg",
            ccneg_file(r, "dict.pt", {"image_paths": ["a.jpg"], "annotations": {"0": {}}}),
        ),
        2,
        (
            "dict.pt: 'annotations' in the top level is a dict, expected a list "
            "(CC-Neg: {image_paths: [...], annotations: [{json: {caption}",
        ),
    ),
    # empty data
    Case(
        "eval",
        "csv_with_a_header_only",
        lambda r: mcq_args(r, "header_only.csv", []),
        2,
        ("task negbench_mcq: no item to evaluate in the data given by --negbench_mcq",),
    ),
    Case(
        "eval",
        "every_valse_sample_unvalidated",
        lambda r: args(
            r,
            "--tasks",
            "valse",
            "--valse",
            valse(
                r,
                "unvalidated.json",
                {
                    f"s{index}": {"image_file": "ok.png", "caption": "a", "foil": "b", "mturk": {"caption": 1}}
                    for index in range(2)
                },
            ),
            "--valse_images",
            r / "images",
        ),
        2,
        (
            "task valse: no item to evaluate in the data given by --valse (skipped 2 (not_validated: 2 [",
            "unvalidated.json, sample 's0' (mturk.caption < 2); ",
            "unvalidated.json, sample 's1' (mturk.caption < 2)]))",
        ),
    ),
    Case(
        "eval",
        "every_image_unreadable",
        lambda r: mcq_args(r, "all_bad.csv", ["corrupt.png", "truncated.png"]),
        2,
        (
            "task negbench_mcq: no item left to evaluate, every one needs an image that cannot be read",
            "all_bad.csv, line 2: cannot read the image",
            "corrupt.png' (not an image PIL can read",
        ),
    ),
    # counted skips: the evaluation goes on and says what it left out
    Case(
        "eval",
        "bad_images_skipped_modes_converted",
        lambda r: mcq_args(
            r,
            "mixed.csv",
            [
                "ok.png",
                "corrupt.png",
                "truncated.png",
                "huge.png",
                "bomb.png",
                "rgba.png",
                "gray.png",
                "palette.png",
                "deep.png",
            ],
        ),
        0,
        (
            "| negbench_mcq | accuracy | 5 |",
            "negbench_mcq: skipped 4 (corrupt_image: 1 [",
            "mixed.csv, line 3: cannot read the image",
            "truncated_image: 1 [",
            "mixed.csv, line 4: cannot read the image",
            "truncated.png' (image file is truncated)]",
            "image_too_large: 2 [",
            "huge.png' (10000x10000 = 100000000 pixels, over the decompression-bomb limit of 89478485 pixels)",
            "bomb.png' (Image size (400000000 pixels) exceeds limit",
        ),
        once="skipped 4",
    ),
    Case(
        "eval",
        "empty_caption_skipped",
        lambda r: args(
            r,
            "--tasks",
            "negbench_mcq",
            "--negbench_mcq",
            write(
                r,
                "empty_caption.csv",
                ",".join(HEADER)
                + f"\n{r / 'images' / 'ok.png'},0,a,b,c,d,negative\n{r / 'images' / 'gray.png'},0,a, ,c,d,negative\n",
            ),
        ),
        0,
        (
            "| negbench_mcq | accuracy | 1 |",
            "skipped 1 (empty_caption: 1 [",
            "empty_caption.csv, line 3 (column caption_1)]",
        ),
    ),
    Case(
        "eval",
        "retrieval_with_a_corrupt_image_and_an_empty_caption",
        lambda r: args(r, "--tasks", "retrieval", "--retrieval", karpathy(r), "--retrieval_images", r / "images"),
        0,
        (
            "| retrieval | text_to_image/R@1 | 3 |",
            "empty_caption: 1 [",
            "dataset_coco.json, images[2], sentences[1]]",
            "corrupt_image: 1 [retrieval: cannot read the image",
            "corrupt.png' (not an image PIL can read (corrupt or not an image file)), with its 2 text(s)]",
        ),
    ),
    Case(
        "eval",
        "zeroshot_with_a_corrupt_image",
        lambda r: args(r, "--tasks", "zeroshot", "--zeroshot", zeroshot_dataset(r)),
        0,
        (
            "| zeroshot | top1 | 2 |",
            "corrupt_image: 1 [zeroshot: cannot read the image",
            "pets[test]#1' (not an image PIL can read",
        ),
    ),
    Case(
        "eval",
        "layerwise_empty_caption_counted",
        lambda r: args(r, "--tasks", "layerwise", "--layerwise", pairs_csv(r)),
        0,
        ("layerwise: skipped 1 (empty_caption: 1 [", "pairs.csv, line 3])"),
    ),
]


def test_matrix_names_are_unique():
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_matrix(case: Case, root: Path, capsys, caplog):
    check_case(case, root, capsys, caplog)
    assert not (root / "PWNED").exists()  # the malicious pickle was never unpickled


# ---- every model sees the same items ------------------------------------------------------------------------


def test_unreadable_images_are_left_out_once_for_every_model(root, processor, monkeypatch, tmp_path):
    opened = []
    real = eval.files.open_rgb_image
    monkeypatch.setattr(
        eval.files, "open_rgb_image", lambda path, *a, **k: opened.append(Path(path).name) or real(path, *a, **k)
    )
    other = save_tiny_clip(tmp_path / "other", processor, seed=1)
    results = run_evaluation(
        [str(root / "clip"), str(other)],
        ["negbench_mcq"],
        {"negbench_mcq": str(mcq(root, "two_models.csv", ["ok.png", "corrupt.png", "gray.png", "truncated.png"]))},
        tmp_path / "out",
        batch_size=2,
        device="cpu",
        progress=False,
        seed=7,
    )
    assert sorted(opened) == sorted(["ok.png", "corrupt.png", "gray.png", "truncated.png", "ok.png", "gray.png"])
    info = results.tasks["negbench_mcq"]
    assert info.counts["items"] == 2 and info.notes.startswith("skipped 2 (corrupt_image: 1 [")
    assert set(info.metrics["accuracy"]) == {str(root / "clip"), str(other)}

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    expected = provenance(seed=7)
    assert saved["provenance"]["seed"] == 7 and saved["provenance"]["git_commit"] == expected["git_commit"]
    assert (
        saved["provenance"]["libraries"] == expected["libraries"]
        and saved["provenance"]["libraries"]["torch"] == torch.__version__
    )
    assert saved["tasks"]["negbench_mcq"]["notes"] == info.notes


class NamedEmbedder:
    """Image embeddings by name (`image.info["name"]`; the stand-in for an unreadable image has none)."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors

    def embed_images(self, images):
        return torch.tensor(
            [self.vectors.get(image.info.get("name"), [0.0, 0.0, 0.0, 1.0]) for image in images[: len(images)]]
        )

    def embed_texts(self, texts):
        return torch.tensor([self.vectors[text] for text in texts])


def loader(name: str, kind: str | None = None):
    def load():
        if kind is not None:
            raise UnreadableImage(kind, f"{name} is broken")
        image = Image.new("RGB", (4, 4))
        image.info["name"] = name
        return image

    return load


def test_dropping_an_unreadable_image_remaps_retrieval_and_zeroshot_exactly():
    E = torch.eye(4).tolist()
    vectors = {
        "a": E[0],
        "b": E[1],
        "c": E[2],
        "ta": E[0],
        "tb": E[1],
        "tc": E[2],
        "tb2": E[1],
        "p-cat": E[0],
        "p-dog": E[2],
    }
    retrieval = TaskData(
        "r",
        {"a": loader("a"), "b": loader("b", "truncated_image"), "c": loader("c")},
        retrieval=RetrievalSet(["a", "b", "c"], ["ta", "tb", "tc", "tb2"], [0, 1, 2, 1]),
    )
    zeroshot = ZeroShotTaskData(
        "z",
        {"a": loader("a"), "b": loader("b", "truncated_image"), "c": loader("c")},
        zeroshot=ZeroShotSet(["a", "b", "c"], [0, 1, 1], ["cat", "dog"], ["p-{}"]),
    )
    choice = TaskData(
        "m",
        {"a": loader("a"), "b": loader("b", "truncated_image")},
        [
            ChoiceItem("text", ["b"], ["ta", "tb"], 0, item_id="m.csv, line 2"),
            ChoiceItem("text", ["a"], ["ta", "tb"], 0),
        ],
    )
    scores = evaluate_tasks(NamedEmbedder(vectors), [retrieval, zeroshot, choice])
    assert retrieval.retrieval == RetrievalSet(["a", "c"], ["ta", "tc"], [0, 1])
    assert (
        retrieval.notes
        == "skipped 1 (truncated_image: 1 [r: cannot read the image 'b' (b is broken), with its 2 text(s)])"
    )
    assert scores["r"].metrics["text_to_image/R@1"] == 1.0 and scores["r"].counts["texts"] == 2
    assert zeroshot.zeroshot.images == ["a", "c"] and zeroshot.zeroshot.labels == [0, 1]
    assert scores["z"].metrics["top1"] == 1.0
    assert choice.notes == "skipped 1 (truncated_image: 1 [m.csv, line 2: cannot read the image 'b' (b is broken)])"
    assert scores["m"].counts["items"] == 1 and scores["m"].metrics["accuracy"] == 1.0

    table = embed_tasks(NamedEmbedder(vectors), [choice])
    assert table.unreadable == {}  # once left out, the image is not asked for again
    with pytest.raises(UserError, match="task only_bad: no item left to evaluate"):
        drop_unreadable_images(
            [TaskData("only_bad", {}, [ChoiceItem("text", ["x"], ["ta"], 0)])],
            {"x": UnreadableImage("corrupt_image", "x is broken")},
        )


# ---- safe loading ---------------------------------------------------------------------------------------------


def test_load_torch_file_loads_plain_data_and_refuses_code(tmp_path):
    data = {"image_paths": ["a.jpg"], "annotations": [{"json": {"caption": "a dog"}}], "scores": torch.arange(3)}
    torch.save(data, tmp_path / "ok.pt")
    loaded = load_torch_file(tmp_path / "ok.pt")
    assert loaded["annotations"] == data["annotations"] and torch.equal(loaded["scores"], torch.arange(3))

    marker = tmp_path / "PWNED"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps([Evil(marker)], protocol=2))
    with pytest.raises(
        UserError, match=r"evil.pt: refused to load: the file needs arbitrary unpickling of exec, which could run code"
    ):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pt: not a readable torch.save file \(it is empty or ends early\)"):
        load_torch_file(tmp_path / "empty.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:200])
    with pytest.raises(UserError, match=r"cut.pt: not a readable torch.save file \(PytorchStreamReader failed"):
        load_torch_file(tmp_path / "cut.pt")
    with pytest.raises(
        UserError, match=r"nowhere.pt: no such file \(expected a file written by torch.save\). Expected: a dict\.$"
    ):
        load_torch_file(tmp_path / "nowhere.pt", hint="Expected: a dict.")


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_open_rgb_image_names_what_is_wrong(name, tmp_path):
    data, kind = BAD_IMAGES[name]
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    for source in (data, {"bytes": data, "path": None}, path, str(path)):
        with pytest.raises(UnreadableImage) as error:
            open_rgb_image(source)
        assert error.value.kind == kind


def test_open_rgb_image_converts_every_mode_and_refuses_missing_ones(tmp_path):
    for mode in ("L", "LA", "P", "I;16", "1", "RGBA", "CMYK", "RGB"):
        image = open_rgb_image(png_bytes(mode, size=5))
        assert image.mode == "RGB" and image.size == (5, 5)
    # fully transparent: composited onto white (one rule for every tool, as data_builder stores it)
    assert open_rgb_image(png_bytes("RGBA", color=(10, 20, 30, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert open_rgb_image(png_bytes(size=40), max_pixels=1600).size == (40, 40)
    with pytest.raises(
        UnreadableImage, match="40x40 = 1600 pixels, over the decompression-bomb limit of 1599"
    ) as error:
        open_rgb_image(png_bytes(size=40), max_pixels=1599)
    assert error.value.kind == "image_too_large"
    for missing in (tmp_path / "nowhere.png", {"bytes": None, "path": None}, None):
        with pytest.raises(UnreadableImage) as error:
            open_rgb_image(missing)
        assert error.value.kind == "missing_image"
    with pytest.raises(ValueError, match="unknown kind"):
        UnreadableImage("sad_image", "")
    assert set(UNREADABLE_KINDS) == {kind for _, kind in BAD_IMAGES.values()} | {"missing_image"}


def test_eval_loaders_refuse_remote_code_explicitly(root, monkeypatch):
    seen = []
    for owner in (transformers.AutoConfig, transformers.CLIPModel, transformers.CLIPProcessor):
        real = owner.from_pretrained.__func__

        def spy(cls, *args, _real=real, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code", "not given")))
            return _real(cls, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))
    load_clip(str(root / "clip"))
    # (check_clip_checkpoint reads a local folder's config.json as JSON; the processor reads the config
    # again itself, passing the setting on)
    assert [name for name, _ in seen][:2] == ["CLIPModel", "CLIPProcessor"]
    assert all(trust is False for _, trust in seen)
