"""Property tests (hypothesis) of the caption rewriters, the vocabulary, the format readers and the
builder: any Unicode caption and any object name never crash them; a negation always mentions the
object it negates, under a negation cue; no row is ever lost without being counted."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import data_builder
from omninegclip.building import negation
from omninegclip.building.rewrite import absence_negate, absence_problem, presence_negate, presence_problem
from omninegclip.building.sources import (
    ImageRef,
    Source,
    SourceItem,
    _cache_file,
    infer_absent_object,
    read_captions_dataset,
    read_coco,
)
from omninegclip.building.vocabulary import (
    _CATEGORY_FORMS,
    COCO_CATEGORIES,
    canonical_category,
    detect_objects,
    find_mentions,
    mentions,
    noun_forms,
)
from omninegclip.common.cli import UserError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Every surface form of the vocabulary ("puppies", "dining table", "pair of skis"), and any text.
VOCABULARY = sorted({form for pairs in _CATEGORY_FORMS.values() for pair in pairs for form in pair.split("|")})
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)
words = st.sampled_from(
    [
        "a",
        "the",
        "dog",
        "no",
        "not",
        "with",
        "without",
        "riding",
        "of",
        "group",
        "two",
        ",",
        ".",
        "and",
        "sofa",
        "people",
        "hot",
        "teddy",
        "bear",
        "orange",
        "ü",
        "狗",
        "Ä",
        "'s",
        "-",
        "\n",
        "\u2028",
        "😀",
        "n't",
    ]
)
caption_like = st.one_of(any_text, st.lists(st.one_of(words, st.sampled_from(VOCABULARY)), max_size=14).map(" ".join))
object_name = st.one_of(
    st.sampled_from(VOCABULARY),
    st.sampled_from(COCO_CATEGORIES),
    any_text.filter(lambda text: len(text) < 20),
    st.sampled_from(["hat", "tree", "no", "not a", "x-ray", "c++", "(", "", "   "]),
)


@FUZZ
@given(caption=caption_like, obj=object_name, seed=st.integers(0, 5))
def test_rewriters_never_crash_and_always_negate_the_named_object(caption, obj, seed):
    present = [obj]
    presence = presence_negate(caption, obj, random.Random(seed))
    if presence is not None:
        assert presence.text != caption and mentions(presence.text, obj)
        assert any(mention.negated for mention in find_mentions(presence.text, [obj]))
        assert presence_problem(caption, presence.text, obj, present, strict=True) is None
    absence = absence_negate(caption, obj, random.Random(seed))
    if absence is not None:
        assert absence.text != caption and mentions(absence.text, obj) and not mentions(caption, obj)
        assert all(mention.negated for mention in find_mentions(absence.text, [obj]))
        assert absence_problem(caption, absence.text, obj, [], strict=True) is None
    # `keep` filters what may be returned; deterministic given the seed.
    assert presence_negate(caption, obj, random.Random(seed), keep=lambda text: False) is None
    assert absence_negate(caption, obj, random.Random(seed), keep=lambda text: False) is None
    assert presence_negate(caption, obj, random.Random(seed)) == presence


@FUZZ
@given(text=caption_like, obj=object_name, other=any_text)
def test_vocabulary_functions_never_crash(text, obj, other):
    for mention in find_mentions(text):
        assert text[mention.start : mention.end] == mention.text and mention.category in COCO_CATEGORIES
    assert set(detect_objects(text)) <= set(COCO_CATEGORIES)
    forms = noun_forms(obj)
    assert isinstance(forms.singular, str) and isinstance(forms.plural, str)
    assert canonical_category(obj) in (None, *COCO_CATEGORIES)
    assert infer_absent_object(text, other) is None or isinstance(infer_absent_object(text, other), str)
    assert infer_absent_object(text, text) is None  # nothing was added, so nothing was negated


@FUZZ
@given(url=st.one_of(any_text, st.builds(lambda path: "http://127.0.0.1/" + path, any_text)))
def test_a_cached_download_is_always_named_inside_the_cache(url, tmp_path):
    cache = tmp_path.resolve()
    file = _cache_file(url, cache)
    assert file.parent == cache and re.fullmatch(r"[0-9a-f]{40}(\.[a-z0-9]{1,8})?", file.name)


@pytest.fixture(scope="module")
def window():
    return negation.TokenWindow()


@FEW
@given(text=st.one_of(caption_like, st.lists(caption_like, max_size=6).map(" ".join)))
def test_token_window_keeps_a_prefix(window, text):
    seen = window.visible(text)
    assert text.startswith(seen)
    if not window.too_long([text]):
        assert seen == text
    else:
        assert len(seen) < len(text.rstrip())


# ------------------------------------------------------------------------------------------- readers

json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), any_text),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


def caption_units(value) -> int:
    """How many captions a cell holds for the accounting: each string of a list, else the cell itself."""
    return len(value) if isinstance(value, list) and value else 1


@FUZZ
@given(
    annotations=st.lists(
        st.fixed_dictionaries(
            {"image_id": st.sampled_from([1, 2, 3, "4", 99]), "caption": json_value},
            optional={"id": st.one_of(st.integers(), any_text, st.none())},
        ),
        max_size=12,
    ),
    captions_per_image=st.integers(0, 2),
)
def test_coco_reader_counts_every_caption(tmp_path, annotations, captions_per_image):
    images = [{"id": image_id, "file_name": f"{image_id}.png"} for image_id in (1, 2, 3, "4")]
    instances = {
        "images": images,
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [{"image_id": 1, "category_id": 18, "bbox": [0, 0, 1, 1]}],
    }
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    source = read_coco(
        tmp_path / "captions.json", tmp_path / "instances.json", tmp_path, captions_per_image=captions_per_image
    )
    assert len(source.items) + source.skips.total() == len(annotations)  # a COCO caption is one cell, never a list
    assert all(
        isinstance(item.caption, str) and item.caption.strip() == item.caption and item.caption
        for item in source.items
    )


@FEW
@given(
    cells=st.lists(json_value, min_size=1, max_size=8), captions_per_image=st.integers(0, 2), ascii_only=st.booleans()
)
def test_jsonl_reader_counts_every_caption(tmp_path, cells, captions_per_image, ascii_only):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"image": "x.png", "caption": cell}, ensure_ascii=ascii_only) + "\n" for cell in cells),
        encoding="utf-8",
    )
    source = read_captions_dataset(str(path), captions_per_image=captions_per_image, progress=False)
    assert len(source.items) + source.skips.total() == sum(caption_units(cell) for cell in cells)
    texts = [
        text.strip()
        for cell in cells
        for text in (cell if isinstance(cell, list) else [cell])
        if isinstance(text, str) and text.strip()
    ]
    assert Counter(item.caption for item in source.items) <= Counter(texts)


@FEW
@given(captions=st.lists(any_text, min_size=1, max_size=8))
def test_csv_reader_keeps_any_text_as_it_was(tmp_path, captions):
    assume(not any(text.strip().startswith("[") for text in captions))  # list cells are read as lists, on purpose
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["image", "caption"])
    writer.writerows([["x.png", text] for text in captions])
    (tmp_path / "pairs.csv").write_text(buffer.getvalue(), encoding="utf-8", newline="")
    source = read_captions_dataset(str(tmp_path / "pairs.csv"), progress=False)
    assert [item.caption for item in source.items] == [text.strip() for text in captions if text.strip()]
    assert source.skips.counts == Counter({"empty_caption": sum(not text.strip() for text in captions)}) - Counter()


# ------------------------------------------------------------------------------------------- builder


def _png(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (4, 4)).save(buffer, format="PNG")
    return buffer.getvalue()


IMAGES = {"rgb": _png("RGB"), "rgba": _png("RGBA"), "gray": _png("L"), "corrupt": b"not an image", "missing": None}
FEW_OBJECTS = COCO_CATEGORIES[:12]
builder_caption = st.one_of(
    caption_like, st.builds("a {} next to two {}".format, st.sampled_from(FEW_OBJECTS), st.sampled_from(VOCABULARY))
)


@FEW
@given(
    rows=st.lists(
        st.tuples(
            builder_caption.filter(str.strip),
            st.lists(st.sampled_from(FEW_OBJECTS), max_size=3),
            st.sampled_from(sorted(IMAGES)),
        ),
        min_size=1,
        max_size=10,
    ),
    exhaustive=st.booleans(),
    seed=st.integers(0, 3),
)
def test_builder_writes_or_counts_every_row_and_every_negation_passes_the_gate(
    tmp_path_factory, rows, exhaustive, seed
):
    items = [
        SourceItem(
            image_id=str(index),
            image=ImageRef(f"{index}.png", read=lambda kind=kind: IMAGES[kind]),
            caption=caption.strip(),
            present_objects=tuple(objects),
            source_index=index,
        )
        for index, (caption, objects, kind) in enumerate(rows)
    ]
    source = Source(
        name="fuzz",
        description="",
        license="other",
        items=items,
        object_sets=[item.present_objects for item in items],
        exhaustive_objects=exhaustive,
        files=["fuzz"],
    )
    options = negation.BuildOptions(seed=seed, progress=False)
    try:
        dataset_dict, summary = data_builder.build_from_source(source, options, tmp_path_factory.mktemp("cache"))
    except UserError as error:
        assert "could be negated" in str(error) or "could be written" in str(error)
        event("nothing to write")
        return
    event("built")
    row_skips = sum(count for reason, count in summary["skips"].items() if reason.startswith("row:"))
    # The statement family's extra rows (--statement_rate, default 0.25) come on top of the source's rows;
    # one whose image is unusable is not counted again (its source row is).
    statement_rows = sum(part["presence_rewrite"].count("statement") for part in dataset_dict.values())
    written = sum(len(part) for part in dataset_dict.values())
    assert summary["rows_in"] == len(rows) == written - statement_rows + row_skips
    assert all(
        part["presence_rewrite"].count("statement") == 0 for name, part in dataset_dict.items() if name != "train"
    )
    written_kinds = {rows[int(image_id)][2] for part in dataset_dict.values() for image_id in part["image_id"]}
    assert written_kinds <= {"rgb", "rgba", "gray"}  # never a corrupt or missing image
    gate = data_builder.quality_gate(dataset_dict)
    assert gate["passed"], gate["total"]
    for part in dataset_dict.values():
        for row in part.select_columns(
            ["caption", "presence_negated", "negated_object", "absence_negated", "absent_object"]
        ):
            if row["presence_negated"]:
                assert any(
                    mention.negated for mention in find_mentions(row["presence_negated"], [row["negated_object"]])
                )
            if row["absence_negated"]:
                assert all(
                    mention.negated for mention in find_mentions(row["absence_negated"], [row["absent_object"]])
                )
