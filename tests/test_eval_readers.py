"""Each benchmark reader on a small fixture written in its published format, and its bad-input errors."""

from __future__ import annotations

import csv
import json
import sys
import types
from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from eval import ccneg, negbench, negrefcocog, retrieval, sugarcrepe, tasks, valse, zeroshot
from eval.items import ChoiceItem, TaskData
from omninegclip.common.cli import UserError


def png(path, color=(200, 30, 30), size=(16, 12)):
    """A tiny lossless image, whatever the file name says (benchmarks name JPEGs; pixels are checked exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="PNG")
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ----- CC-Neg ----------------------------------------------------------------------------------


def write_ccneg(tmp_path, count=5):
    images = tmp_path / "ccneg_images" / "cc3m_subset_images_extracted_final"
    for index in range(count):
        png(images / f"{index}.jpg", (index * 40, 10, 10))
    data = {
        # as on the authors' machine: absolute paths that do not exist here
        "image_paths": [
            f"/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/{index}.jpg" for index in range(count)
        ],
        "annotations": [
            {
                "json": {"caption": f"a dog, a cat and bird {index}", "key": f"{index:09d}"},
                "sop_data": {
                    "negative-prompt": f"a dog, a cat but no bird {index}",
                    "sop_chosen_object": "bird",
                    "sop_decomposition": {"subject": "dog", "object": "bird", "predicate": "and"},
                },
            }
            for index in range(count)
        ],
        "num_ops": {1: list(range(count))},
    }
    torch.save(data, tmp_path / "ccneg_preprocessed.pt")
    return tmp_path / "ccneg_preprocessed.pt", images


def test_ccneg_reads_the_last_eval_size_items_and_strips_commas_from_the_negation(tmp_path, monkeypatch):
    path, images = write_ccneg(tmp_path)
    monkeypatch.setattr(ccneg, "EVAL_SIZE", 3)
    task = ccneg.read_ccneg(path, images)
    assert [item.texts for item in task.choices] == [
        [f"a dog, a cat and bird {i}", f"a dog a cat but no bird {i}"] for i in (2, 3, 4)
    ]
    assert all(item.choose == "text" and item.answer == 0 for item in task.choices)
    assert task.choices[0].images == [str(images / "2.jpg")]
    assert task.images[str(images / "4.jpg")]().getpixel((0, 0)) == (160, 10, 10)
    assert task.notes == ""
    assert len(ccneg.read_ccneg(path, images, max_items=2).choices) == 2
    assert ccneg.read_ccneg(path, images.parent).choices[0].images == [
        str(images / "2.jpg")
    ]  # ccneg_images/ works too
    assert ccneg.read_ccneg(path, images.parent.parent).choices[0].images == [
        str(images / "2.jpg")
    ]  # and the CC-Neg root


def test_ccneg_smaller_than_the_eval_split_uses_all_items_and_says_so(tmp_path):
    path, images = write_ccneg(tmp_path, count=2)
    task = ccneg.read_ccneg(path, images)
    assert len(task.choices) == 2 and "fewer than" in task.notes


@dataclass
class NotAContainer:
    payload: str = "would need arbitrary unpickling"


def test_ccneg_refuses_a_file_that_needs_arbitrary_unpickling(tmp_path):
    torch.save({"image_paths": [NotAContainer()], "annotations": [{}]}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused"):
        ccneg.read_ccneg(tmp_path / "evil.pt")


def test_ccneg_malformed_annotation_names_file_and_item_missing_image_names_path(tmp_path):
    path, images = write_ccneg(tmp_path, count=3)
    data = torch.load(path, weights_only=True)
    del data["annotations"][1]["sop_data"]
    torch.save(data, path)
    with pytest.raises(
        UserError, match=r"ccneg_preprocessed.pt: annotations\[1\] has no 'sop_data' key \(CC-Neg: .*negative-prompt"
    ):
        ccneg.read_ccneg(path, images)
    path, images = write_ccneg(
        tmp_path, count=3
    )  # the whole file is checked first: a well-formed one for the image check
    with pytest.raises(
        UserError, match=r"missing image '/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/0.jpg'"
    ):
        ccneg.read_ccneg(path, tmp_path / "elsewhere")


# ----- NegRefCOCOg -----------------------------------------------------------------------------


def test_negrefcocog_crops_every_box_and_answers_with_the_reference_box(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (20, 0, 40, 20))  # right half red
    image.save(tmp_path / "COCO_train2014_000000000001.jpg", format="PNG")
    records = [
        {
            "image": "COCO_train2014_000000000001.jpg",
            "phrase": "the half that is not blue",
            "ref_bbox": [20, 0, 20.0, 20],
            "bbox_list": [[0, 0, 20, 20], [20, 0, 20.0, 20]],
        },
        {
            "image": "COCO_train2014_000000000001.jpg",
            "phrase": "a square with no red",
            "ref_bbox": [0, 0, 20, 20],
            "bbox_list": [[0, 0, 20, 20], [10.5, 2.25, 20, 15]],
        },
    ]
    (tmp_path / "NegRefCOCOg.json").write_text(json.dumps(records))
    task = negrefcocog.read_negrefcocog(tmp_path / "NegRefCOCOg.json")
    first, second = task.choices
    assert first.choose == "image" and first.texts == ["the half that is not blue"] and first.answer == 1
    assert second.answer == 0
    assert first.images[1].endswith("COCO_train2014_000000000001.jpg#20,0,20,20")
    red_crop = task.images[first.images[1]]()
    assert red_crop.size == (20, 20) and red_crop.getpixel((5, 5)) == (255, 0, 0)
    assert task.images[second.images[1]]().size == (20, 15)
    assert len(set(task.images)) == 3  # the shared box [0, 0, 20, 20] is one image key


def test_negrefcocog_bad_records_name_the_file_and_record(tmp_path):
    png(tmp_path / "a.jpg")
    bad = [{"image": "a.jpg", "phrase": "no dog", "ref_bbox": [0, 0, 5, 5], "bbox_list": [[1, 1, 5, 5]]}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"bad.json, record 0: ref_bbox .* is not one of bbox_list"):
        negrefcocog.read_negrefcocog(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(
        json.dumps([{"image": "a.jpg", "phrase": "x", "ref_bbox": [0, 0, 0, 5], "bbox_list": [[0, 0, 0, 5]]}])
    )
    with pytest.raises(UserError, match="no area"):
        negrefcocog.read_negrefcocog(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('[{"image": 1,')
    with pytest.raises(UserError, match=r"bad.json: not valid JSON \(line 1"):
        negrefcocog.read_negrefcocog(tmp_path / "bad.json")


# ----- NegBench ----------------------------------------------------------------------------------


MCQ_HEADER = [
    "image_path",
    "correct_answer",
    "caption_0",
    "caption_1",
    "caption_2",
    "caption_3",
    "correct_answer_template",
]


def test_negbench_mcq_reads_index_answers_and_reports_templates_under_the_papers_names(tmp_path):
    a, b = png(tmp_path / "val2017" / "000000000139.jpg"), png(tmp_path / "val2017" / "000000000285.jpg", (0, 0, 0))
    write_csv(
        tmp_path / "COCO_val_mcq.csv",
        MCQ_HEADER,
        [
            [a, 0, "This image features a dog.", "A dog but no cat.", "No dog.", "A cat.", "positive"],
            [b, 2, "A bear, not a chair.", "A chair.", "This image does not show a chair.", "A bear.", "negative"],
            [a, 3, "x", "y", "z", "w, with a comma", "hybrid"],
        ],
    )
    task = negbench.read_negbench_mcq(tmp_path / "COCO_val_mcq.csv")
    assert [item.answer for item in task.choices] == [0, 2, 3]
    assert [item.group for item in task.choices] == ["affirmation", "negation", "hybrid"]
    assert task.choices[2].texts[3] == "w, with a comma"
    assert task.choices[1].images == [str(b)] and set(task.images) == {str(a), str(b)}
    assert task.choices[1].item_id.endswith("COCO_val_mcq.csv, line 3")


def test_negbench_mcq_bad_rows_name_file_and_line(tmp_path):
    a = png(tmp_path / "a.jpg")
    write_csv(
        tmp_path / "m.csv",
        MCQ_HEADER,
        [[a, 0, "a", "b", "c", "d", "positive"], [a, "B", "a", "b", "c", "d", "positive"]],
    )
    with pytest.raises(UserError, match=r"m.csv, line 3: correct_answer must be an integer"):
        negbench.read_negbench_mcq(tmp_path / "m.csv")
    write_csv(tmp_path / "m.csv", MCQ_HEADER, [[a, 4, "a", "b", "c", "d", "positive"]])
    with pytest.raises(UserError, match=r"line 2: correct_answer 4 is not one of the 4"):
        negbench.read_negbench_mcq(tmp_path / "m.csv")
    write_csv(tmp_path / "m.csv", MCQ_HEADER, [[tmp_path / "gone.jpg", 0, "a", "b", "c", "d", "positive"]])
    with pytest.raises(UserError, match=r"line 2: missing image '.*gone.jpg'"):
        negbench.read_negbench_mcq(tmp_path / "m.csv")
    write_csv(tmp_path / "m.csv", MCQ_HEADER, [[a, 0, "a", "b", "c", "d", "positive"], [a, 0, "a", "b", "c"]])
    with pytest.raises(UserError, match=r"m.csv: line 3 has 5 fields, but the header has 7"):
        negbench.read_negbench_mcq(tmp_path / "m.csv")
    write_csv(tmp_path / "m.csv", ["image", "correct_answer", "caption_0"], [[a, 0, "a"]])
    with pytest.raises(UserError, match=r"no column 'image_path' or 'filepath'"):
        negbench.read_negbench_mcq(tmp_path / "m.csv")


def test_negbench_negated_retrieval_reads_python_list_captions(tmp_path):
    a, b = png(tmp_path / "a.jpg"), png(tmp_path / "b.jpg", (0, 9, 9))
    write_csv(
        tmp_path / "neg_retrieval.csv",
        ["filepath", "captions", "positive_objects"],
        [
            [a, str(["A dog with no cat.", "A dog, not a cat."]), "['dog']"],
            [b, str(["A kitchen without people."]), "['oven']"],
        ],
    )
    task = negbench.read_negbench_retrieval(tmp_path / "neg_retrieval.csv")
    assert task.name == "negbench_retrieval"
    assert task.retrieval.images == [str(a), str(b)]
    assert task.retrieval.texts == ["A dog with no cat.", "A dog, not a cat.", "A kitchen without people."]
    assert task.retrieval.text_image == [0, 0, 1]
    write_csv(tmp_path / "neg_retrieval.csv", ["filepath", "captions"], [[a, "['unterminated"]])
    with pytest.raises(
        UserError,
        match=r"neg_retrieval.csv, line 2: column 'captions' must be a non-empty Python list of strings, "
        r"got \"\['unterminated\"",
    ):
        negbench.read_negbench_retrieval(tmp_path / "neg_retrieval.csv")


# ----- VALSE ---------------------------------------------------------------------------------------


def test_valse_keeps_samples_validated_by_at_least_two_annotators_and_counts_the_rest(tmp_path):
    png(tmp_path / "images" / "v7w_1.jpg")
    png(tmp_path / "images" / "v7w_2.jpg", (1, 2, 3))
    samples = {
        "existence_0": {
            "dataset": "visual7w",
            "image_file": "v7w_1.jpg",
            "caption": "There are no people.",
            "foil": "There are people.",
            "mturk": {"foil": 0, "caption": 3, "other": 0},
            "classes": "people",
        },
        "existence_1": {
            "dataset": "visual7w",
            "image_file": "v7w_2.jpg",
            "caption": "There is a dog.",
            "foil": "There is no dog.",
            "mturk": {"foil": 1, "caption": 2, "other": 0},
        },
        "existence_2": {
            "dataset": "visual7w",
            "image_file": "v7w_2.jpg",
            "caption": "There are cars.",
            "foil": "There are no cars.",
            "mturk": {"foil": 2, "caption": 1, "other": 0},
        },
    }
    (tmp_path / "existence.json").write_text(json.dumps(samples))
    task = valse.read_valse(tmp_path / "existence.json", tmp_path / "images")
    assert task.name == "valse/existence"
    assert [item.texts for item in task.choices] == [
        ["There are no people.", "There are people."],
        ["There is a dog.", "There is no dog."],
    ]
    assert (
        task.notes
        == f"skipped 1 (not_validated: 1 [{tmp_path / 'existence.json'}, sample 'existence_2' (mturk.caption < 2)])"
    )
    samples["existence_0"]["mturk"] = "3"
    (tmp_path / "existence.json").write_text(json.dumps(samples))
    with pytest.raises(UserError, match=r"sample 'existence_0': mturk.caption must be a vote count"):
        valse.read_valse(tmp_path / "existence.json", tmp_path / "images")


# ----- SugarCrepe ----------------------------------------------------------------------------------


def test_sugarcrepe_reads_each_subset_as_a_group_and_notes_missing_ones(tmp_path):
    png(tmp_path / "val2017" / "000000544519.jpg")
    for subset in sugarcrepe.SUBSETS[:-1]:
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data" / f"{subset}.json").write_text(
            json.dumps(
                {
                    "0": {
                        "filename": "000000544519.jpg",
                        "caption": f"{subset} right",
                        "negative_caption": f"{subset} wrong",
                    },
                    "1": {
                        "filename": "000000544519.jpg",
                        "caption": f"{subset} right 2",
                        "negative_caption": f"{subset} wrong 2",
                    },
                }
            )
        )
    task = sugarcrepe.read_sugarcrepe(tmp_path / "data", tmp_path / "val2017", max_items=1)
    assert [item.group for item in task.choices] == list(sugarcrepe.SUBSETS[:-1])
    assert task.choices[0].texts == ["add_att right", "add_att wrong"] and task.choices[0].answer == 0
    assert task.notes == f"subsets not found in {tmp_path / 'data'}: swap_obj"
    (tmp_path / "data" / "swap_att.json").write_text(
        json.dumps({"7": {"filename": "000000544519.jpg", "caption": "c"}})
    )
    with pytest.raises(UserError, match=r"swap_att.json, item '7': expected keys filename, caption, negative_caption"):
        sugarcrepe.read_sugarcrepe(tmp_path / "data", tmp_path / "val2017")


# ----- COCO / Flickr retrieval ---------------------------------------------------------------------------


def test_karpathy_json_reads_one_split_with_five_captions_and_counts_the_extra(tmp_path):
    for name in ("COCO_val2014_1.jpg", "COCO_val2014_2.jpg", "COCO_val2014_3.jpg"):
        png(tmp_path / "val2014" / name)
    entries = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_1.jpg",
            "split": "test",
            "sentences": [{"raw": f"one {i}", "tokens": ["one", str(i)]} for i in range(7)],
        },
        {"filepath": "val2014", "filename": "COCO_val2014_2.jpg", "split": "train", "sentences": [{"raw": "train"}]},
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_3.jpg",
            "split": "test",
            "sentences": [{"tokens": ["three", "dogs"]}, {"raw": "three b"}],
        },
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    task = retrieval.read_retrieval(tmp_path / "dataset_coco.json")
    assert task.retrieval.images == [
        str(tmp_path / "val2014" / "COCO_val2014_1.jpg"),
        str(tmp_path / "val2014" / "COCO_val2014_3.jpg"),
    ]
    assert task.retrieval.texts == [f"one {i}" for i in range(5)] + ["three dogs", "three b"]
    assert task.retrieval.text_image == [0] * 5 + [1, 1]
    assert task.notes == f"skipped 2 (beyond_captions_per_image: 2 [{tmp_path / 'dataset_coco.json'}, images[0]])"
    assert len(retrieval.read_retrieval(tmp_path, split="train").retrieval.images) == 1  # a folder holding the JSON
    with pytest.raises(UserError, match="no image has split 'val'"):
        retrieval.read_retrieval(tmp_path / "dataset_coco.json", split="val")


def test_retrieval_csv_with_one_caption_per_row_groups_rows_by_image(tmp_path):
    a, b = png(tmp_path / "1000092795.jpg"), png(tmp_path / "10002456.jpg", (5, 5, 5))
    write_csv(
        tmp_path / "flickr.csv",
        ["image", "caption", "split"],
        [
            ["1000092795.jpg", "Two young guys with shaggy hair.", "test"],
            ["10002456.jpg", "Several men in hard hats.", "test"],
            ["1000092795.jpg", "Two friends enjoy time spent together.", "test"],
            ["10002456.jpg", "Workers look down from up above.", "train"],
        ],
    )
    task = retrieval.read_retrieval(tmp_path / "flickr.csv", images_root=tmp_path)
    assert task.retrieval.images == [str(a), str(b)]
    assert task.retrieval.text_image == [0, 1, 0]
    assert len(retrieval.read_retrieval(tmp_path / "flickr.csv", tmp_path, max_items=1).retrieval.texts) == 2


# ----- zero-shot classification --------------------------------------------------------------------------


def test_zeroshot_reads_a_saved_image_classification_dataset_and_template_files(tmp_path):
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["tabby_cat", "dog"])}
    )
    images = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    dataset = datasets.Dataset.from_dict({"img": images, "fine_label": [1, 0, 1]}, features=features)
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(tmp_path / "pets"))
    (tmp_path / "templates.txt").write_text("# my prompts\na photo of a {}.\n\nart of the {}\n")

    templates = zeroshot.read_templates(tmp_path / "templates.txt")
    task = zeroshot.read_zeroshot(str(tmp_path / "pets"), templates=templates)
    assert task.zeroshot.class_names == ["tabby cat", "dog"]
    assert task.zeroshot.labels == [1, 0, 1]
    assert task.zeroshot.class_prompts()[0] == ["a photo of a tabby cat.", "art of the tabby cat"]
    assert task.images[task.zeroshot.images[2]]().getpixel((0, 0)) == (120, 0, 0)
    assert len(zeroshot.read_zeroshot(str(tmp_path / "pets"), max_items=2).zeroshot.images) == 2
    assert zeroshot.read_zeroshot(str(tmp_path / "pets")).zeroshot.templates == list(zeroshot.DEFAULT_TEMPLATES)

    (tmp_path / "bad.txt").write_text("a photo of a {}.\na photo of a class\n")
    with pytest.raises(UserError, match=r"bad.txt, line 2: the template 'a photo of a class' has no '\{\}'"):
        zeroshot.read_templates(tmp_path / "bad.txt")
    with pytest.raises(UserError, match=r"no split 'validation' \(splits: \['test'\]\)"):
        zeroshot.read_zeroshot(str(tmp_path / "pets"), split="validation")


# ----- registry ----------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(
        UserError, match=r"unknown task 'cc-neg'; known tasks: ccneg, negrefcocog, .*world_heldout, layerwise"
    ):
        tasks.build_tasks(["cc-neg"], {})


def test_a_task_without_its_data_names_the_flag(tmp_path):
    with pytest.raises(UserError, match=r"task sugarcrepe needs --sugarcrepe_images"):
        tasks.build_tasks(["sugarcrepe"], {"sugarcrepe": str(tmp_path)})
    with pytest.raises(UserError, match=r"--valse .*nope.json: no such file or folder"):
        tasks.build_tasks(["valse"], {"valse": str(tmp_path / "nope.json")})


def test_world_tasks_are_registered_for_both_template_sets(tmp_path, monkeypatch):
    calls = []

    def world_tasks(dataset, split="test", template_set="train", seed=0, max_scenes=None):
        calls.append((dataset, split, template_set, max_scenes))
        return [TaskData(f"world_{template_set}/presence", {}, [ChoiceItem("text", ["k"], ["a", "b"], 0)])]

    monkeypatch.setitem(sys.modules, "eval.world", types.SimpleNamespace(world_tasks=world_tasks))
    built = tasks.build_tasks(["world"], {"world": str(tmp_path), "world_split": "validation"}, max_items=7)
    assert [task.data.name for task in built] == ["world_train/presence", "world_heldout/presence"]
    assert calls == [(str(tmp_path), "validation", "train", 7), (str(tmp_path), "validation", "heldout", 7)]
    assert [task.data.name for task in tasks.build_tasks(["world_heldout"], {"world": str(tmp_path)})] == [
        "world_heldout/presence"
    ]
    with pytest.raises(UserError, match="two tasks produce items named 'world_train/presence'"):
        tasks.build_tasks(["world", "world_train"], {"world": str(tmp_path)})
