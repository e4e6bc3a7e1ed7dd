"""data_builder.py end to end on tiny fixtures in the published formats: contract columns, negations
that pass the quality gate, counted skips, atomic and deterministic writes, errors, card and push."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub import DatasetCard, HfApi
from PIL import Image

import data_builder
from omninegclip.building import negation, parallel, quality, rewrite, storage, writing
from omninegclip.building.cards import hub_dataset_card, render_dataset_card
from omninegclip.building.vocabulary import find_mentions, mentions
from omninegclip.common.cli import UserError, run_cli

CATEGORIES = {1: "person", 3: "car", 6: "bus", 17: "cat", 18: "dog", 34: "frisbee", 63: "couch"}
# image id -> (caption, category ids)
COCO_IMAGES = {
    1: ("A dog sleeping on a couch.", [18, 63]),
    2: ("A cat and a dog on a sofa.", [17, 18, 63]),
    3: ("A dog catching a frisbee.", [18, 34]),
    4: ("A man walking his dog.", [1, 18]),
    5: ("A bus next to a car on the street.", [3, 6]),
    6: ("A living room.", [63]),
    7: ("A grey photo of a dog.", [18]),  # stored grayscale: converted to RGB
    8: ("A dog on a couch.", [18, 63]),  # truncated file: skipped, named
}


def write_coco(root: Path) -> list[str]:
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images = [
        {"id": image_id, "file_name": f"{image_id:06d}.png", "width": 8, "height": 8} for image_id in COCO_IMAGES
    ]
    for image_id in COCO_IMAGES:
        path = images_dir / f"{image_id:06d}.png"
        Image.new("L" if image_id == 7 else "RGB", (8, 8), 90 if image_id == 7 else (image_id * 20, 0, 0)).save(path)
        if image_id == 8:
            path.write_bytes(path.read_bytes()[:40])
    captions = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": [
            {"id": 100 + image_id, "image_id": image_id, "caption": caption}
            for image_id, (caption, _) in COCO_IMAGES.items()
        ],
    }
    instances = {
        "info": {},
        "licenses": [],
        "images": images,
        "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in CATEGORIES.items()],
        "annotations": [
            {
                "id": 10 * image_id + n,
                "image_id": image_id,
                "category_id": cid,
                "bbox": [0, 0, 2 + n, 2],
                "area": 4,
                "iscrowd": 0,
            }
            for image_id, (_, cids) in COCO_IMAGES.items()
            for n, cid in enumerate(cids)
        ],
    }
    (root / "captions_train2017.json").write_text(json.dumps(captions))
    (root / "instances_train2017.json").write_text(json.dumps(instances))
    return [
        "coco",
        "--captions",
        str(root / "captions_train2017.json"),
        "--instances",
        str(root / "instances_train2017.json"),
        "--images",
        str(images_dir),
    ]


def build(args: list[str], out: Path, *extra: str) -> dict:
    """A build; without the statement family's extra rows unless the test names --statement_rate (the
    tests here count the rows of each source; test_unseen_phrasings builds with the defaults)."""
    statements = [] if "--statement_rate" in [*args, *extra] else ["--statement_rate", "0"]
    return data_builder.main([*args, "--out", str(out), "--no_progress", *statements, *extra])


def rows_of(out: Path) -> dict[str, list[dict]]:
    loaded = storage.load_with_images(out)
    return {split: list(loaded[split]) for split in loaded}  # iterating decodes the images


@pytest.fixture
def coco_args(tmp_path):
    return write_coco(tmp_path / "coco")


def test_coco_build_writes_contract_columns_and_valid_negations(tmp_path, coco_args):
    out = tmp_path / "out"
    summary = build(coco_args, out, "--absent_top_k", "1", "--validation_fraction", "0.25", "--test_fraction", "0.25")
    loaded = datasets.load_from_disk(str(out))
    assert list(loaded) == ["train", "validation", "test"]
    assert set(data_builder.CONTRACT_COLUMNS) <= set(loaded["train"].column_names)
    assert loaded["train"].features["image"] == datasets.Value(
        "string"
    )  # a path under images/, each image stored once
    assert all(
        path.startswith("images/") and (out / path).is_file() for split in loaded.values() for path in split["image"]
    )
    by_image = {}
    for split, rows in rows_of(out).items():
        for row in rows:
            assert split == negation.split_for(row["image_id"], None, 0.25, 0.25)
            by_image[row["image_id"]] = row
    assert sorted(by_image) == ["1", "2", "3", "4", "5", "6", "7"]  # 8 is truncated
    for row in by_image.values():
        assert row["negated_object"] in row["present_objects"] and mentions(
            row["presence_negated"], row["negated_object"]
        )
        assert row["absent_object"] not in row["present_objects"] and mentions(
            row["absence_negated"], row["absent_object"]
        )
        # Its false twin affirms the absent object, unnegated, after the whole original caption.
        affirmed = [m for m in find_mentions(row["absence_affirmed"], [row["absent_object"]])]
        assert affirmed and not any(m.negated for m in affirmed), row["absence_affirmed"]
        assert row["absence_affirmed"].startswith(row["caption"].rstrip("."))
        assert row["image"].mode == "RGB" and row["source"] == "coco"
    # Absent objects by co-occurrence (top 1): with {dog, frisbee}, the couch (P=.5 given a dog) ...
    assert by_image["3"]["absent_object"] == "couch"
    # ... and with {bus, car}, never seen with anything else, the most frequent object overall.
    assert by_image["5"]["absent_object"] == "dog"
    assert by_image["5"]["negated_object"] in ("bus", "car")
    # The living room's caption names no object: its largest object is negated in a clause.
    assert by_image["6"]["negated_object"] == "couch" and by_image["6"]["presence_rewrite"].startswith("suffix_")
    assert by_image["6"]["present_objects"] == ["couch"]
    assert summary["rows_in"] == 8 and sum(summary["rows_out"].values()) == 7
    assert summary["skips"]["row:corrupt_image"] == 1 and summary["skip_examples"]["row:corrupt_image"] == [
        "000008.png"
    ]
    assert summary["images_converted_to_rgb"] == {"L": 1}
    assert summary["negations"] == {"both": 7}
    assert summary["quality_gate"]["passed"] and summary["quality_gate"]["total"]["presence"]["passed"] == 7
    on_disk = json.loads((out / writing.SUMMARY_FILE).read_text())
    assert on_disk["rows_out"] == summary["rows_out"] and len(on_disk["examples"]) == 3
    card = DatasetCard((out / writing.CARD_FILE).read_text())
    assert card.data.license == "cc-by-4.0" and "negation" in card.data.tags


def test_same_seed_same_bytes_and_another_seed_differs(tmp_path, coco_args):
    def snapshot(folder: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
        }

    build(coco_args, tmp_path / "a", "--seed", "3")
    build(coco_args, tmp_path / "b", "--seed", "3")
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    build(coco_args, tmp_path / "c", "--seed", "4", "--captions_per_image", "1")

    def texts(out):
        return sorted((r["presence_negated"], r["absence_negated"]) for rows in rows_of(out).values() for r in rows)

    assert texts(tmp_path / "a") != texts(tmp_path / "c")


def test_overwrite_is_refused_then_atomic_and_a_failed_build_leaves_the_old_output(tmp_path, coco_args, monkeypatch):
    out = tmp_path / "out"
    build(coco_args, out, "--seed", "1")
    before = (out / writing.SUMMARY_FILE).read_bytes()
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        build(coco_args, out)
    stale = tmp_path / ".out.building-999999999"  # left by a killed build (no such process)
    (stale / "output").mkdir(parents=True)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_builder, "quality_gate", killed)
    with pytest.raises(KeyboardInterrupt):
        build(coco_args, out, "--overwrite", "--seed", "2")
    assert (out / writing.SUMMARY_FILE).read_bytes() == before
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".out")] == []
    monkeypatch.undo()
    build(coco_args, out, "--overwrite", "--seed", "2")
    assert json.loads((out / writing.SUMMARY_FILE).read_text())["arguments"]["seed"] == 2
    (tmp_path / "notmine").mkdir()
    (tmp_path / "notmine" / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="only replaces a dataset this tool built"):
        build(coco_args, tmp_path / "notmine", "--overwrite")


def test_cli_errors_are_one_clean_paragraph(tmp_path, coco_args, capsys):
    missing = [*coco_args[:2], str(tmp_path / "nowhere.json"), *coco_args[3:], "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(data_builder.main, missing)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "nowhere.json: no such file" in error and "Traceback" not in error
    with pytest.raises(UserError, match="--validation_fraction \\+ --test_fraction = 1.0"):
        build(coco_args, tmp_path / "o", "--validation_fraction", "0.5", "--test_fraction", "0.5")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(UserError, match="the source has no usable rows"):
        build(["coco", "--captions", str(empty), *coco_args[3:]], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def write_caption_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    lines = []
    captions = {
        "a.png": "Two puppies on a sofa",
        "b.png": "A sunset over the sea",
        "c.png": "A dog chasing a frisbee",
        "d.png": "A man sitting on a couch",
        "e.png": "A cat sleeping on a bed",
    }
    for name, caption in captions.items():
        Image.new("RGBA" if name == "e.png" else "RGB", (8, 8)).save(root / name)
        lines.append(json.dumps({"file_name": name, "caption": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_captions_source_counts_captions_without_objects(tmp_path):
    folder = write_caption_folder(tmp_path / "flickr")
    summary = build(
        ["captions", "--dataset", str(folder)], tmp_path / "out", "--test_fraction", "0", "--validation_fraction", "0"
    )
    rows = rows_of(tmp_path / "out")["train"]
    assert sorted(row["image_id"] for row in rows) == ["a.png", "c.png", "d.png", "e.png"]
    skips = summary["skips"]
    assert (
        skips["presence:no_detectable_object"] == 1
        and skips["absence:no_detectable_object"] == 1
        and skips["row:no_negation"] == 1
    )
    assert summary["images_converted_to_rgb"] == {"RGBA": 1}
    puppies = next(row for row in rows if row["image_id"] == "a.png")
    assert puppies["present_objects"] == ["couch", "dog"] and puppies["absent_object"] not in ("couch", "dog")
    assert summary["quality_gate"]["passed"] and summary["negations"] == {"both": 4}


def test_ccneg_build_keeps_the_published_evaluation_split(tmp_path):
    folder = tmp_path / "ccneg" / "cc3m_subset_images_extracted_final"
    folder.mkdir(parents=True)
    paths, annotations = [], []
    for index in range(6):
        Image.new("RGB", (8, 8), (index, 0, 0)).save(folder / f"{index}.jpg")
        paths.append(f"/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/{index}.jpg")
        negative = (
            "a man holding a cup" if index == 0 else "a man not holding a cup, outdoors"
        )  # item 0 has no negation
        annotations.append(
            {
                "json": {"caption": "a man holding a cup outdoors"},
                "sop_data": {
                    "negative-prompt": negative,
                    "sop_chosen_object": "cup",
                    "sop_decomposition": {"subject": "man"},
                },
            }
        )
    torch.save({"image_paths": paths, "annotations": annotations}, tmp_path / "ccneg_preprocessed.pt")
    summary = build(
        [
            "ccneg",
            "--annotations",
            str(tmp_path / "ccneg_preprocessed.pt"),
            "--images",
            str(tmp_path / "ccneg"),
            "--eval_size",
            "2",
        ],
        tmp_path / "out",
        "--validation_fraction",
        "0.3",
    )
    splits = rows_of(tmp_path / "out")
    assert sorted(row["source_index"] for row in splits["test"]) == [4, 5]
    assert sorted(row["source_index"] for row in splits["train"] + splits["validation"]) == [1, 2, 3]
    row = splits["test"][0]
    assert (
        row["presence_negated"] == "a man not holding a cup outdoors"
        and row["negated_object"] == "cup"
        and row["presence_rewrite"] == "ccneg"
    )
    assert row["absence_negated"] is None
    assert summary["skips"]["presence:quality_gate:no_negation_cue"] == 1 and summary["negations"] == {
        "presence_only": 5
    }


def test_negationclip_build_with_synthesized_presence(tmp_path):
    images = tmp_path / "train2014"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "COCO_train2014_000000000009.jpg")
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 8, "height": 8}],
        "annotations": [
            {
                "id": 1,
                "image_id": 9,
                "caption": "a dog on a couch",
                "updated_caption": "a dog on a couch, with no cat in sight",
            },
            {"id": 2, "image_id": 10, "caption": "a bus", "updated_caption": "a bus without a car"},
        ],
    }
    data["images"].append(
        {"id": 10, "file_name": "COCO_train2014_000000000010.jpg", "width": 8, "height": 8}
    )  # file missing
    (tmp_path / "negationclip_captions_train2014.json").write_text(json.dumps(data))
    args = [
        "negationclip",
        "--annotations",
        str(tmp_path / "negationclip_captions_train2014.json"),
        "--images",
        str(images),
    ]
    summary = build(args, tmp_path / "out", "--test_fraction", "0", "--validation_fraction", "0")
    (row,) = rows_of(tmp_path / "out")["train"]
    assert (row["absence_negated"], row["absent_object"], row["absence_rewrite"]) == (
        "a dog on a couch, with no cat in sight",
        "cat",
        "negationclip",
    )
    assert row["presence_negated"] is None and summary["negations"] == {"absence_only": 1}
    assert summary["skips"] == {"row:missing_image": 1} and summary["skip_examples"] == {
        "row:missing_image": ["COCO_train2014_000000000010.jpg"]
    }
    build(
        args,
        tmp_path / "both",
        "--test_fraction",
        "0",
        "--validation_fraction",
        "0",
        "--synthesize_presence",
        "--max_rows",
        "1",
    )
    (row,) = rows_of(tmp_path / "both")["train"]
    assert row["negated_object"] in ("dog", "couch") and row["presence_negated"] is not None


def test_llm_rewriter_outputs_are_gated_and_fallbacks_counted(tmp_path, coco_args, monkeypatch):
    def fake_model(prompt: str) -> str:
        caption = prompt.rsplit("Caption: ", 1)[1].split("\n")[0]
        obj = prompt.rsplit("Object: ", 1)[1].split("\n")[0]
        return (
            f"{caption}, and no {obj} anywhere" if "Add to the image caption" in prompt else caption
        )  # presence: unchanged

    monkeypatch.setattr(
        rewrite.LLMRewriter, "from_pretrained", classmethod(lambda cls, model_id: cls(fake_model, f"llm:{model_id}"))
    )
    summary = build(coco_args, tmp_path / "out", "--rewriter_model", "tiny-lm")
    assert summary["rewrites"]["absence"] == {"llm:tiny-lm": 7}
    assert "llm:tiny-lm" not in summary["rewrites"]["presence"]
    assert summary["llm_rewriter"] == {"model": "llm:tiny-lm", "fallbacks_to_rules": {"presence": 8}}


def test_quality_gate_counts_failures_by_reason():
    features = data_builder.contract_features()
    row = dict(
        image=None,
        caption="a dog on a couch",
        present_objects=["dog", "couch"],
        source="t",
        image_id="1",
        source_index=0,
        presence_negated="no dog on a couch",
        negated_object="dog",
        presence_rewrite="x",
        absence_negated="a dog on a couch with no cats",
        absence_affirmed="a dog on a couch, with a cat",
        absent_object="cat",
        absence_rewrite="y",
    )
    bad = dict(
        row,
        image_id="2",
        presence_negated="no cat on a couch",
        negated_object="cat",
        absence_negated=None,
        absence_affirmed=None,
        absent_object=None,
    )
    worse = dict(row, image_id="3", absence_negated="a dog on a couch with no sofa", absent_object="couch")
    gate = data_builder.quality_gate(
        datasets.DatasetDict(
            train=datasets.Dataset.from_list([row, bad], features=features),
            test=datasets.Dataset.from_list([worse], features=features),
        )
    )
    assert gate["train"]["presence"] == {"passed": 1, "missing": 0, "failed": {"object_not_present": 1}}
    assert gate["train"]["absence"] == {"passed": 1, "missing": 1, "failed": {}}
    assert (
        gate["total"]["absence"]["failed"] == {"object_present": 1}
        and gate["total"]["rows"] == 3
        and not gate["passed"]
    )
    with pytest.raises(UserError, match="lacks the contract columns"):
        data_builder.quality_gate(datasets.DatasetDict(train=datasets.Dataset.from_dict({"caption": ["x"]})))


def test_dataset_card_parses_and_push_is_called(tmp_path, coco_args, monkeypatch):
    pushed = []
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **kw: (
            pushed.append(("repo", repo_id, kw.get("repo_type"))) or types.SimpleNamespace(repo_id=repo_id)
        ),
    )
    # What goes up carries each row's image (an Image feature: datasets embeds the files' bytes), not a path.
    monkeypatch.setattr(
        datasets.DatasetDict,
        "push_to_hub",
        lambda self, repo_id, **kw: pushed.append(
            ("data", repo_id, sorted(self))
            if isinstance(self["train"].features["image"], datasets.Image)
            else ("paths", repo_id)
        ),
    )
    monkeypatch.setattr(
        DatasetCard,
        "push_to_hub",
        lambda self, repo_id, **kw: pushed.append(
            ("card", repo_id, kw.get("repo_type"), self.data.license, self.data.configs[0]["data_files"][0]["path"])
        ),
    )
    build(coco_args, tmp_path / "out", "--push_to_hub", "me/coco-neg", "--license", "cc-by-4.0")
    # The card goes first: DatasetDict.push_to_hub then writes its dataset_info into it
    # (tests/test_hub_cards.py pushes for real).
    assert pushed == [
        ("repo", "me/coco-neg", "dataset"),
        ("card", "me/coco-neg", "dataset", "cc-by-4.0", "data/train-*"),
        ("data", "me/coco-neg", ["test", "train", "validation"]),
    ]
    local = DatasetCard(
        (tmp_path / "out" / writing.CARD_FILE).read_text()
    )  # the folder's own card: its Arrow files, paths
    assert local.data.configs[0]["data_files"][0]["path"] == "train/data-*.arrow"
    assert local.data.dataset_info["features"][0] == {"name": "image", "dtype": "string"}

    summary = {
        "source": "coco",
        "rows_in": 10,
        "rows_out": {"train": 8, "validation": 1, "test": 1},
        "skips": {"row:no_negation": 2},
        "examples": [{"caption": "a | b", "presence_negated": "no a", "absence_negated": None}],
    }
    card = DatasetCard(
        render_dataset_card(
            summary,
            data_builder.contract_features(),
            license="other",
            license_name="coco-terms",
            source_description="COCO.",
            num_bytes={"train": 80, "validation": 10, "test": 10},
        )
    )
    assert (
        card.data.license == "other"
        and card.data.license_name == "coco-terms"
        and card.data.size_categories == ["n<1K"]
    )
    assert (
        "configs" not in card.data.to_dict()
    )  # no data_files given: no configs; hub_dataset_card adds the pushed layout's
    assert hub_dataset_card(str(card)).data.to_dict()["configs"][0]["data_files"][0] == {
        "split": "train",
        "path": "data/train-*",
    }
    assert card.data.dataset_info["splits"][0] == {"name": "train", "num_bytes": 80, "num_examples": 8}
    with pytest.raises(ValueError, match="license_name"):
        render_dataset_card(summary, data_builder.contract_features(), license="other")
    assert {feature["name"] for feature in card.data.dataset_info["features"]} >= set(data_builder.CONTRACT_COLUMNS)
    assert "| row:no_negation | 2 |" in card.text and "a \\| b" in card.text


def test_shapes_subcommand_writes_the_world_through_the_same_writer(tmp_path, monkeypatch):
    calls = []

    def build_world(
        num_train=16000, num_validation=1000, num_test=2000, seed=0, image_size=64, progress=True, statement_rate=0.0
    ):
        calls.append((num_train, num_validation, num_test, seed, image_size, statement_rate))
        features = data_builder.contract_features()
        row = dict(
            image={"bytes": _png_bytes(image_size), "path": None},
            caption="a red circle",
            present_objects=["circle"],
            source="shapes",
            image_id="0",
            source_index=0,
            presence_negated="no red circle",
            negated_object="circle",
            presence_rewrite="world",
            absence_negated="a red circle and no square",
            absence_affirmed="a red circle and a square",
            absent_object="square",
            absence_rewrite="world",
        )
        return datasets.DatasetDict(
            {
                split: datasets.Dataset.from_list(
                    [dict(row, image_id=f"{split}{i}") for i in range(count)], features=features
                )
                for split, count in (("train", num_train), ("validation", num_validation), ("test", num_test))
            }
        )

    monkeypatch.setitem(sys.modules, "omninegclip.building.shapes", types.SimpleNamespace(build_world=build_world))
    summary = build(
        [
            "shapes",
            "--num_train",
            "3",
            "--num_validation",
            "1",
            "--num_test",
            "2",
            "--image_size",
            "16",
            "--statement_rate",
            "0.25",
        ],
        tmp_path / "world",
        "--seed",
        "5",
    )
    assert calls == [(3, 1, 2, 5, 16, 0.25)]
    assert summary["rows_out"] == {"train": 3, "validation": 1, "test": 2} and summary["quality_gate"]["passed"]
    assert datasets.load_from_disk(str(tmp_path / "world"))["train"][0]["image"].size == (16, 16)


def _png_bytes(size: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_real_shapes_world_passes_the_gate(tmp_path):
    summary = build(
        ["shapes", "--num_train", "8", "--num_validation", "2", "--num_test", "2", "--image_size", "32"],
        tmp_path / "world",
    )
    assert summary["rows_out"] == {"train": 8, "validation": 2, "test": 2}
    assert summary["quality_gate"]["passed"], summary["quality_gate"]


def test_summary_records_provenance_and_every_row_is_accounted_for(tmp_path, coco_args):
    summary = build(coco_args, tmp_path / "out", "--seed", "7", "--captions_per_image", "0")
    made_by = summary["provenance"]
    assert made_by["seed"] == 7 and made_by["libraries"]["datasets"] == datasets.__version__
    assert made_by["libraries"]["transformers"] and "git_commit" in made_by
    on_disk = json.loads((tmp_path / "out" / writing.SUMMARY_FILE).read_text())
    assert on_disk["provenance"] == json.loads(json.dumps(made_by))
    row_skips = sum(count for reason, count in summary["skips"].items() if reason.startswith("row:"))
    assert summary["rows_in"] == sum(summary["rows_out"].values()) + row_skips == 8
    card = (tmp_path / "out" / writing.CARD_FILE).read_text()
    assert "## Provenance" in card and f"datasets {datasets.__version__}" in card and "Seed 7" in card


def write_captions_jsonl(root: Path, rows: list[tuple[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for index, _ in enumerate(rows):
        Image.new("RGB", (8, 8), (index * 30, 0, 0)).save(root / f"{index}.png")
    path = root / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"image": f"{index}.png", "caption": caption}) + "\n" for index, (caption, _) in enumerate(rows)
        )
    )
    return path


def test_captions_source_same_seed_same_bytes(tmp_path):
    data = write_captions_jsonl(
        tmp_path / "data",
        [
            ("a dog on a couch", ""),
            ("a cat on a bed", ""),
            ("a man riding a horse", ""),
            ("two people near a bus", ""),
        ],
    )

    def snapshot(folder: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
        }

    for name in ("a", "b"):
        build(["captions", "--dataset", str(data)], tmp_path / name, "--seed", "5")
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")


FILLER = "and a long winding description of the room " * 12


def test_negations_the_text_encoder_would_not_see_are_refused_and_long_texts_counted(tmp_path):
    data = write_captions_jsonl(
        tmp_path / "data",
        [
            ("a couch " + FILLER + "and a dog", "couch named first: its negation is seen"),
            ("a room " + FILLER + "with a dog", "the dog only beyond 77 tokens: no presence negation"),
            ("a cat on a bed", ""),
            ("a dog on a couch", ""),
            ("a man riding a horse", ""),
        ],
    )
    summary = build(
        ["captions", "--dataset", str(data)], tmp_path / "out", "--validation_fraction", "0", "--test_fraction", "0"
    )
    rows = {row["caption"][:7]: row for row in rows_of(tmp_path / "out")["train"]}
    window = negation.TokenWindow()
    first = rows["a couch"]
    assert first["negated_object"] == "couch" and window.negation_visible(
        first["caption"], first["presence_negated"], "couch"
    )
    second = rows["a room "]
    assert second["presence_negated"] is None and second["absence_negated"] is not None
    assert window.negation_visible(second["caption"], second["absence_negated"], second["absent_object"])
    assert summary["skips"]["presence:negation_beyond_context"] == 1
    long = summary["over_context_length"]
    assert long["limit"] == 77 and long["texts"]["caption"] == 2 and long["texts"]["absence_negated"] >= 1
    assert window.too_long([first["caption"], "a dog"]) == 1 and window.visible("a dog") == "a dog"
    assert first["caption"].startswith(window.visible(first["caption"])) and len(
        window.visible(first["caption"])
    ) < len(first["caption"])


# ---- each image stored once; checked cheaply; stored in parallel --------------------------------------------


def test_each_image_is_stored_once_whatever_the_captions_and_training_reads_the_folder(tmp_path, tokenizer):
    from bench.coco_fixture import make_fixture
    from omninegclip.training.data import CaptionColumns, load_any_dataset, prepare_dataset

    fixture = make_fixture(tmp_path / "coco", images=6, progress=False)  # 5 captions an image, realistic JPEGs
    assert 80 * 1024 < fixture.mean_image_bytes < 160 * 1024
    out = tmp_path / "out"
    summary = build(
        [
            "coco",
            "--captions",
            fixture.captions_file,
            "--instances",
            fixture.instances_file,
            "--images",
            fixture.images_dir,
        ],
        out,
        "--captions_per_image",
        "0",
        "--validation_fraction",
        "0",
        "--test_fraction",
        "0",
    )
    loaded = datasets.load_from_disk(str(out))
    rows = loaded["train"]
    ids = set(rows["image_id"])
    assert len(rows) > len(ids) == 6  # several captions of each image kept
    files = sorted(path for path in (out / storage.IMAGES_FOLDER).rglob("*") if path.is_file())
    assert len(files) == len(ids) == summary["images"]["files"]
    originals = {path.name: path.read_bytes() for path in Path(fixture.images_dir).iterdir()}
    # Stored as they came (no re-encoding), once: the bytes on disk are the input's, whatever the row count.
    assert sorted(file.read_bytes() for file in files) == sorted(originals.values())
    assert summary["images"]["bytes_written"] == summary["images"]["bytes_read"] == fixture.image_bytes
    others = [
        path for path in out.rglob("*") if path.is_file() and storage.IMAGES_FOLDER not in path.relative_to(out).parts
    ]
    assert sum(path.stat().st_size for path in others) < fixture.image_bytes / 10
    assert not any(image[600:700] in path.read_bytes() for path in others for image in originals.values())
    for row in rows.select_columns(["image", "image_id"]):
        assert (out / row["image"]).read_bytes() == originals[f"{int(row['image_id']):012d}.jpg"]
    # The training side reads the folder as it is: relative paths resolved, every image decodes.
    raw = load_any_dataset(str(out), "train")
    columns = CaptionColumns.from_flags("image", "caption", "presence_negated", "absence_negated", "absence_affirmed")
    prepared, (report,) = prepare_dataset([raw], [str(out)], columns, tokenizer, max_length=77)
    assert report.kept == len(rows) and not report.skips and len(prepared) == len(rows)
    assert len(prepared.images) == len(ids)  # rows of one image share it: each is decoded once
    first = prepared.images.read([0])[0]
    assert Path(first).is_file() and (out / storage.IMAGES_FOLDER).resolve() in Path(first).parents
    # load_with_images gives the decoded column (what --push_to_hub uploads); load_dataset reads the folder too.
    assert storage.load_with_images(out)["train"][0]["image"].mode == "RGB"
    assert datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))["train"]["image"] == rows["image"]


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def test_the_cheap_image_check_still_catches_truncated_and_corrupt_jpegs():
    good = _jpeg(0)
    assert storage._checked_image(good) == (good, ".jpg", None)  # stored as it came
    for broken in (good[: len(good) // 2], good[:-2], good[:300] + bytes(len(good) - 300)):
        with pytest.raises(storage._BROKEN_IMAGE):
            storage._checked_image(broken)
    grey = Image.new("L", (8, 8), 90)
    import io

    buffer = io.BytesIO()
    grey.save(buffer, format="JPEG")
    stored, extension, mode = storage._checked_image(buffer.getvalue())
    assert (extension, mode) == (".png", "L") and Image.open(io.BytesIO(stored)).mode == "RGB"


def test_parallel_image_storage_gives_the_same_files_and_counts(tmp_path):
    from omninegclip.building.sources import ImageRef

    count = 2 * storage.MIN_IMAGES_PER_WORKER + 3
    (tmp_path / "in").mkdir()
    jobs = []
    for index in range(count):
        path = tmp_path / "in" / f"{index}.jpg"
        data = _jpeg(index, (16, 16))
        path.write_bytes(data if index % 7 else data[: len(data) // 2])  # every 7th truncated
        jobs.append(
            (ImageRef(path.name, path if index != 5 else tmp_path / "in" / "gone.jpg"), f"images/{index % 3}/{index}")
        )
    serial = storage.store_images(jobs, tmp_path / "serial", num_proc=1)
    parallel = storage.store_images(jobs, tmp_path / "parallel", num_proc=2)
    assert serial == parallel
    assert [result.reason for result in serial].count("corrupt_image") == len(range(0, count, 7))
    assert serial[5].reason == "missing_image" and serial[1].path == "images/1/1.jpg"
    snapshot = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert snapshot(tmp_path / "serial") == snapshot(tmp_path / "parallel") and len(
        snapshot(tmp_path / "serial")
    ) == sum(r.path is not None for r in serial)


def test_a_build_in_worker_processes_writes_the_same_bytes_as_one_in_a_single_process(tmp_path, monkeypatch):
    from bench.coco_fixture import make_fixture

    fixture = make_fixture(tmp_path / "coco", images=6, progress=False)
    args = [
        "coco",
        "--captions",
        fixture.captions_file,
        "--instances",
        fixture.instances_file,
        "--images",
        fixture.images_dir,
        "--captions_per_image",
        "0",
    ]
    monkeypatch.setattr(data_builder, "NEGATION_CHUNK", 3)  # 30 rows: 10 chunks, so that 2 workers negate them
    monkeypatch.setattr(storage, "MIN_IMAGES_PER_WORKER", 2)  # and 2 workers store the 6 images
    monkeypatch.setattr(quality, "GATE_BATCH", 3)  # and check the rows
    workers = []
    real_pool = parallel.multiprocessing.get_context("fork").Pool
    monkeypatch.setattr(
        parallel.multiprocessing,
        "get_context",
        lambda method: types.SimpleNamespace(
            Pool=lambda processes, **kwargs: workers.append(processes) or real_pool(processes, **kwargs)
        ),
    )
    build(args, tmp_path / "serial", "--num_proc", "1")
    assert workers == []
    build(args, tmp_path / "parallel", "--num_proc", "2")
    assert workers[:2] == [2, 2] and set(workers) == {2} and len(workers) >= 3  # negations, images, the quality gate

    def snapshot(folder: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
        }

    assert snapshot(tmp_path / "serial") == snapshot(tmp_path / "parallel")


def test_a_built_folder_can_be_the_input_of_the_captions_source(tmp_path, coco_args):
    build(coco_args, tmp_path / "first", "--validation_fraction", "0", "--test_fraction", "0")
    summary = build(["captions", "--dataset", str(tmp_path / "first"), "--split", "train"], tmp_path / "second")
    assert summary["skips"].get("row:missing_image") is None and sum(summary["rows_out"].values()) > 0
    second = rows_of(tmp_path / "second")
    assert {row["image"].size for rows in second.values() for row in rows} == {(8, 8)}


def test_images_of_one_name_in_two_folders_are_both_kept_and_the_output_does_not_depend_on_where_the_input_is(
    tmp_path,
):
    for folder in ("a", "b"):
        (tmp_path / "in" / folder).mkdir(parents=True)
        (tmp_path / "in" / folder / "1.jpg").write_bytes(_jpeg(ord(folder)))
    rows = [{"image": f"{folder}/1.jpg", "caption": "a dog on a couch"} for folder in ("a", "b")]
    (tmp_path / "in" / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    build(
        ["captions", "--dataset", str(tmp_path / "in" / "pairs.jsonl"), "--image_id_column", "caption"],
        tmp_path / "one",
        "--validation_fraction",
        "0",
        "--test_fraction",
        "0",
    )
    paths = datasets.load_from_disk(str(tmp_path / "one"))["train"]["image"]
    assert len(set(paths)) == 2 and {(tmp_path / "one" / path).read_bytes() for path in paths} == {
        _jpeg(ord("a")),
        _jpeg(ord("b")),
    }
    (tmp_path / "in").rename(tmp_path / "moved")
    build(
        ["captions", "--dataset", str(tmp_path / "moved" / "pairs.jsonl"), "--image_id_column", "caption"],
        tmp_path / "two",
        "--validation_fraction",
        "0",
        "--test_fraction",
        "0",
    )
    assert datasets.load_from_disk(str(tmp_path / "two"))["train"]["image"] == paths


def test_the_statement_family_adds_negbench_statement_rows_that_pass_the_gate(tmp_path, coco_args):
    train_only = ("--validation_fraction", "0", "--test_fraction", "0")
    summary = build(coco_args, tmp_path / "out", "--absent_top_k", "1", "--statement_rate", "1", *train_only)
    rows = rows_of(tmp_path / "out")["train"]
    # Every training row with both negations keeps its caption and gets one extra row right after it.
    assert len(rows) == 14 and summary["negations"] == {"both": 14}
    originals, extras = rows[0::2], rows[1::2]
    build(coco_args, tmp_path / "none", "--absent_top_k", "1", "--statement_rate", "0", *train_only)
    plain = rows_of(tmp_path / "none")["train"]
    assert originals == plain  # the source rows are exactly those of a build without statements
    for row, extra in zip(originals, extras):
        present, absent = row["negated_object"], row["absent_object"]
        assert row["presence_rewrite"] != "statement"
        assert extra["presence_rewrite"] == extra["absence_rewrite"] == "statement"
        assert (extra["image"], extra["image_id"], extra["source_index"]) == (
            row["image"],
            row["image_id"],
            row["source_index"],
        )
        assert (extra["negated_object"], extra["absent_object"]) == (present, absent)
        assert extra["caption"] == rewrite.STATEMENT_AFFIRMS.format(x=rewrite._a_thing(present))
        assert extra["presence_negated"] == rewrite.STATEMENT_NEGATES.format(x=rewrite._a_thing(present))
        assert extra["absence_negated"] == rewrite.STATEMENT_NEGATES.format(x=rewrite._a_thing(absent))
        assert extra["absence_affirmed"] == rewrite.STATEMENT_AFFIRMS.format(x=rewrite._a_thing(absent))
        assert present in extra["present_objects"] and absent not in extra["present_objects"]
    assert summary["rewrites"]["presence"]["statement"] == summary["rewrites"]["absence"]["statement"] == 7
    assert summary["statements"] == {
        "rate": 1.0,
        "rows": 7,
        "written": 7,
        "rows_with_both_negations": 7,
        "presence_only": 0,
        "absence_only": 0,
    }
    assert summary["quality_gate"]["passed"]
    # The evaluation splits keep one row per source row: statement rows are training rows.
    fractions = ("--validation_fraction", "0.3", "--test_fraction", "0.3")
    split = build(coco_args, tmp_path / "split", "--absent_top_k", "1", "--statement_rate", "1", *fractions)
    held_out = [row for name in ("validation", "test") for row in rows_of(tmp_path / "split")[name]]
    assert held_out and not any(row["presence_rewrite"] == "statement" for row in held_out)
    assert split["statements"]["written"] == split["rows_out"]["train"] // 2
    with pytest.raises(UserError, match=r"--statement_rate 1.5 must be in \[0, 1\]"):
        build(coco_args, tmp_path / "bad", "--statement_rate", "1.5")
