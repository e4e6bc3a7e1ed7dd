"""`train.py --streaming`: webdataset shards (bench/webdataset_fixture.py) streamed into a run whose
frozen image tower runs inside the step. What a user meets: a plain CLIP checkpoint; a resumed run
that trains on exactly the rows an uninterrupted one reads next, with the same weights at the end;
corrupt images skipped and counted; the prepared data's error for a missing column; the flags a
stream needs; two sources mixed at their probabilities, each process on its own share."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import datasets
import pytest
import torch
from PIL import Image
from train_helpers import capture_trainers, save_tiny_clip, single_thread, train_flags, weights  # noqa: F401
from transformers import CLIPModel, TrainerCallback

import modeling_omninegclip
import train
from bench.webdataset_fixture import CORRUPT_BYTES, write_shards
from omninegclip.common.cli import UserError
from omninegclip.training.config import OmniNegCLIPConfig
from omninegclip.training.data import load_any_dataset
from omninegclip.training.streaming import POSITION_FILE, mixed_stream
from omninegclip.training.trainer import NonFiniteLossError

SAMPLES, CORRUPT = 20, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory, processor):
    folder = tmp_path_factory.mktemp("streaming")
    save_tiny_clip(folder / "clip", processor)
    write_shards(folder / "wds", SAMPLES, 2, seed=0, corrupt=CORRUPT, min_side=24, max_side=80)
    write_shards(folder / "other", 12, 2, seed=1, min_side=24, max_side=80)
    return folder


def stream_flags(root, out, data=None, **overrides) -> list[str]:
    values = dict(
        dataset_name=data or f"{root / 'wds'}/shard-*.tar",
        streaming="true",
        image_column="jpg",
        per_device_train_batch_size=3,
        max_steps=4,
        preprocessing_num_workers=2,
    )
    return train_flags(root / "clip", values.pop("dataset_name"), out, **(values | overrides))


class KeysPerStep(TrainerCallback):
    """The names of the rows each optimiser step trained on (the Trainer's last consumed batch)."""

    def __init__(self):
        self.built, self.steps = [], {}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[state.global_step] = list(self.built[-1].stream.progress.last_rows)


def run(monkeypatch, argv: list[str]) -> tuple[object, dict[int, list[str]]]:
    """train.main(argv); the Trainer and the rows of each step."""
    recorder = KeysPerStep()
    with monkeypatch.context() as patch:  # this run's Trainer only (the next run's class is patched anew)
        recorder.built = capture_trainers(patch, recorder)
        trainer, _ = train.main(argv)
    return trainer, recorder.steps


def corrupt_keys(root) -> list[str]:
    return json.loads((root / "wds" / "manifest.json").read_text())["corrupt"]


def test_a_streamed_run_saves_a_plain_clip_checkpoint_and_counts_the_corrupt_images(
    root, tmp_path, monkeypatch, caplog
):
    # 6 steps of 3 rows: every usable row of the first pass over the 20 samples (2 corrupt) once.
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="omninegclip.train"):
        trainer, steps = run(monkeypatch, stream_flags(root, out, max_steps=6, save_strategy="steps", save_steps=3))

    bad = corrupt_keys(root)
    read = [key.split("/")[1] for step in sorted(steps) for _, key in steps[step]]
    usable = [f"{index:08d}" for index in range(SAMPLES) if f"{index:08d}" not in bad]
    assert read == usable  # in the shards' order, the corrupt ones left out
    clip = CLIPModel.from_pretrained(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["CLIPModel"]
    assert all(torch.equal(tensor, weights(out)[name]) for name, tensor in clip.state_dict().items())
    name = "text_model.encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(weights(out)[name], weights(root / "clip")[name])  # the front blocks trained
    assert torch.equal(
        weights(out)["vision_model.encoder.layers.0.mlp.fc1.weight"],
        weights(root / "clip")["vision_model.encoder.layers.0.mlp.fc1.weight"],
    )  # the image tower is frozen

    counted = [key for key in bad if int(key) < int(usable[-1])]  # a skip is counted with the next row trained on
    (report,) = json.loads((out / "training_provenance.json").read_text())["streaming"]["data"]
    assert report["kept"] == len(usable) and report["rows"] == len(usable) + len(counted)
    assert report["skips"] == ({"corrupt_image": len(counted)} if counted else {})
    assert [place.split(":")[0] for place in report["skip_examples"].get("corrupt_image", [])] == [
        f"shard-0000{int(key) // 10}.tar/{key}" for key in counted
    ]
    assert report["with_presence"] == sum(1 for key in usable if int(key) % 4 != 3)
    assert report["with_absence"] == sum(1 for key in usable if int(key) % 5 != 4)
    assert f"streamed data: train '{root / 'wds'}/shard-*.tar': kept {len(usable)} of" in caplog.text
    for step in (3, 6):
        saved = json.loads((out / f"checkpoint-{step}" / POSITION_FILE.format(process=0)).read_text())
        assert saved["processes"] == 1 and saved["reports"][0]["kept"] == 3 * step


def test_a_resumed_run_trains_on_the_rows_an_uninterrupted_run_reads_next(root, tmp_path, monkeypatch):
    # Two sources mixed 0.7/0.3, so that the mix's random draws must resume too; 8 steps of 3 rows go past the
    # end of the smaller source (it starts again) and over the corrupt images.
    both = f"{root / 'wds'}/shard-*.tar"
    flags = dict(
        mix_dataset_name=f"{root / 'other'}/shard-00000.tar,{root / 'other'}/shard-00001.tar",
        mix_probabilities="0.7,0.3",
        max_steps=8,
        lr_scheduler_type="constant",  # the interrupted run below is launched for 3 steps: the same schedule
        save_strategy="steps",
        save_steps=3,
    )
    _, whole = run(monkeypatch, stream_flags(root, tmp_path / "whole", data=both, **flags))
    assert {source for rows in whole.values() for source, _ in rows} == {both, flags["mix_dataset_name"]}
    out = tmp_path / "resumed"
    run(monkeypatch, stream_flags(root, out, data=both, **(flags | {"max_steps": 3})))
    _, resumed = run(
        monkeypatch, stream_flags(root, out, data=both, **flags, resume_from_checkpoint=out / "checkpoint-3")
    )

    assert sorted(resumed) == [4, 5, 6, 7, 8]
    assert resumed == {step: whole[step] for step in range(4, 9)}
    assert all(torch.equal(weights(tmp_path / "whole")[name], value) for name, value in weights(out).items())
    counts = [
        json.loads((path / "training_provenance.json").read_text())["streaming"] for path in (tmp_path / "whole", out)
    ]
    assert counts[0] == counts[1]  # skips and rows counted once, across the interruption


def test_a_resume_refuses_a_checkpoint_without_a_stream_position(root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(monkeypatch, stream_flags(root, out, max_steps=2, save_strategy="steps", save_steps=2))
    (out / "checkpoint-2" / POSITION_FILE.format(process=0)).unlink()
    with pytest.raises(UserError, match="it holds no stream position for process 0"):
        train.main(stream_flags(root, out, resume_from_checkpoint=out / "checkpoint-2"))


def test_a_missing_column_is_refused_with_the_message_of_prepared_data(root, tmp_path):
    data = f"{root / 'wds'}/shard-00000.tar,{root / 'wds'}/shard-00001.tar"
    messages = []
    for streaming in ("true", "false"):
        with pytest.raises(UserError) as error:
            train.main(stream_flags(root, tmp_path / streaming, data=data, streaming=streaming, caption_column="text"))
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"dataset {data!r} has no column 'text' (set by --caption_column); its columns are")
    assert "'caption', 'presence_negated', 'absence_negated'" in messages[0]  # the json fields, lifted


@pytest.mark.parametrize(
    "flags, phrase",
    [
        ({"max_steps": None}, "--streaming needs --max_steps"),
        ({"eval_strategy": "steps"}, "evaluate the saved checkpoints with `python -m eval"),
        ({"dataloader_num_workers": 2}, "leave --dataloader_num_workers 0"),
        ({"mix_probabilities": "0.5,0.6"}, "--mix_probabilities '0.5,0.6' adds up to 1.1"),
        ({"mix_probabilities": "1,x"}, "--mix_probabilities must be comma-separated numbers"),
        ({"mix_probabilities": "0.5,0.5"}, "--mix_probabilities gives 2 probabilities for 1 dataset(s)"),
        ({"streaming": "false", "mix_probabilities": "1"}, "sets the mix of streamed datasets: pass --streaming"),
    ],
)
def test_what_a_stream_cannot_do_is_refused_by_flag(root, tmp_path, flags, phrase):
    with pytest.raises(UserError) as error:
        train.main(stream_flags(root, tmp_path / "out", **flags))
    assert phrase in str(error.value)


def test_a_nan_stop_names_the_streamed_rows(root, tmp_path, monkeypatch):
    real_margin, calls = modeling_omninegclip.text_margin_loss, []

    def margin_that_fails_in_step_2(*args, **kwargs):
        calls.append(1)
        return real_margin(*args, **kwargs) + (float("inf") if len(calls) == 2 else 0.0)

    monkeypatch.setattr(modeling_omninegclip, "text_margin_loss", margin_that_fails_in_step_2)
    with pytest.raises(NonFiniteLossError) as error:
        train.main(stream_flags(root, tmp_path / "out", data=f"{root / 'other'}/shard-*.tar"))
    names = ", ".join(f"'{root / 'other'}/shard-*.tar' shard-00000.tar/{index:08d}" for index in (3, 4, 5))
    assert "training step 2" in str(error.value) and f"training batch of 3 streamed rows: {names}" in str(error.value)


def test_two_sources_are_mixed_at_their_probabilities_and_split_between_processes(root, processor):
    config = OmniNegCLIPConfig(output_dir="unused", image_column="jpg", report_to="none")
    named = {
        name: load_any_dataset(f"{root / name}/shard-*.tar", "train", streaming=True) for name in ("wds", "other")
    }

    def keys(probabilities, process=0, processes=1, rows=60):
        stream = mixed_stream(named, config.columns(), probabilities, 0, process, processes)
        return [(row["__omninegclip_source__"], row["__omninegclip_key__"]) for _, row in zip(range(rows), stream)]

    mostly_first = [source for source, _ in keys([0.9, 0.1])]
    assert 0.75 < mostly_first.count(0) / len(mostly_first) < 1 and 1 in mostly_first
    assert keys([0.9, 0.1]) == keys([0.9, 0.1])  # seeded
    equal = [source for source, _ in keys(None)]
    assert 0.35 < equal.count(0) / len(equal) < 0.65
    # Two processes: each reads its own shards of each source, together every row once.
    shares = [set(keys(None, process, 2, rows=SAMPLES + 12)) for process in (0, 1)]
    assert not shares[0] & shares[1]
    assert {key for share in shares for _, key in share} >= {f"shard-00000.tar/{i:08d}" for i in range(6)}


def test_webdataset_shards_load_as_a_prepared_dataset_too(root):
    files = f"{root / 'other'}/shard-00000.tar,{root / 'other'}/shard-00001.tar"
    dataset = load_any_dataset(files, "train")
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == 12
    assert {"jpg", "caption", "presence_negated", "absence_negated", "objects"} <= set(dataset.column_names)
    assert dataset[0]["caption"].startswith("a ") and dataset[0]["jpg"].size[0] >= 24
    assert load_any_dataset(f"{root / 'other'}/shard-*.tar", "train")["__key__"] == dataset["__key__"]
    with pytest.raises(UserError, match="no file matches the pattern"):
        load_any_dataset(f"{root / 'other'}/nothing-*.tar", "train")


def test_the_fixture_is_deterministic_and_its_corrupt_images_are_not_images(tmp_path):
    first = write_shards(tmp_path / "a", 10, 3, seed=5, corrupt=2, min_side=16, max_side=200)
    second = write_shards(tmp_path / "b", 10, 3, seed=5, corrupt=2, min_side=16, max_side=200)
    assert [(tmp_path / "a" / name).read_bytes() for name in first.shards] == [
        (tmp_path / "b" / name).read_bytes() for name in second.shards
    ]
    assert sum(len(keys) for keys in first.keys) == 10 and len(first.corrupt) == 2
    with tarfile.open(tmp_path / "a" / first.shards[0]) as tar:
        members = {member.name: tar.extractfile(member).read() for member in tar.getmembers()}
    sizes = set()
    for name, data in members.items():
        key = name.split(".")[0]
        if name.endswith(".json"):
            assert set(json.loads(data)) == {"caption", "presence_negated", "absence_negated", "objects"}
        elif key in first.corrupt:
            assert data == CORRUPT_BYTES
        else:
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "JPEG"
                sizes.add(image.size)
    assert len(sizes) > 1  # varied sizes
