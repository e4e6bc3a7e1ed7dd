"""What lands on the Hub, read back with huggingface_hub's own parsers: a tiny built-in default
(image world -> plain-CLIP base -> Omni-NegCLIP fine-tune -> eval -> cards), pushed to a fake Hub
(`test_hub.FakeHub`: the upload calls are faked, the folder that would be uploaded is kept).

The pushed model folder loads with `from_pretrained`; its card shows every eval result
(`model_index_to_eval_results` keeps one per task), names its base model and dataset, has no local
path, no H1 under an H2, widget URLs inside the pushed repo, a hyperparameter table, framework
versions and BibTeX, and says it is a small model of synthetic shapes; the base's card says plain
CLIP training. Tracking: the Trainer's state and metrics are in the final folder and its TensorBoard
logs are uploaded; `--report_to` fails before anything slow."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import datasets
import datasets.dataset_dict
import pytest
import torch
import transformers
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_hub import USER, FakeHub
from train_helpers import color_rows, run_command, save_dataset, save_tiny_clip, single_thread, train_flags  # noqa: F401
from transformers import CLIPModel

import data_builder
import eval.__main__ as eval_cli
import omninegclip.training.card.hub as card_hub
import omninegclip.training.model_card as model_card
import train
from omninegclip.building import writing
from omninegclip.building.cards import GENERATED_DATA_LICENSE
from omninegclip.common.cli import UserError
from omninegclip.common.results import EvalResults
from omninegclip.training.card.widget import write_world_widget_examples
from pipeline.default import HUB_NAMES, attach_results

ABSOLUTE_PATH = re.compile(r"(?<![\w/:.~-])(?:~|/)(?:[\w.@+-]+/)+[\w.@+-]*")
PHOTO_WORDS = re.compile(r"\b(dogs?|sofas?|cats?|couch)\b", re.IGNORECASE)


def headings(text: str) -> list[int]:
    body = text.split("---", 2)[2]
    in_code = False
    levels = []
    for line in body.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            levels.append(len(line.split(" ", 1)[0]))
    return levels


def check_public_card(card: ModelCard, tmp_path: Path) -> None:
    text = str(card)
    assert str(tmp_path) not in text and not ABSOLUTE_PATH.findall(text), ABSOLUTE_PATH.findall(text)
    levels = headings(text)
    assert levels[0] == 1 and levels.count(1) == 1, levels  # one H1, the title, first
    assert all(later - earlier <= 1 for earlier, later in zip(levels, levels[1:])), levels  # no level skipped
    assert not PHOTO_WORDS.search(card.text), PHOTO_WORDS.findall(card.text)  # a world model: shapes, not photos
    assert "synthetic" in card.text and "shapes" in card.text


@pytest.fixture(scope="module")
def tiny_default(tmp_path_factory):
    """The built-in default's steps at toy size: its world, a plain-CLIP base, one fine-tune, the eval."""
    root = tmp_path_factory.mktemp("default")
    world = root / "world"
    data_builder.main(
        [
            "shapes",
            "--out",
            str(world),
            "--num_train",
            "48",
            "--num_validation",
            "8",
            "--num_test",
            "40",
            "--image_size",
            "32",
            "--no_progress",
        ]
    )
    widget = write_world_widget_examples(root)
    return root, world, widget


