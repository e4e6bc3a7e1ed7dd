"""NegBench's fine-tuning tables (CC12M-NegCap, CC12M-NegMCQ) read by `data_builder.py negbench`, end to end:
the fixture of `bench/negbench_fixture.py` in the published layouts, bad rows counted or refused by place."""

from __future__ import annotations

import ast
import csv
import re
from collections import Counter
from pathlib import Path

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

import data_builder
from bench.negbench_fixture import TABLE_FILES, make_fixture
from omninegclip.building import sources, storage
from omninegclip.building.rewrite import absence_affirm
from omninegclip.building.vocabulary import has_negation_cue, mentions
from omninegclip.common.cli import UserError, run_cli

NO_SPLITS = ("--validation_fraction", "0", "--test_fraction", "0", "--no_progress")


def build(table: Path, out: Path, *extra: str) -> dict:
    """A build of one table, all in train, without the statement family's extra rows (the tests here map
    NegBench's rows one to one; tests/test_unseen_phrasings.py builds with them)."""
    statements = [] if "--statement_rate" in extra else ["--statement_rate", "0"]
    return data_builder.main(["negbench", "--table", str(table), "--out", str(out), *NO_SPLITS, *statements, *extra])


def rows_of(out: Path) -> list[dict]:
    return list(storage.load_with_images(out)["train"].remove_columns("image"))


