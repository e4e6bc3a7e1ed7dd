"""`--push_to_hub` without a Hub: the upload functions are replaced by a fake that keeps what would be
uploaded (after the same ignore patterns), and the test checks that folder as a Hub user would meet
it: it loads as CLIPModel and through the Auto class, runs in the zero-shot pipeline with the card's
own widget labels, and its card parses with the right metadata. Nothing reaches the network
(HF_HUB_OFFLINE=1: any real Hub call would fail)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from train_helpers import color_rows, save_dataset, save_tiny_clip, single_thread, train_flags, weights  # noqa: F401  (single_thread: an autouse fixture)
from transformers import AutoModelForZeroShotImageClassification, CLIPModel, pipeline
from transformers import trainer as transformers_trainer

import omninegclip.training.card.hub as card_hub
import omninegclip.training.hub as training_hub
import omninegclip.training.lora as lora
import omninegclip.training.model_card as model_card
import train

USER = "someone"
LABELS = ["a red square", "a picture with no red square", "a red square with no blue circle"]


class FakeHub:
    """Stands in for the Hub client (`HfApi`: create_repo, create_branch, upload_folder, snapshot_download)
    of the Trainer's push, the card command and the adapter push: each commit is a copy of the files
    that would be sent (after the same ignore patterns, under `path_in_repo`), and `repos` holds what
    each repo's branch then serves."""

    def __init__(self, root: Path):
        self.root, self.commits, self.branches, self.repos, self.created = root, [], [], {}, []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        assert exist_ok
        self.created.append((repo_id, private, token))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"{USER}/{repo_id}")

    def create_branch(self, repo_id, branch, token=None, exist_ok=False, **kwargs):
        self.branches.append((repo_id, branch))

    def upload_folder(
        self,
        *,
        repo_id,
        folder_path,
        commit_message=None,
        token=None,
        ignore_patterns=None,
        path_in_repo=None,
        revision=None,
        run_as_future=False,
        **kwargs,
    ):
        folder = Path(folder_path)
        files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
        target = self.root / f"commit-{len(self.commits)}"
        state = self.repos.setdefault((repo_id if "/" in repo_id else f"{USER}/{repo_id}", revision or "main"), {})
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            in_repo = f"{path_in_repo}/{name}" if path_in_repo else name
            (target / in_repo).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, target / in_repo)
            state[in_repo] = target / in_repo
        self.commits.append(SimpleNamespace(repo_id=repo_id, folder=target, message=commit_message, revision=revision))
        info = SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(self.commits)}")
        if run_as_future:
            done = Future()
            done.set_result(info)
            return done
        return info

    def snapshot_download(self, repo_id, allow_patterns=None, local_dir=None, revision=None, token=None, **kwargs):
        state = self.repos.get((repo_id if "/" in repo_id else f"{USER}/{repo_id}", revision or "main"), {})
        for name in filter_repo_objects(sorted(state), allow_patterns=allow_patterns):
            (Path(local_dir) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(state[name], Path(local_dir) / name)
        return local_dir

    def final(self):
        """The last commit to the repo's root (the end of training, or the card command)."""
        return [
            commit
            for commit in self.commits
            if commit.message in ("End of training", None) or "card" in (commit.message or "")
        ][-1]


def fake_the_hub(monkeypatch, root: Path) -> FakeHub:
    """Every Hub call of the project and of the Trainer goes to a `FakeHub`."""
    fake = FakeHub(root)
    monkeypatch.setattr(transformers_trainer, "hf_api", lambda: fake)
    monkeypatch.setattr(training_hub, "hub_api", lambda: fake)
    for module in (card_hub, lora):
        monkeypatch.setattr(module, "create_repo", fake.create_repo)
        monkeypatch.setattr(module, "upload_folder", fake.upload_folder)
    return fake


@pytest.fixture
def hub(tmp_path, monkeypatch):
    return fake_the_hub(monkeypatch, tmp_path / "hub")


def test_push_uploads_a_plain_clip_with_a_working_card(tmp_path, processor, hub):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(16))
    red = tmp_path / "examples" / "red.png"
    red.parent.mkdir()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(red)
    examples = tmp_path / "examples" / "widget.json"
    examples.write_text(
        json.dumps(
            [
                {
                    "image": "red.png",
                    "candidate_labels": LABELS,
                    "title": "Which negation is true?",
                    "expected_label": LABELS[2],
                },
                {"image": "https://example.org/cat.jpg", "candidate_labels": ["a cat", "no cat"], "title": "Presence"},
            ]
        )
    )
    out = tmp_path / "tiny-omninegclip"
    train.main(
        train_flags(
            model_dir,
            data,
            out,
            max_steps=2,
            save_strategy="steps",
            save_steps=1,
            push_to_hub="true",
            hub_model_id="tiny-omninegclip",
            widget_examples=examples,
            card_base_model="openai/clip-vit-base-patch32",
            card_datasets="someone/cc-neg,someone/coco-neg",
        )
    )

    # The Trainer's default --hub_strategy every_save: the weights went up at each save, then the final folder.
    assert [commit.message for commit in hub.commits] == [
        "Training in progress, step 1",
        "Training in progress, step 2",
        "End of training",
    ]
    commit = hub.commits[-1]
    repo_id = f"{USER}/tiny-omninegclip"
    assert commit.repo_id == repo_id
    uploaded = commit.folder
    assert (out / "checkpoint-2").is_dir()  # checkpoint folders stay local (--hub_strategy checkpoint pushes one)
    files = {path.relative_to(uploaded).as_posix() for path in uploaded.rglob("*") if path.is_file()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "training_provenance.json",
        "widget/example-0.png",
        "widget/examples.json",
    } <= files
    assert not any(name.startswith(("checkpoint-", ".")) for name in files)
    settings = json.loads((uploaded / "config.json").read_text())[
        "omninegclip"
    ]  # the run's settings travel in config.json
    assert settings["loss"]["margin"] == 0.9 and settings["trainable_text_blocks"]

    # The weights load as a plain CLIP, directly and through the Auto class of the task.
    clip = CLIPModel.from_pretrained(uploaded)
    auto = AutoModelForZeroShotImageClassification.from_pretrained(uploaded)
    assert type(auto) is CLIPModel
    assert all(torch.equal(tensor, weights(out)[name]) for name, tensor in clip.state_dict().items())

    # The card: metadata the Hub reads, a widget whose examples the folder itself can run.
    card = ModelCard.load(uploaded / "README.md")
    meta = card.data
    assert meta.library_name == "transformers" and meta.pipeline_tag == "zero-shot-image-classification"
    assert meta.base_model == "openai/clip-vit-base-patch32"
    assert meta.datasets == ["someone/cc-neg", "someone/coco-neg"]
    assert meta.license == "mit" and {"clip", "negation", "omni-negclip"} <= set(meta.tags)
    widget = meta.to_dict()["widget"]
    assert widget[0]["src"] == f"https://huggingface.co/{repo_id}/resolve/main/widget/example-0.png"
    assert widget[1]["src"] == "https://example.org/cat.jpg"
    labels = [label.strip() for label in widget[0]["candidate_labels"].split(",")]
    assert labels == LABELS and any(" no " in label for label in labels)
    result = pipeline("zero-shot-image-classification", model=str(uploaded))(
        Image.open(uploaded / "widget" / "example-0.png"), candidate_labels=labels
    )
    assert sorted(entry["label"] for entry in result) == sorted(labels)
    assert sum(entry["score"] for entry in result) == pytest.approx(1.0, abs=1e-4)
    stored = json.loads((uploaded / "widget" / "examples.json").read_text())
    assert stored[0]["image"] == "widget/example-0.png" and stored[0]["expected_label"] == LABELS[2]
    assert f'pipeline("zero-shot-image-classification", model="{repo_id}")' in card.text
    assert f'CLIPModel.from_pretrained("{repo_id}")' in card.text
    assert "model-index" not in meta.to_dict()  # no eval results yet