@pytest.fixture(scope="module")
def pushed(tiny_default, tmp_path_factory, processor):
    """A plain-CLIP base and one Omni-NegCLIP fine-tune of the tiny world, evaluated side by side, each
    given its results with the built-in default's `attach_results` (from the `EvalResults` read back
    from results.json), then the fine-tune pushed with the card CLI to a fake Hub."""
    root, world, widget = tiny_default
    folder = tmp_path_factory.mktemp("pushed")
    init = save_tiny_clip(folder / "init", processor)
    base, tuned = folder / "base", folder / "omni-choice"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the autouse single_thread fixture does for a test
    with pytest.MonkeyPatch.context() as patch:
        hub = FakeHub(folder / "hub")
        patch.setattr(card_hub, "create_repo", hub.create_repo)
        patch.setattr(card_hub, "upload_folder", hub.upload_folder)
        train.main(
            train_flags(
                init,
                world,
                base,
                max_steps=1,
                caption_column="pretrain_caption",
                presence_column="none",
                absence_column="none",
                text_preset="whole",
                widget_examples=widget,
                card_datasets=HUB_NAMES["world"],
            )
        )
        train.main(
            train_flags(
                base,
                world,
                tuned,
                max_steps=2,
                widget_examples=widget,
                report_to="tensorboard",
                card_base_model=HUB_NAMES["base"],
                card_datasets=HUB_NAMES["world"],
            )
        )
        evaluated = folder / "eval"
        eval_cli.main(
            [
                str(base),
                str(tuned),
                "--model_names",
                "base,omni-choice",
                "--tasks",
                "world",
                "--world",
                str(world),
                "--dataset_ids",
                f"world={HUB_NAMES['world']}",
                "--max_items",
                "40",
                "--batch_size",
                "16",
                "--out",
                str(evaluated),
                "--no_progress",
            ]
        )
        results = EvalResults.from_json(evaluated / "results.json")
        attach_results(base, results, "base")
        attach_results(tuned, results, "omni-choice")
        model_card.main([str(tuned), "--push_to_hub", "omninegclip-world-omni-choice"])
    torch.set_num_threads(threads)
    uploaded = hub.commits[0].folder
    return SimpleNamespace(
        folder=folder,
        base=base,
        tuned=tuned,
        evaluated=evaluated,
        results=results,
        hub=hub,
        repo_id=f"{USER}/omninegclip-world-omni-choice",
        uploaded=uploaded,
        files={path.relative_to(uploaded).as_posix() for path in uploaded.rglob("*") if path.is_file()},
        card=ModelCard.load(uploaded / "README.md"),
    )


def test_eval_table_names_local_folders_by_name_only(pushed):
    table = (pushed.evaluated / "results.md").read_text()  # published in the cards
    assert "`omni-choice` = local folder `omni-choice`" in table and str(pushed.folder) not in table


def test_attached_results_are_the_evaluation_s_with_the_model_s_own_index_entry(pushed):
    attached = pushed.tuned / "eval"
    assert EvalResults.from_json(attached / "results.json") == pushed.results
    assert (attached / "results.md").read_text() == (pushed.evaluated / "results.md").read_text()
    assert json.loads((attached / "model_index.json").read_text()) == [pushed.results.model_index_entry("omni-choice")]
    assert json.loads((pushed.base / "eval" / "model_index.json").read_text()) == [
        pushed.results.model_index_entry("base")
    ]
    assert (attached / "layerwise.md").is_file() is (pushed.evaluated / "layerwise.md").is_file()


