"""The harness: scoring on embeddings whose answers are fixed by construction, embedding each image and
text once, and cross-checks between metrics (two-way = two-option MCQ, recall monotone in k, R@1 = 1)."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from eval import ccneg, negbench
from eval.harness import CLIPEmbedder, embed_tasks, evaluate_tasks, score_task
from eval.items import ChoiceItem, RetrievalSet, TaskData
from eval.zeroshot import ZeroShotSet, ZeroShotTaskData
from omninegclip.common.embedding import embed_images, embed_texts
from omninegclip.common.scoring import (
    choice_correct,
    choice_correct_from_scores,
    first_positive_rank,
    grouped_accuracy,
    positive_mask,
    recall_at,
)


class FakeEmbedder:
    """Embeddings looked up by name: images carry theirs in `image.info["name"]`. Counts what it is asked."""

    def __init__(self, image_vectors: dict[str, list[float]], text_vectors: dict[str, list[float]]):
        self.image_vectors, self.text_vectors = image_vectors, text_vectors
        self.image_calls, self.text_calls = [], []

    def embed_images(self, images):
        names = [image.info["name"] for start in range(0, len(images), 2) for image in images[start : start + 2]]
        self.image_calls.append(names)
        return torch.tensor([self.image_vectors[name] for name in names], dtype=torch.float32)

    def embed_texts(self, texts):
        self.text_calls.append(list(texts))
        return torch.tensor([self.text_vectors[text] for text in texts], dtype=torch.float32)


def named_image(name: str):
    def load():
        image = Image.new("RGB", (4, 4))
        image.info["name"] = name
        return image

    return load


def store(*names: str):
    return {name: named_image(name) for name in names}


E = torch.eye(4).tolist()  # orthonormal directions: cos = 1 with itself, 0 with the others


def test_choice_accuracy_per_group_and_group_mean_known_by_construction():
    embedder = FakeEmbedder(
        {"img0": E[0], "img1": E[1]},
        {"dog": E[0], "cat": E[1], "no dog": [0.5, 0.5, 0, 0], "sofa": E[2]},
    )
    items = [
        ChoiceItem("text", ["img0"], ["dog", "cat"], answer=0, group="a"),  # right
        ChoiceItem("text", ["img0"], ["cat", "dog"], answer=0, group="a"),  # wrong
        ChoiceItem("text", ["img1"], ["sofa", "no dog", "cat"], answer=2, group="b"),  # right
        ChoiceItem("text", ["img1"], ["cat", "sofa", "dog"], answer=1, group="b"),  # wrong
        ChoiceItem("text", ["img1"], ["cat", "dog"], answer=0, group="b"),  # right
    ]
    score = evaluate_tasks(embedder, [TaskData("t", store("img0", "img1"), items)])["t"]
    assert score.metrics["accuracy"] == pytest.approx(3 / 5)
    assert score.metrics["accuracy/a"] == pytest.approx(1 / 2)
    assert score.metrics["accuracy/b"] == pytest.approx(2 / 3)
    assert score.metrics["accuracy/group_mean"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert score.counts == {"items": 5, "items/a": 2, "items/b": 3, "ties_won_by_order": 0}


def test_a_tie_counts_as_wrong_and_only_a_strictly_higher_answer_counts():
    embedder = FakeEmbedder({"img": E[0]}, {"a dog": E[0], "a dog ": E[0], "a cat": E[1]})
    items = [
        ChoiceItem("text", ["img"], ["a dog", "a dog "], answer=0),  # identical embeddings: a tie
        ChoiceItem("text", ["img"], ["a dog", "a cat"], answer=0),
    ]
    score = evaluate_tasks(embedder, [TaskData("t", store("img"), items)])["t"]
    assert score.metrics == {
        "accuracy": 0.5,
        "accuracy_argmax": 1.0,
    }  # one group only: no breakdown; NegBench's argmax takes the tie
    assert score.counts["ties_won_by_order"] == 1


def test_choose_image_picks_the_image_closest_to_the_text():
    embedder = FakeEmbedder({"crop0": E[0], "crop1": E[1], "crop2": [0.9, 0.1, 0, 0]}, {"a zebra not eating": E[1]})
    items = [
        ChoiceItem("image", ["crop0", "crop1"], ["a zebra not eating"], answer=1),
        ChoiceItem("image", ["crop1", "crop0", "crop2"], ["a zebra not eating"], answer=2),
    ]
    score = evaluate_tasks(embedder, [TaskData("t", store("crop0", "crop1", "crop2"), items)])["t"]
    assert score.metrics["accuracy"] == 0.5


def test_embeddings_are_normalised_by_the_harness_whatever_the_embedder_returns():
    # Unnormalised, the long wrong option would win on the dot product; on cosines the right one wins.
    embedder = FakeEmbedder({"img": [1.0, 0.2, 0, 0]}, {"right": [1.0, 0.1, 0, 0], "long wrong": [5.0, 5.0, 0, 0]})
    score = evaluate_tasks(
        embedder, [TaskData("t", store("img"), [ChoiceItem("text", ["img"], ["right", "long wrong"], 0)])]
    )["t"]
    assert score.metrics["accuracy"] == 1.0


def test_each_image_and_text_is_embedded_once_per_model_across_tasks():
    embedder = FakeEmbedder({f"img{i}": E[i] for i in range(3)}, {t: E[i] for i, t in enumerate(["a", "b", "c", "d"])})
    first = TaskData(
        "first",
        store("img0", "img1"),
        [
            ChoiceItem("text", ["img0"], ["a", "b"], 0),
            ChoiceItem("text", ["img1"], ["b", "a"], 0),
            ChoiceItem("text", ["img0"], ["a", "c"], 0),
        ],
    )
    second = TaskData(
        "second",
        store("img1", "img2"),
        retrieval=RetrievalSet(["img1", "img2", "img0"], ["b", "c", "a", "d"], [0, 1, 2, 2]),
    )
    third = TaskData("third", store("img2"), [ChoiceItem("image", ["img2", "img1"], ["c"], 0)])
    scores = evaluate_tasks(embedder, [first, second, third])
    assert embedder.image_calls == [["img0", "img1", "img2"]]  # one call, each key once
    assert len(embedder.text_calls) == 1 and sorted(embedder.text_calls[0]) == ["a", "b", "c", "d"]
    assert scores["third"].metrics["accuracy"] == 1.0


def test_choice_correct_pure_function_masks_padding():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    options = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [True, True, False]])  # the third option is padding
    assert choice_correct(anchors, options, mask, torch.tensor([0, 1])).tolist() == [True, True]
    assert choice_correct(anchors, options, torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1])).tolist() == [
        True,
        False,
    ]


def test_choice_correct_from_scores_tie_rules_padding_and_bad_answers():
    scores = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.7, 0.7], [0.2, 0.1, 9.0]])
    mask = torch.tensor(
        [[True, True, True], [True, True, True], [True, True, False]]
    )  # item 2: two options and padding
    answers = torch.tensor([0, 2, 0])
    assert choice_correct_from_scores(scores, answers, mask).tolist() == [
        False,
        False,
        True,
    ]  # ties wrong, padding never picked
    assert choice_correct_from_scores(scores, answers, mask, "argmax").tolist() == [
        True,
        False,
        True,
    ]  # the first of the tied wins
    with pytest.raises(ValueError, match=r"item 2: answer 2 is not an index into its 2 options"):
        choice_correct_from_scores(scores, torch.tensor([0, 0, 2]), mask)
    with pytest.raises(ValueError, match=r"tie_rule 'max'"):
        choice_correct_from_scores(scores, answers, mask, "max")


def test_grouped_accuracy_per_group_and_unweighted_group_mean():
    grouped = grouped_accuracy(torch.tensor([True, False, True, True, False]), ["b", "a", "b", "a", "a"])
    assert (grouped.accuracy, grouped.group_accuracy, grouped.group_items) == (
        3 / 5,
        {"a": 1 / 3, "b": 1.0},
        {"a": 3, "b": 2},
    )
    assert grouped.group_mean == (1 / 3 + 1.0) / 2
    with pytest.raises(ValueError, match="5 items but 2 group names"):
        grouped_accuracy(torch.ones(5, dtype=torch.bool), ["a", "b"])


def test_positive_mask_marks_each_querys_right_candidates_and_refuses_none_or_out_of_range():
    assert positive_mask([[0], [1, 2]], 3).tolist() == [[True, False, False], [False, True, True]]
    with pytest.raises(ValueError, match=r"query 1: right candidates \[3\]"):
        positive_mask([[0], [3]], 3)


def test_first_positive_rank_counts_wrong_candidates_at_least_as_high():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.2, 0.8], [0.3, 0.9, 0.9]])
    positive = torch.tensor([[True, False, False], [True, False, False], [False, True, True]])
    # row 0: best; row 1: 0.8 above and a 0.2 tie -> rank 2; row 2: both right candidates tie each other -> rank 0
    assert first_positive_rank(scores, positive).tolist() == [0, 2, 0]
    assert recall_at(torch.tensor([0, 2, 0]), 1) == pytest.approx(2 / 3)


def test_identical_image_and_text_embeddings_give_recall_at_1_of_1_both_directions():
    vectors = torch.nn.functional.normalize(
        torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), dim=-1
    ).tolist()
    names = [f"img{i}" for i in range(6)]
    embedder = FakeEmbedder(dict(zip(names, vectors)), {f"caption {i}": vector for i, vector in enumerate(vectors)})
    task = TaskData(
        "r", store(*names), retrieval=RetrievalSet(names, [f"caption {i}" for i in range(6)], list(range(6)))
    )
    metrics = evaluate_tasks(embedder, [task])["r"].metrics
    assert all(
        metrics[f"{direction}/R@{k}"] == 1.0 for direction in ("text_to_image", "image_to_text") for k in (1, 5, 10)
    )


def test_recall_is_monotone_in_k_and_image_to_text_counts_any_of_its_captions():
    generator = torch.Generator().manual_seed(1)
    names = [f"img{i}" for i in range(12)]
    image_vectors = torch.randn(12, 6, generator=generator)
    texts = [f"t{i}" for i in range(36)]
    text_vectors = image_vectors.repeat_interleave(3, dim=0) + 1.5 * torch.randn(36, 6, generator=generator)
    embedder = FakeEmbedder(dict(zip(names, image_vectors.tolist())), dict(zip(texts, text_vectors.tolist())))
    task = TaskData("r", store(*names), retrieval=RetrievalSet(names, texts, [i // 3 for i in range(36)]))
    metrics = evaluate_tasks(embedder, [task])["r"].metrics
    for direction in ("text_to_image", "image_to_text"):
        recalls = [metrics[f"{direction}/R@{k}"] for k in (1, 5, 10)]
        assert recalls == sorted(recalls) and 0 < recalls[0] < 1

    # image 0's first caption is far away, its third one is its nearest text: still a hit at R@1
    embedder = FakeEmbedder(
        {"a": E[0], "b": E[1]}, {"far": E[2], "near b": [0.1, 0.9, 0, 0], "exact": E[0], "b's": E[1]}
    )
    task = TaskData(
        "r", store("a", "b"), retrieval=RetrievalSet(["a", "b"], ["far", "near b", "exact", "b's"], [0, 0, 0, 1])
    )
    metrics = evaluate_tasks(embedder, [task])["r"].metrics
    assert metrics["image_to_text/R@1"] == 1.0
    assert metrics["text_to_image/R@1"] == pytest.approx(2 / 4)  # "far" ties at 0 with both; "near b" prefers b


def test_images_without_text_are_distractors_for_text_queries_but_not_image_queries():
    # "twin" is nearer to the query than its own image: text->image misses; image->text asks only "scene"
    embedder = FakeEmbedder({"scene": E[0], "twin": [0.6, 0.8, 0, 0]}, {"scene, no star": [0.5, 0.8, 0, 0]})
    task = TaskData("r", store("scene", "twin"), retrieval=RetrievalSet(["scene", "twin"], ["scene, no star"], [0]))
    score = evaluate_tasks(embedder, [task])["r"]
    assert score.metrics["text_to_image/R@1"] == 0.0 and score.metrics["text_to_image/R@5"] == 1.0
    assert score.metrics["image_to_text/R@1"] == 1.0
    assert score.counts == {"images": 2, "texts": 1, "images_with_text": 1}


def test_zeroshot_top1_top5_with_prompt_ensembles():
    classes = ["cat", "dog"]
    templates = ["a {}", "the {}"]
    texts = {
        "a cat": [1.0, 0.2, 0, 0],
        "the cat": [1.0, -0.2, 0, 0],
        "a dog": [0, 1.0, 0, 0],
        "the dog": [0.6, 0.8, 0, 0],
    }
    embedder = FakeEmbedder({"i0": E[0], "i1": E[1], "i2": [0.9, 0.44, 0, 0]}, texts)
    zeroshot = ZeroShotSet(["i0", "i1", "i2"], [0, 1, 1], classes, templates)
    task = ZeroShotTaskData("z", store("i0", "i1", "i2"), zeroshot=zeroshot)
    score = evaluate_tasks(embedder, [task])["z"]
    assert score.metrics["top1"] == pytest.approx(2 / 3)  # i2 is nearer the cat prototype
    assert score.metrics["top5"] == 1.0
    assert score.counts == {"images": 3, "classes": 2}


def test_score_task_rejects_an_answer_outside_the_options():
    embedder = FakeEmbedder({"img": E[0]}, {"a": E[0]})
    task = TaskData("t", store("img"), [ChoiceItem("text", ["img"], ["a"], answer=3, item_id="file.csv:7")])
    table = embed_tasks(embedder, [task])
    with pytest.raises(ValueError, match="file.csv:7"):
        score_task(task, table)


def _png(path, color):
    Image.new("RGB", (12, 10), color).save(path)
    return path


def test_two_way_accuracy_equals_mcq_accuracy_on_two_option_items_with_a_real_clip(
    tmp_path, tiny_clip, processor, monkeypatch
):
    """CC-Neg's two-way reader and a two-option NegBench CSV of the same items agree, and both agree
    with cosines computed by hand from `omninegclip.common.embedding`."""
    colors = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 90, 160), (250, 250, 250)]
    captions = ["a red square", "a green field", "a blue sky", "an olive wall", "a teal sea", "a white page"]
    negations = [
        "a square that is not red",
        "no field",
        "a sky with no blue",
        "not a wall",
        "no sea here",
        "not a page",
    ]
    paths = [_png(tmp_path / f"img{i}.png", color) for i, color in enumerate(colors)]
    torch.save(
        {
            "image_paths": [str(p) for p in paths],
            "annotations": [
                {"json": {"caption": c}, "sop_data": {"negative-prompt": n}} for c, n in zip(captions, negations)
            ],
        },
        tmp_path / "ccneg_preprocessed.pt",
    )
    with open(tmp_path / "mcq.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "correct_answer", "caption_0", "caption_1", "correct_answer_template"])
        for i, (p, c, n) in enumerate(zip(paths, captions, negations)):
            writer.writerow([p, i % 2, *((c, n) if i % 2 == 0 else (n, c)), "positive"])

    embedder = CLIPEmbedder(tiny_clip, processor, batch_size=4, progress=False)
    scores = evaluate_tasks(
        embedder,
        [ccneg.read_ccneg(tmp_path / "ccneg_preprocessed.pt"), negbench.read_negbench_mcq(tmp_path / "mcq.csv")],
    )
    image_embeds = embed_images(tiny_clip, processor.image_processor, [Image.open(p) for p in paths], progress=False)
    caption_cos = (image_embeds * embed_texts(tiny_clip, processor.tokenizer, captions, progress=False)).sum(-1)
    negation_cos = (image_embeds * embed_texts(tiny_clip, processor.tokenizer, negations, progress=False)).sum(-1)
    by_hand = (caption_cos > negation_cos).float().mean().item()
    assert scores["ccneg"].metrics["accuracy"] == pytest.approx(by_hand)
    assert scores["negbench_mcq"].metrics["accuracy"] == pytest.approx(by_hand)


def test_clip_embedder_length_sorted_batches_return_texts_in_their_order_and_count_truncations(tiny_clip, processor):
    texts = [
        "a very long caption about a dog on a red sofa in a room",
        "a cat",
        "two birds on a wire",
        "x",
        " ".join(["dog"] * 80),
        "a sofa with no dog",
    ]
    embedder = CLIPEmbedder(tiny_clip, processor, batch_size=1, progress=False)  # text batches of 4 * 1
    direct = embed_texts(tiny_clip, processor.tokenizer, texts, batch_size=1, progress=False)
    assert torch.allclose(embedder.embed_texts(texts), direct, atol=1e-5)
    assert embedder.truncated_texts == 1  # 80 words + start and end tokens > 77