def test_card_cli_adds_eval_results_and_pushes_again(tmp_path, processor, hub):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(8))
    out = tmp_path / "tiny-omninegclip"
    train.main(train_flags(model_dir, data, out, max_steps=1, card_base_model="openai/clip-vit-base-patch32"))
    assert not hub.commits  # no --push_to_hub: nothing uploaded

    (out / "eval").mkdir()
    entry = {
        "name": out.name,
        "results": [
            {
                "task": {"type": "zero-shot-image-classification", "name": "CC-Neg presence negation"},
                "dataset": {"name": "CC-Neg (ccneg)", "type": "ccneg"},
                "metrics": [{"type": "accuracy", "name": "ccneg accuracy", "value": 87.5}],
            }
        ],
    }
    other = {
        "name": "base-model",
        "results": [
            entry["results"][0] | {"metrics": [{"type": "accuracy", "name": "ccneg accuracy", "value": 50.0}]}
        ],
    }  # another model of the same eval run
    (out / "eval" / "model_index.json").write_text(json.dumps([other, entry]))
    (out / "eval" / "results.md").write_text("| task | accuracy |\n|---|---|\n| ccneg | 87.5 |\n")
    model_card.main([str(out), "--push_to_hub", "tiny-omninegclip"])

    assert len(hub.commits) == 1
    card = ModelCard.load(hub.commits[0].folder / "README.md")
    assert card.data.base_model == "openai/clip-vit-base-patch32"  # read back from training_provenance.json
    results = card.data.eval_results
    assert len(results) == 1 and results[0].metric_value == 87.5 and results[0].dataset_type == "ccneg"
    assert card.data.model_name == "tiny-omninegclip"
    assert "| ccneg | 87.5 |" in card.text