def test_final_folder_keeps_the_trainer_state_metrics_and_logs(pushed):
    tuned = pushed.tuned
    state = json.loads((tuned / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("loss" in entry for entry in state["log_history"])
    train_results = json.loads((tuned / "train_results.json").read_text())
    assert {"train_loss", "train_runtime"} <= set(train_results)
    assert set(train_results) <= set(json.loads((tuned / "all_results.json").read_text()))
    assert list(tuned.glob("runs/*/events.out.tfevents.*")), "no TensorBoard log in the final folder"


def test_push_uploads_a_loadable_model_with_its_logs_under_the_owner(pushed):
    assert len(pushed.hub.commits) == 1
    assert {
        "trainer_state.json",
        "train_results.json",
        "all_results.json",
        "README.md",
        "model.safetensors",
    } <= pushed.files
    assert any(name.startswith("runs/") and "tfevents" in name for name in pushed.files)  # logs go with the model
    assert CLIPModel.from_pretrained(pushed.uploaded).config.vision_config.image_size == 30
    # the card is rewritten for the repo: bare names of the default go under the owner
    assert pushed.card.data.base_model == f"{USER}/{HUB_NAMES['base']}"
    assert pushed.card.data.datasets == [f"{USER}/{HUB_NAMES['world']}"]


def test_every_eval_task_survives_the_hub_s_merge(pushed):
    """One result per task survives (task type, dataset type, config, split and revision differ)."""
    meta = pushed.card.data
    evaluated = json.loads((pushed.tuned / "eval" / "model_index.json").read_text())[0]["results"]
    name, eval_results = model_index_to_eval_results(meta.to_dict()["model-index"])
    assert name == "omninegclip-world-omni-choice"
    assert len(evaluated) == 14  # seven world families x two phrasing template sets
    assert len({(r.dataset_config, r.dataset_split) for r in eval_results}) == len(evaluated)
    assert len(eval_results) == sum(len(result["metrics"]) for result in evaluated)
    assert {r.dataset_type for r in eval_results} == {f"{USER}/{HUB_NAMES['world']}"}
    assert {r.dataset_split for r in eval_results} == {"test"}
    assert len(meta.eval_results) == len(eval_results)
    heldout = [r for r in eval_results if r.dataset_config.startswith("world_heldout/")]
    assert heldout and all(r.metric_name.startswith("world_heldout/") for r in heldout)


def test_widget_images_resolve_inside_the_pushed_repo(pushed):
    for entry in pushed.card.data.to_dict()["widget"]:
        prefix = f"https://huggingface.co/{pushed.repo_id}/resolve/main/"
        assert entry["src"].startswith(prefix) and entry["src"][len(prefix) :] in pushed.files
        assert "square" in entry["candidate_labels"] or "heart" in entry["candidate_labels"]
    assert f'hf_hub_download("{pushed.repo_id}", "widget/example-0.png")' in pushed.card.text


def test_pushed_card_says_what_the_model_is_and_how_it_was_trained(pushed):
    check_public_card(pushed.card, pushed.folder)
    text = pushed.card.text
    assert "fine-tuned with **Omni-NegCLIP**" in text and "30×30-pixel" in text
    assert "| learning rate | 0.001 |" in text and "| optimizer steps | 2 |" in text
    assert f"- transformers {transformers.__version__}" in text
    assert "@misc{omninegclip" in text and "eprint        = {2603.29258}" in text and "radford2021clip" in text
    assert "world_heldout/mcq" in text  # the results table is in the card


def test_base_card_says_plain_clip_training(pushed):
    base_card = ModelCard.load(pushed.base / "README.md")  # local, not pushed
    assert base_card.data.base_model is None and base_card.data.datasets == [HUB_NAMES["world"]]
    check_public_card(base_card, pushed.folder)
    assert "plain CLIP contrastive loss" in base_card.text and "randomly initialised" in base_card.text
    assert "fine-tuned with" not in base_card.text and "lambda_text" not in base_card.text
    assert "negation" not in base_card.data.tags
    assert [entry["src"] for entry in base_card.data.to_dict()["widget"]] == [
        "widget/example-0.png",
        "widget/example-1.png",
    ]
    assert "rewrites them as `https://huggingface.co/OWNER/NAME/resolve/main/widget/...`" in base_card.text
    tuned_results = model_index_to_eval_results(pushed.card.data.to_dict()["model-index"])[1]
    assert len(model_index_to_eval_results(base_card.data.to_dict()["model-index"])[1]) == len(tuned_results)


def test_report_to_is_checked_before_anything_slow(tmp_path, monkeypatch):
    missing_model = tmp_path / "no-such-model"  # loading it would fail: the tracker check comes first
    for value, expected in (
        ("wandb", "--report_to wandb: the wandb tracker is not installed"),
        ("tensorboard,nonsense", "--report_to tensorboard,nonsense: nonsense is not supported, only"),
    ):
        with pytest.raises(UserError) as error:
            train.main(train_flags(missing_model, tmp_path / "no-data", tmp_path / "out", report_to=value))
        assert expected in str(error.value)
    with pytest.raises(UserError, match=r"pip install wandb"):
        train.main(train_flags(missing_model, tmp_path / "no-data", tmp_path / "out", report_to="wandb"))
    # The trackers in requirements.txt pass the check (and the run then fails on the model, not the tracker).
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    with pytest.raises(UserError, match="--model_name_or_path"):
        train.main(train_flags(missing_model, tmp_path / "no-data", tmp_path / "out", report_to="tensorboard,trackio"))


class FakeDatasetHub:
    """The Hub calls of `DatasetDict.push_to_hub` and `DatasetCard.push_to_hub`, faked: each dataset repo
    is a folder `root/datasets/<repo_id>` (datasets' own code reads it back through a local filesystem
    in place of HfFileSystem, at revision "main")."""

    def __init__(self, root: Path, monkeypatch):
        from fsspec.implementations.local import LocalFileSystem
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

        self.root, self.commits, staged = root, [], {}
        root.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(root)  # datasets reads the repo at the relative path "datasets/<repo_id>"

        def create_repo(api, repo_id, repo_type=None, private=None, exist_ok=False, **kwargs):
            assert repo_type == "dataset"
            repo_id = repo_id if "/" in repo_id else f"{USER}/{repo_id}"
            (root / "datasets" / repo_id).mkdir(parents=True, exist_ok=True)
            return SimpleNamespace(repo_id=repo_id)

        def repo_info(api, repo_id, repo_type=None, revision=None, **kwargs):
            assert (root / "datasets" / repo_id).is_dir(), f"no repo {repo_id}"
            return SimpleNamespace(id=repo_id, sha="main")

        def preupload_lfs_files(api, repo_id, additions, **kwargs):
            for addition in additions:  # datasets deletes the shard file right after this call
                staged[id(addition)] = Path(addition.path_or_fileobj).read_bytes()

        def create_commit(api, repo_id, operations, commit_message=None, **kwargs):
            repo = root / "datasets" / repo_id
            for operation in operations:
                target = repo / operation.path_in_repo
                if isinstance(operation, CommitOperationDelete):
                    target.unlink()
                    continue
                assert isinstance(operation, CommitOperationAdd)
                content = staged.pop(id(operation), None)
                if content is None:
                    source = operation.path_or_fileobj
                    content = source if isinstance(source, bytes) else Path(source).read_bytes()
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            self.commits.append((repo_id, commit_message, sorted(operation.path_in_repo for operation in operations)))
            return SimpleNamespace(
                commit_url=f"https://huggingface.co/datasets/{repo_id}/commit/{len(self.commits)}",
                oid="main",
                pr_url=None,
            )

        for name, fake in (
            ("create_repo", create_repo),
            ("repo_info", repo_info),
            ("preupload_lfs_files", preupload_lfs_files),
            ("create_commit", create_commit),
        ):
            monkeypatch.setattr(HfApi, name, fake)
        monkeypatch.setattr(datasets.dataset_dict, "HfFileSystem", lambda *args, **kwargs: LocalFileSystem())
        # The Hub's YAML check (a server call): here the card must at least parse back as a DatasetCard.
        monkeypatch.setattr(DatasetCard, "validate", lambda card, repo_type=None: DatasetCard(str(card)))

    def repo(self, repo_id: str) -> Path:
        return self.root / "datasets" / repo_id


def test_world_dataset_card_and_pushed_layout_load(tiny_default, tmp_path, monkeypatch):
    root, world, _ = tiny_default
    local = DatasetCard.load(world / "README.md")
    assert local.data.license == GENERATED_DATA_LICENSE == "mit"  # generated data: the repository's license, named
    # The save_to_disk folder's card points at its own Arrow files (not the Hub's data/{split}-*).
    assert local.data.to_dict()["configs"][0]["data_files"][0] == {"split": "train", "path": "train/data-*.arrow"}
    splits = {split["name"]: split for split in local.data.dataset_info["splits"]}
    on_disk = datasets.load_from_disk(str(world))
    assert {name: split["num_examples"] for name, split in splits.items()} == {
        name: len(part) for name, part in on_disk.items()
    }
    assert all(split["num_bytes"] == on_disk[name].data.nbytes > 0 for name, split in splits.items())
    assert local.data.dataset_info["dataset_size"] == sum(split["num_bytes"] for split in splits.values())
    assert str(tmp_path) not in str(local) and str(root) not in str(local)
    # load_dataset reads the folder's own layout (train/, validation/, test/) too.
    from_folder = datasets.load_dataset(str(world), cache_dir=str(tmp_path / "cache"))
    assert {name: len(part) for name, part in from_folder.items()} == {
        name: len(part) for name, part in on_disk.items()
    }

    hub = FakeDatasetHub(tmp_path / "hub", monkeypatch)
    writing.push_to_hub(world, "omninegclip-world", (world / "README.md").read_text())
    repo_id = f"{USER}/omninegclip-world"
    assert [commit[0] for commit in hub.commits] == [repo_id, repo_id]
    assert hub.commits[0][2] == ["README.md"]  # the card first, then the data (and datasets' update of the card)
    pushed = DatasetCard.load(hub.repo(repo_id) / "README.md")
    # datasets wrote its dataset_info (parquet download size) into our card and kept the rest.
    assert pushed.data.dataset_info["download_size"] > 0
    assert {split["name"] for split in pushed.data.dataset_info["splits"]} == set(on_disk)
    assert pushed.data.license == "mit" and pushed.data.pretty_name == local.data.pretty_name
    assert pushed.text == local.text
    assert pushed.data.to_dict()["configs"] == [
        {"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"} for split in on_disk]}
    ]
    # The pushed layout loads with load_dataset, every split, the same rows.
    loaded = datasets.load_dataset(str(hub.repo(repo_id)))
    assert {name: len(part) for name, part in loaded.items()} == {name: len(part) for name, part in on_disk.items()}
    assert loaded["test"][0]["caption"] == on_disk["test"][0]["caption"]
    assert loaded["train"][0]["image"].size == on_disk["train"][0]["image"].size