def table_rows(table: Path) -> list[dict]:
    with table.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write_table(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_negcap_table_becomes_absence_negations_of_the_objects_negbench_found_absent(tmp_path):
    make_fixture(tmp_path / "negcap", rows=240, images=4, progress=False)
    table = tmp_path / "negcap" / TABLE_FILES["negcap"]
    summary = build(table, tmp_path / "out", "--negated_captions_per_row", "0")
    rows, source = rows_of(tmp_path / "out"), table_rows(table)
    assert set(data_builder.CONTRACT_COLUMNS) - {"image"} <= set(rows[0])  # the image: rows_of leaves it out
    negated = [ast.literal_eval(row["negative_captions"]) for row in source]
    no_cue = summary["skips"]["source:quality_gate:no_negation_cue"]  # failed the gate's rule, at the source
    unnamed = summary["skips"].get("source:negated_caption_names_no_negative_object", 0)
    assert summary["rows_in"] == sum(map(len, negated)) - no_cue - unnamed
    origins = {
        (row["filepath"], row["caption"], text): row for number, row in enumerate(source) for text in negated[number]
    }
    for row in rows:
        origin = origins[(row["image_id"], row["caption"], row["absence_negated"])]
        assert row["absent_object"] in ast.literal_eval(origin["negative_objects"])
        assert row["present_objects"] == sorted(ast.literal_eval(origin["extracted_objects"]))
        assert mentions(row["absence_negated"], row["absent_object"]) and has_negation_cue(row["absence_negated"])
        assert (row["absence_rewrite"], row["presence_negated"], row["negated_object"]) == ("negcap", None, None)
        assert row["absence_affirmed"] == absence_affirm(row["caption"], row["absent_object"])  # the rule's twin
    # The two phrasing families NegBench's prompt asks for both arrive; the phrasings with no negation cue
    # ("lacks", "devoid of") fail the quality gate, counted, as every other source's would.
    families = Counter(
        "negation first" if re.match(r"(No|There is no|While) ", row["absence_negated"]) else "affirmation first"
        for row in rows
    )
    assert families["negation first"] > 20 and families["affirmation first"] > 20, families
    assert not any(re.search(r"\b(lacks|devoid|isn't)\b", row["absence_negated"]) for row in rows)
    assert no_cue > 0 and sum(map(len, negated)) == len(rows) + no_cue + unnamed  # every negated caption accounted
    assert summary["negations"] == {"absence_only": len(rows)}
    assert summary["rows_out"]["train"] == len(rows) == summary["rows_in"]
    assert summary["images"]["files"] == 4  # each image stored once, however many rows show it

    # The default: each table row's first negated caption that passes the gate, so no row whose
    # later captions pass is lost because its first one fails.
    one = build(table, tmp_path / "one")
    built = {(row["image_id"], row["caption"], row["absence_negated"]) for row in rows}
    with_a_usable_caption = sum(
        any((row["filepath"], row["caption"].strip(), text.strip()) in built for text in negated[number])
        for number, row in enumerate(source)
    )
    assert one["rows_in"] == one["rows_out"]["train"] == with_a_usable_caption
    assert one["skips"]["source:beyond_negated_captions_per_row"] > 0 and "row:no_negation" not in one["skips"]


def test_negmcq_options_become_presence_and_absence_negations_by_their_template(tmp_path):
    make_fixture(tmp_path / "negmcq", rows=150, images=3, layout="negmcq", progress=False)
    table = tmp_path / "negmcq" / TABLE_FILES["negmcq"]
    source = table_rows(table)
    source.append(  # create_mcq.py's form for an image with one named object (no row of the fixture has it)
        {
            "correct_answer": "1",
            "caption_0": "This image features dog, but not kite.",
            "caption_1": "This image features kite.",
            "caption_2": "This image features dog.",
            "caption_3": "This image does not feature kite.",
            "correct_answer_template": "modified_positive",
            "image_path": source[0]["image_path"],
        }
    )
    write_table(table, list(source[0]), [list(row.values()) for row in source])
    summary = build(table, tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    assert len(rows) == len(source) == summary["rows_in"] and not summary.get("skips")
    templates = Counter(row["correct_answer_template"] for row in source)
    assert summary["negations"] == {
        "both": templates["hybrid"] + templates["negative"],
        "presence_only": templates["positive"] + templates["modified_positive"],
    }
    for row, origin in zip(rows, source):
        options = [origin[f"caption_{index}"] for index in range(4)]
        right = options[int(origin["correct_answer"])]
        assert row["presence_negated"] in options and row["presence_negated"] != right
        assert mentions(row["presence_negated"], row["negated_object"]) and row["present_objects"] == [
            row["negated_object"]
        ]
        if origin["correct_answer_template"] in ("hybrid", "negative"):
            assert row["caption"] == f"This image features {row['negated_object']}."
            assert row["absence_negated"] == right and mentions(right, row["absent_object"])
            assert row["absence_affirmed"] in options and not has_negation_cue(row["absence_affirmed"])
        else:
            assert row["caption"] == right and row["absence_negated"] is None and row["absent_object"] is None
    last = rows[-1]
    assert (last["caption"], last["presence_negated"], last["negated_object"]) == (
        "This image features kite.",
        "This image does not feature kite.",
        "kite",
    )


def test_bad_rows_are_counted_by_row_and_column_and_a_missing_image_by_its_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    good = ["a.jpg", "a dog on a couch", "['dog', 'couch']", "['cat']", "['a dog on a couch, with no cat around']"]
    rows = [
        good,
        ["b.jpg", *good[1:]],  # row 1: no such image file
        ["a.jpg", "a dog", "['dog']", "['cat']", "['a dog with no cat', "],  # row 2: not a list literal
        ["a.jpg", "  ", *good[2:]],  # row 3: empty caption
        ["a.jpg", "a dog", "dog, couch", *good[3:]],  # row 4: extracted_objects is no list
        ["a.jpg", "a dog", "['dog']", "['cat']", "['', 'a dog, and no cat']"],  # row 5: one empty negated caption
    ]
    table = write_table(tmp_path / "negcap.csv", sources.NEGCAP_COLUMNS, rows)
    summary = build(table, tmp_path / "out")
    assert summary["skips"] == {
        "row:missing_image": 1,
        "source:negative_captions_not_a_list": 1,
        "source:empty_caption": 1,
        "source:extracted_objects_not_a_list": 1,
        "source:empty_negated_caption": 1,
    }
    assert summary["skip_examples"] == {
        "row:missing_image": ["b.jpg"],
        "source:negative_captions_not_a_list": ["negcap.csv row 2 (column 'negative_captions')"],
        "source:empty_caption": ["negcap.csv row 3 (column 'caption')"],
        "source:extracted_objects_not_a_list": ["negcap.csv row 4 (column 'extracted_objects')"],
        "source:empty_negated_caption": ["negcap.csv row 5 (column 'negative_captions'[0])"],
    }
    assert [row["absence_negated"] for row in rows_of(tmp_path / "out")] == [good[4][2:-2], "a dog, and no cat"]


def test_rows_are_numbered_across_batches_and_parquet_reads_as_csv(tmp_path, monkeypatch):
    make_fixture(tmp_path / "negcap", rows=200, images=2, progress=False)
    table = tmp_path / "negcap" / TABLE_FILES["negcap"]
    rows = table_rows(table)
    rows[150]["caption"] = ""
    write_table(table, list(rows[0]), [list(row.values()) for row in rows])
    pq.write_table(pa_csv.read_csv(table), tmp_path / "negcap" / "negcap.parquet")
    whole = build(table, tmp_path / "whole")
    monkeypatch.setattr(sources, "_TABLE_BATCH_BYTES", 4096)  # many batches of CSV
    monkeypatch.setattr(sources, "_TABLE_BATCH_ROWS", 7)  # many batches of Parquet
    batched = build(table, tmp_path / "batched")
    parquet = build(tmp_path / "negcap" / "negcap.parquet", tmp_path / "parquet")
    assert whole["skip_examples"]["source:empty_caption"] == [f"{table.name} row 150 (column 'caption')"]
    assert batched["skip_examples"] == whole["skip_examples"]
    assert parquet["skip_examples"]["source:empty_caption"] == ["negcap.parquet row 150 (column 'caption')"]
    assert rows_of(tmp_path / "batched") == rows_of(tmp_path / "whole") == rows_of(tmp_path / "parquet")


def test_a_malformed_mcq_answer_is_refused_naming_the_file_row_and_column(tmp_path):
    options = ["This image features kite.", "This image features dog.", "no dog", "This image features dog, not kite."]
    table = write_table(
        tmp_path / "mcq.csv",
        sources.NEGMCQ_COLUMNS,
        [["a.jpg", "0", *options, "positive"], ["a.jpg", "7", *options, "positive"]],
    )
    with pytest.raises(UserError, match=r"mcq\.csv: row 1, column 'correct_answer' is a str \('7'\), expected"):
        build(table, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_table_without_negbench_columns_naming_what_is_missing(tmp_path, capsys):
    table = write_table(
        tmp_path / "captions.csv", ["filepath", "caption", "negative_objects"], [["a.jpg", "a dog", "[]"]]
    )
    with pytest.raises(SystemExit) as exit_info:
        run_cli(data_builder.main, ["negbench", "--table", str(table), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert "captions.csv: is neither NegBench layout" in error
    assert "missing ['extracted_objects', 'negative_captions']" in error and "'correct_answer'" in error
    assert not (tmp_path / "out").exists()