def test_card_remembers_the_world_and_its_inputs_when_the_data_folder_is_gone(tmp_path):
    world = tmp_path / "world"
    world.mkdir()
    (world / "build_summary.json").write_text(json.dumps({"source": "shapes", "rows_out": {"train": 5}}))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"model_type": "clip", "projection_dim": 8, "vision_config": {"image_size": 64}, "text_config": {}})
    )
    (folder / "training_provenance.json").write_text(
        json.dumps(
            {
                "base_model": str(tmp_path / "base"),
                "datasets": [str(world)],
                "data": [{"name": str(world), "split": "train", "with_presence": 3, "with_absence": 2}],
            }
        )
    )
    model_card.write_model_card(folder, base_description="a small CLIP", dataset_ids=["omninegclip-world"])
    first = ModelCard.load(folder / "README.md")
    (world / "build_summary.json").unlink()  # the data folder moved away
    model_card.write_model_card(folder)  # e.g. `python -m omninegclip.training.model_card FOLDER` later
    again = ModelCard.load(folder / "README.md")
    assert again.text == first.text and again.data.datasets == ["omninegclip-world"]
    assert "64×64-pixel" in again.text and "synthetic scenes of coloured shapes" in again.text
    assert "Started from:** a small CLIP" in again.text
    # No widget examples given: the world's own scenes, not the photo of the built-in default.
    assert [example["example_title"] for example in again.data.to_dict()["widget"]] == [
        "Which object is negated?",
        "Presence negation",
    ]
    assert not PHOTO_WORDS.search(again.text) and str(tmp_path) not in str(again)
    # The provenance holds no training arguments: the card says so rather than inventing hyperparameters.
    assert "Not recorded (no training arguments" in again.text and "### Hyperparameters" not in again.text
    assert model_card.checkpoint_facts(folder).negation_training  # the run's rows carried negations


def test_trackio_records_the_loss_terms_offline(tmp_path, processor):
    """`--report_to trackio` in a fresh process (trackio fixes its folder when imported): the run's
    loss and each Omni-NegCLIP term land in the local trackio database, nothing online."""
    import sqlite3
    import sys

    model = save_tiny_clip(tmp_path / "clip", processor)
    data = save_dataset(tmp_path / "data", color_rows(16))
    result = run_command(
        [
            sys.executable,
            "train.py",
            *train_flags(model, data, tmp_path / "out", max_steps=2, report_to="trackio", project="omninegclip-test"),
        ],
        TRACKIO_DIR=str(tmp_path / "trackio"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    database = tmp_path / "trackio" / "omninegclip-test.db"
    rows = [json.loads(row[0]) for row in sqlite3.connect(database).execute("select metrics from metrics")]
    logged = {key for row in rows for key in row}
    assert {"train/loss", "train/loss_presence", "train/loss_absence"} <= logged
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.parametrize(
    "value, expected",
    [
        ("world", "--dataset_ids: expected KEY=HUB_ID pairs"),
        (
            "world_split=me/world",
            "--dataset_ids world_split=me/world: 'world_split' is not a data flag naming a dataset",
        ),
        ("world=not a repo", "--dataset_ids world=not a repo: 'not a repo' is not a Hub id"),
    ],
)
def test_dataset_ids_are_checked_before_any_model_loads(tiny_default, value, expected):
    _, world, _ = tiny_default
    with pytest.raises(UserError) as error:
        eval_cli.main(
            ["no-such-model", "--tasks", "world", "--world", str(world), "--dataset_ids", value, "--out", "unused"]
        )
    assert expected in str(error.value)


# ------------------------------------------------------------------------- the card CLI's bad inputs


def card_folder(root: Path, provenance: dict | None = None, readme: str | None = None, config: bool = True) -> Path:
    """A checkpoint folder as far as the card reads it: config.json, train.py's record (`provenance`;
    None: none, as in a plain CLIP) and a README.md already there (`readme`)."""
    folder = root / "model"
    folder.mkdir()
    if config:
        (folder / "config.json").write_text(
            json.dumps(
                {"model_type": "clip", "projection_dim": 8, "vision_config": {"image_size": 30}, "text_config": {}}
            )
        )
    if provenance is not None:
        (folder / "training_provenance.json").write_text(json.dumps(provenance))
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


def only(folder: Path, names: set[str]) -> None:
    assert {path.name for path in folder.iterdir()} == names


TRAINED = {
    "base_model": "openai/clip-vit-base-patch32",
    "datasets": [],
    "data": [{"name": "data", "split": "train", "with_presence": 3, "with_absence": 2}],
}
USERS_CARD = "---\nlicense: apache-2.0\n---\n\n# My own model\n\nWritten by hand.\n"
EDITED_CARD = "---\nlicense: mit\n---\n\n# model\n\nThe project's card, its marker line deleted to keep these edits.\n"
RECORDS = {"config.json", "training_provenance.json"}


@dataclass(frozen=True)
class CardCase:
    """`python -m omninegclip.training.model_card FOLDER FLAGS` on a folder holding `provenance`,
    `readme` (and config.json unless not `config`): its exit code, phrases of its output, the files
    left in the folder (None: not checked) and README.md unchanged where there was one and the run
    failed."""

    name: str
    provenance: dict | None
    readme: str | None
    flags: tuple[str, ...]
    exit_code: int
    phrases: tuple[str, ...]
    files_after: set[str] | None
    config: bool = True


CARD_CASES = [
    # A README.md of the user's own is never replaced without --overwrite; the message names the file and the flag.
    CardCase(
        "own README.md",
        TRAINED,
        USERS_CARD,
        (),
        2,
        ("model/README.md exists and was not written by this tool", "Pass --overwrite"),
        RECORDS | {"README.md"},
    ),
    CardCase("own README.md, --overwrite", TRAINED, USERS_CARD, ("--overwrite",), 0, ("wrote",), None),
    CardCase(
        "own README.md, --push_to_hub: no repo created",
        TRAINED,
        USERS_CARD,
        ("--push_to_hub", "me/model"),
        2,
        ("was not written by this tool",),
        RECORDS | {"README.md"},
    ),
    CardCase(
        "the project's card, its marker deleted",
        TRAINED,
        EDITED_CARD,
        (),
        2,
        ("was not written by this tool",),
        RECORDS | {"README.md"},
    ),
    # A plain or untrained CLIP (no training record): no card that would invent a training for it.
    CardCase(
        "no training record",
        None,
        None,
        (),
        2,
        (
            "model has no training_provenance.json",
            "a plain or untrained CLIP",
            "write this folder's README.md yourself",
        ),
        {"config.json"},
    ),
    CardCase(
        "no training record, --overwrite",
        None,
        USERS_CARD,
        ("--overwrite",),
        2,
        ("has no training_provenance.json",),
        {"config.json", "README.md"},
    ),
    CardCase(
        "no config.json",
        TRAINED,
        None,
        (),
        2,
        ("is not a checkpoint folder (no config.json)",),
        {"training_provenance.json"},
        config=False,
    ),
]


@pytest.mark.parametrize("case", CARD_CASES, ids=lambda case: case.name)
def test_card_cli_bad_inputs(case: CardCase, tmp_path, capsys, caplog, monkeypatch):
    from train_helpers import invoke_cli

    monkeypatch.setattr(card_hub, "create_repo", lambda *args, **kwargs: pytest.fail("a repo was created"))
    folder = card_folder(tmp_path, case.provenance, case.readme, case.config)
    code, output = invoke_cli("omninegclip.training.model_card", [str(folder), *case.flags], capsys, caplog)
    assert code == case.exit_code, output
    assert "Traceback" not in output and all(phrase in output for phrase in case.phrases), output
    if case.files_after is not None:
        only(folder, case.files_after)
    if case.readme is not None:
        readme = (folder / "README.md").read_text()
        assert readme == case.readme if code else "<!-- omninegclip-card:" in readme


def test_a_refused_push_creates_no_repo(tmp_path, monkeypatch):
    folder = card_folder(tmp_path, TRAINED, USERS_CARD)
    monkeypatch.setattr(card_hub, "create_repo", lambda *args, **kwargs: pytest.fail("a repo was created"))
    with pytest.raises(UserError, match="Pass --overwrite"):
        model_card.push_checkpoint(folder, "me/model")


def test_the_card_s_own_marker_lets_it_rewrite_its_card_and_remembers_the_license(tmp_path):
    folder = card_folder(tmp_path, TRAINED)
    model_card.write_model_card(folder, license="apache-2.0")
    first = (folder / "README.md").read_text()
    assert "<!-- omninegclip-card:" in first.split("---", 2)[2].lstrip().splitlines()[0]  # the body's first line
    model_card.main([str(folder)])  # a re-render without --license keeps the license given before
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and str(card) == first
    model_card.main([str(folder), "--license", "cc-by-4.0"])
    assert ModelCard.load(folder / "README.md").data.license == "cc-by-4.0"


def test_card_text_is_the_written_card_and_writes_nothing(tmp_path):
    folder = card_folder(tmp_path, TRAINED)
    text = model_card.card_text(folder, repo_id="me/model", dataset_ids=["me/data"])
    only(folder, {"config.json", "training_provenance.json"})
    assert (model_card.write_model_card(folder, repo_id="me/model", dataset_ids=["me/data"])).read_text() == text


def test_a_record_without_its_base_model_says_not_recorded(tmp_path):
    folder = card_folder(tmp_path, {key: value for key, value in TRAINED.items() if key != "base_model"})
    text = ModelCard.load(model_card.write_model_card(folder)).text
    assert "- **Started from:** not recorded" in text and "unknown" not in text
