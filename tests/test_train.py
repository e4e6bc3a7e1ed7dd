"""train.py end to end on a tiny CLIP and small in-test datasets: what trains and what does not,
the logit-scale clamp, the plain-CLIP checkpoint, the loss going down, gradient accumulation,
the accelerate launcher and config files, mixing two datasets, and errors on bad input."""

from __future__ import annotations

import json
import sys

import datasets
import pytest
import torch
from conftest import TINY_TEXT_LAYERS
from huggingface_hub import ModelCard
from PIL import Image
from train_helpers import (
    capture_trainers,
    color_rows,
    python_module,
    run_command,
    save_dataset,
    save_tiny_clip,
    train_flags,
    weights,
)  # noqa: F401  (single_thread: an autouse fixture)
from transformers import CLIPConfig, CLIPModel, TrainerCallback, pipeline

import train
from modeling_omninegclip import LOGIT_SCALE_MAX, LOSS_TERM_NAMES, OmniNegCLIPModel, TrainableConfig, apply_trainable
from omninegclip.common.cli import run_cli
from omninegclip.training.callbacks import unwrap
from omninegclip.training.data import OmniNegCollator


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, processor):
    """One tiny CLIP folder and one dataset (train 32 rows, validation 16) for the whole module."""
    root = tmp_path_factory.mktemp("train")
    model = save_tiny_clip(root / "clip", processor)
    data = save_dataset(root / "data", color_rows(32), color_rows(16, offset=32))
    return root, model, data


def text_block(name: str) -> int | None:
    prefix = "text_model.encoder.layers."
    return int(name[len(prefix) :].split(".")[0]) if name.startswith(prefix) else None


EXTRAS = {
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.final_layer_norm.weight",
    "text_model.final_layer_norm.bias",
    "text_projection.weight",
    "logit_scale",
}


# ---- what trains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, blocks, extras",
    [
        ({"front_blocks": 2}, {0, 1}, EXTRAS),
        ({"text_preset": "back"}, {3, 4}, EXTRAS),  # 5 blocks: back third = round(10/3)=3 .. 4
        (
            {
                "text_blocks": "1,3",
                "train_token_embedding": "false",
                "train_logit_scale": "false",
                "cache_image_embeddings": "false",
            },
            {1, 3},
            EXTRAS - {"text_model.embeddings.token_embedding.weight", "logit_scale"},
        ),
    ],
    ids=["front-2", "preset-back", "blocks-1,3-no-embedding-no-scale-live-images"],
)
def test_exactly_the_selected_parameters_change(workspace, tmp_path, flags, blocks, extras):
    root, model_dir, data = workspace
    out = tmp_path / "out"
    overrides = {"front_blocks": None, **flags, "learning_rate": 1e-2}
    train.main(train_flags(model_dir, data, out, **overrides))
    before, after = weights(model_dir), weights(out)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    expected = {name for name in before if text_block(name) in blocks} | extras
    assert changed == expected
    assert not any(name.startswith(("vision_model.", "visual_projection.")) for name in changed)
    settings = json.loads((out / "config.json").read_text())["omninegclip"]
    assert settings["trainable_text_blocks"] == sorted(blocks)


class LogitScaleRecorder(TrainerCallback):
    def __init__(self):
        self.values = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.values.append(float(unwrap(model).logit_scale.detach()))


def test_logit_scale_is_clamped_after_every_optimizer_step(workspace, tmp_path, processor, monkeypatch):
    root, _, data = workspace
    model_dir = save_tiny_clip(tmp_path / "hot-clip", processor, logit_scale=5.0)  # exp(5) = 148 > 100
    recorder = LogitScaleRecorder()
    capture_trainers(monkeypatch, recorder)
    train.main(train_flags(model_dir, data, tmp_path / "out", max_steps=4, learning_rate=1e-2))
    assert len(recorder.values) == 4
    # Without the clamp, one AdamW step of 1e-2 would leave it near 5.0.
    assert recorder.values[0] == pytest.approx(LOGIT_SCALE_MAX, abs=1e-6)
    assert all(value <= LOGIT_SCALE_MAX + 1e-6 for value in recorder.values)
    assert float(weights(tmp_path / "out")["logit_scale"]) <= LOGIT_SCALE_MAX + 1e-6


# ---- the checkpoint --------------------------------------------------------------------------------


def probe_inputs(processor):
    images = [Image.new("RGB", (32, 32), color) for color in ((220, 30, 30), (40, 60, 220))]
    texts = ["a red square", "a picture with no red square", "a blue square with no green circle"]
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def test_checkpoint_is_plain_clip_and_reproduces_the_trained_model(workspace, tmp_path, processor, monkeypatch):
    _, model_dir, data = workspace
    out = tmp_path / "out"
    trainers = capture_trainers(monkeypatch)
    train.main(train_flags(model_dir, data, out, max_steps=2, learning_rate=1e-2))

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "clip" and config["architectures"] == ["CLIPModel"]
    loaded = CLIPModel.from_pretrained(out).eval()
    reference_keys = set(CLIPModel(CLIPConfig.from_pretrained(out)).state_dict())
    assert set(loaded.state_dict()) == reference_keys
    assert set(weights(out)) == set(weights(model_dir))

    trained = trainers[0].model.eval()
    inputs = probe_inputs(processor)
    with torch.no_grad():
        expected = trained(**inputs, return_loss=False).logits_per_image
        actual = loaded(**inputs).logits_per_image
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(actual, CLIPModel.from_pretrained(model_dir)(**inputs).logits_per_image)  # it did train

    labels = ["a red square", "a picture with no red square"]
    result = pipeline("zero-shot-image-classification", model=str(out))(
        Image.new("RGB", (32, 32), (220, 30, 30)), candidate_labels=labels
    )
    assert sorted(entry["label"] for entry in result) == sorted(labels)
    assert sum(entry["score"] for entry in result) == pytest.approx(1.0, abs=1e-4)

    settings = json.loads((out / "config.json").read_text())["omninegclip"]
    assert settings["trainable_text_blocks"] == [0, 1] and settings["loss"]["margin"] == 0.9
    record = json.loads((out / "training_provenance.json").read_text())
    assert record["seed"] == 0 and record["world_size"] == 1 and record["datasets"] == [str(data)]
    card = ModelCard.load(out / "README.md")  # no --widget_examples: the built-in negation examples
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert all(" no " in entry["candidate_labels"] for entry in card.data.to_dict()["widget"])
    assert "the image tower is the base model's" in card.text


# ---- memory and precision options ------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_weights_and_bf16_trains(workspace, tmp_path, monkeypatch):
    _, model_dir, data = workspace
    plain, checkpointed, bf16 = (tmp_path / name for name in ("plain", "checkpointed", "bf16"))
    train.main(train_flags(model_dir, data, plain, max_steps=2, learning_rate=1e-2))
    trainers = capture_trainers(monkeypatch)
    train.main(
        train_flags(model_dir, data, checkpointed, max_steps=2, learning_rate=1e-2, activation_checkpointing="true")
    )
    assert trainers[0].model.text_model.encoder.gradient_checkpointing  # the option reached the text blocks
    for name, tensor in weights(plain).items():  # recomputing activations changes nothing but memory
        torch.testing.assert_close(weights(checkpointed)[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    train.main(train_flags(model_dir, data, bf16, max_steps=2, learning_rate=1e-2, bf16="true", use_cpu="true"))
    trained, before = weights(bf16), weights(model_dir)
    assert all(torch.isfinite(tensor).all() for tensor in trained.values())
    assert (
        trained["text_model.encoder.layers.0.mlp.fc1.weight"].dtype == torch.float32
    )  # autocast: parameters stay fp32
    changed = {name for name in trained if not torch.equal(trained[name], before[name])}
    assert "text_model.encoder.layers.0.mlp.fc1.weight" in changed and not any(
        name.startswith("vision_model.") for name in changed
    )


# ---- learning ----------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_evaluates(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    rows = color_rows(16)
    data = save_dataset(tmp_path / "data", rows, rows)  # evaluate on what it trains on: it must fit it
    trainers = capture_trainers(monkeypatch)
    out = tmp_path / "out"
    train.main(
        train_flags(
            model_dir,
            data,
            out,
            max_steps=12,
            learning_rate=3e-3,
            per_device_train_batch_size=16,
            eval_strategy="steps",
            eval_steps=1000,
            eval_on_start="true",
        )
    )
    history = trainers[0].state.log_history
    eval_losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert len(eval_losses) >= 2 and eval_losses[-1] < eval_losses[0] - 0.1
    train_losses = [entry["loss"] for entry in history if "loss" in entry]
    assert sum(train_losses[-3:]) < sum(train_losses[:3])
    logged_terms = set().union(*(entry.keys() for entry in history if "loss" in entry))
    assert set(LOSS_TERM_NAMES) - {"loss", "loss_clip"} <= logged_terms  # every term of the objective is logged
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == pytest.approx(eval_losses[-1])


def _first_update(tmp_path, model_dir, data, monkeypatch, batch: int, accumulation: int):
    trainers = capture_trainers(monkeypatch)
    out = tmp_path / f"b{batch}-ga{accumulation}"
    train.main(
        train_flags(
            model_dir,
            data,
            out,
            max_steps=1,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.5,
            max_grad_norm=0,
            weight_decay=0,
            train_sampling_strategy="sequential",
        )
    )
    return trainers[-1]


def _expected_update(model_dir, trainer, chunks: list[range], lr: float) -> dict[str, torch.Tensor]:
    """The SGD update of the mean of the chunk losses, computed by hand from the same rows."""
    model = OmniNegCLIPModel.from_pretrained(model_dir)
    apply_trainable(model, TrainableConfig(front_blocks=2))
    model.train()
    dataset = trainer.train_dataset
    loss = sum(
        model(**_without_row_ids(trainer.data_collator([dataset[i] for i in chunk])), return_loss=True).loss
        for chunk in chunks
    ) / len(chunks)
    loss.backward()
    return {name: -lr * param.grad for name, param in model.named_parameters() if param.grad is not None}


def _without_row_ids(batch):
    batch.pop("row_ids")
    return batch


def test_gradient_accumulation_gives_the_mean_of_the_micro_batch_gradients(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    # Unbalanced masks: rows 0-3 carry 3 presence negations, rows 4-7 one; so the mean of the two
    # half-batch losses differs from the loss of the 8-row batch, and each run must match its own.
    rows = color_rows(8, presence=False, absence=2)
    for index in (0, 1, 2, 5):
        rows[index]["presence_negated"] = f"a picture with no {rows[index]['caption'][2:]}"
    data = save_dataset(tmp_path / "data", rows)
    initial = weights(model_dir)

    deltas = {}
    for batch, accumulation in ((4, 2), (8, 1)):
        trainer = _first_update(tmp_path, model_dir, data, monkeypatch, batch, accumulation)
        after = trainer.model.state_dict()
        chunks = [range(0, 4), range(4, 8)] if accumulation == 2 else [range(0, 8)]
        expected = _expected_update(model_dir, trainer, chunks, lr=0.5)
        assert expected.keys() >= {"text_model.encoder.layers.0.mlp.fc1.weight", "logit_scale"}
        for name, update in expected.items():
            torch.testing.assert_close(after[name] - initial[name], update, rtol=1e-4, atol=1e-6, msg=name)
        deltas[accumulation] = expected
    # The two settings are genuinely different objectives (contrastive over 4 vs 8 rows).
    gap = (deltas[2]["text_projection.weight"] - deltas[1]["text_projection.weight"]).abs().max()
    assert gap > 1e-3


# ---- launchers and config files ---------------------------------------------------------------------


def test_accelerate_launch_of_a_config_file_trains_like_the_flags_in_process(workspace, tmp_path):
    """`accelerate launch` (the shipped single-process config, on the CPU) of a YAML config file writes
    the same checkpoint as `main` given the same settings as flags: same seed, same weights."""
    import yaml

    _, model_dir, data = workspace
    with_flags = tmp_path / "flags"
    train.main(train_flags(model_dir, data, with_flags))

    with_file = tmp_path / "file"
    flags = train_flags(model_dir, data, with_file)
    values = {key[2:]: value for key, value in zip(flags[::2], flags[1::2])}
    # Typed YAML values where the flags were strings: both must parse to the same settings.
    values.update(
        max_steps=3,
        learning_rate=0.001,
        front_blocks=2,
        dataloader_pin_memory=False,
        seed=0,
        per_device_train_batch_size=8,
        report_to=["none"],
    )
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(values))
    launch = python_module("accelerate.commands.launch") + [
        "--config_file",
        "configs/accelerate/single_gpu.yaml",
        "--cpu",
        "--num_processes",
        "1",
    ]
    result = run_command(launch + ["train.py", config])
    assert result.returncode == 0, result.stderr[-3000:]

    first, second = weights(with_flags), weights(with_file)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["text_projection.weight"], weights(model_dir)["text_projection.weight"])
    assert json.loads((with_file / "training_provenance.json").read_text())["training_arguments"]["max_steps"] == 3


def test_json_config_with_overriding_flag(workspace, tmp_path):
    _, model_dir, data = workspace
    flags = train_flags(model_dir, data, tmp_path / "out")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({key[2:]: value for key, value in zip(flags[::2], flags[1::2])}))
    model_args, data_args, settings = train.parse_args(
        [str(config), "--max_steps", "5", "--train_logit_scale", "false"]
    )
    assert settings.max_steps == 5 and settings.learning_rate == 1e-3
    assert settings.front_blocks == 2 and settings.train_logit_scale is False
    assert model_args.model_name_or_path == str(model_dir) and data_args.dataset_name == str(data)


# ---- mixing two datasets --------------------------------------------------------------------------


def test_mixed_datasets_give_half_presence_half_absence_batches(tmp_path, processor, monkeypatch):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    presence = save_dataset(tmp_path / "presence", color_rows(12, presence=True, absence=False))
    absence = save_dataset(tmp_path / "absence", color_rows(20, presence=False, absence=True, offset=100))
    trainers = capture_trainers(monkeypatch)
    train.main(train_flags(model_dir, presence, tmp_path / "out", mix_dataset_name=absence, max_steps=2))
    trainer = trainers[0]
    assert len(trainer.train_dataset) == 40  # the 12 presence rows repeated to the absence rows' 20
    for epoch in (0, 1):
        loader = trainer.get_train_dataloader()
        loader.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert batch["presence_mask"].sum() == 4 and batch["absence_mask"].sum() == 4
            assert not (batch["presence_mask"] & batch["absence_mask"]).any()
            seen += batch["row_ids"].tolist()
        assert sorted(seen) == list(range(40))  # every row once per epoch
        if epoch == 0:
            first_order = seen
    assert seen != first_order  # reshuffled per epoch


def test_absence_affirmed_column_is_the_choice_terms_third_option(tmp_path, processor, monkeypatch, capsys):
    model_dir = save_tiny_clip(tmp_path / "clip", processor)
    rows = color_rows(8, presence=2, absence=True)
    for row in rows[:6]:  # the last two rows have no twin: their choice keeps two options (or none)
        row["absence_affirmed"] = row["absence_negated"].replace(" with no ", " with a ")
    for row in rows[6:]:
        row["absence_affirmed"] = None
    data = tmp_path / "data"
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).save_to_disk(str(data))
    trainers = capture_trainers(monkeypatch)
    flags = train_flags(
        model_dir, data, tmp_path / "out", max_steps=1, lambda_choice=1.0, absence_affirmed_column="absence_affirmed"
    )
    train.main(flags)
    batch = next(iter(trainers[0].get_train_dataloader()))
    assert batch["absence_affirmed_mask"].sum() == 6 and batch["absence_affirmed_input_ids"].shape[0] == 8
    model = trainers[0].model
    with torch.no_grad():
        with_twin = model(**{k: v for k, v in batch.items() if k != "row_ids"}).loss_choice
        without = model(
            **{k: v for k, v in batch.items() if k != "row_ids" and not k.startswith("absence_affirmed")}
        ).loss_choice
    assert with_twin > without  # more wrong options can only raise each row's choice loss
    # With the choice term off nothing reads the twins, so the collator leaves them out (the model
    # encodes what it is given).
    model.loss_config.lambda_choice = 0.0
    collator = trainers[0].data_collator
    off_batch = OmniNegCollator(collator.rows, caption_sets=model.loss_config.caption_sets_read())(
        [{"row_id": row, "packed_row": row} for row in range(8)]
    )
    assert not any(key.startswith("absence_affirmed") for key in off_batch) and "absence_mask" in off_batch
    with torch.no_grad():
        off = model(**{k: v for k, v in off_batch.items() if k != "row_ids"})
    assert off.absence_affirmed_embeds is None and off.loss_choice == 0
    # Named by its flag when the data lacks it.
    message = _error_of(
        train_flags(
            model_dir,
            save_dataset(tmp_path / "plain", color_rows(4)),
            tmp_path / "out2",
            absence_affirmed_column="absence_affirmed",
        ),
        capsys,
    )
    assert "'absence_affirmed'" in message and "--absence_affirmed_column" in message


# ---- bad input: one paragraph naming what is wrong, exit status 2, no traceback -------------------


def test_cli_missing_column(workspace, tmp_path):
    _, model_dir, data = workspace
    result = run_command(
        [sys.executable, "train.py", *train_flags(model_dir, data, tmp_path / "a"), "--caption_column", "text"]
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, result.stderr
    assert "'text'" in error[0] and "--caption_column" in error[0]
    assert "['image', 'caption', 'presence_negated', 'absence_negated']" in error[0]


def _error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_cli(train.main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err
    return message[0]


def _dataset_with(tmp_path, name, **column_values):
    rows = color_rows(4)
    table = {key: [row[key] for row in rows] for key in rows[0]} | column_values
    dataset = datasets.Dataset.from_dict(table)
    dataset = dataset.cast_column("image", datasets.Image()) if len(dataset) else dataset
    dataset.save_to_disk(str(tmp_path / name))
    return tmp_path / name


def test_bad_input_is_named(workspace, tmp_path, capsys, caplog):
    _, model_dir, data = workspace
    out = tmp_path / "out"

    message = _error_of(train_flags(model_dir, data, out, front_blocks=TINY_TEXT_LAYERS + 2), capsys)
    assert f"front_blocks={TINY_TEXT_LAYERS + 2}" in message and f"only {TINY_TEXT_LAYERS} blocks" in message

    # A negation that is not text is a counted skip of its row (the rule of omninegclip/common/skips.py),
    # named in the data line.
    bad_negation = _dataset_with(tmp_path, "bad", absence_negated=[None, None, ["a list"], ["another"]])
    with caplog.at_level("WARNING", logger="omninegclip.train"):
        run_cli(train.main, train_flags(model_dir, bad_negation, tmp_path / "out_bad"))
    assert (
        "kept 2 of 4 rows" in caplog.text
        and "skipped 2 (absence_negated_not_text: 2 [row 2, column 'absence_negated': list ['a list']; "
        "row 3, column 'absence_negated': list ['another']])"
        in caplog.text
    ), caplog.text

    empty = _dataset_with(tmp_path, "empty", image=[], caption=[], presence_negated=[], absence_negated=[])
    message = _error_of(train_flags(model_dir, empty, out), capsys)
    assert "empty" in message and str(empty) in message

    message = _error_of(train_flags(tmp_path / "no-such-model", data, out), capsys)
    assert "does not exist" in message and "no-such-model" in message
    message = _error_of(train_flags(model_dir, tmp_path / "no-such-data", out), capsys)
    assert "does not exist" in message and "no-such-data" in message

    not_clip = tmp_path / "bert"
    not_clip.mkdir()
    (not_clip / "config.json").write_text(json.dumps({"model_type": "bert"}))
    message = _error_of(train_flags(not_clip, data, out), capsys)
    assert "not a CLIP checkpoint" in message and "'bert'" in message
    message = _error_of(train_flags(tmp_path / "empty", data, out), capsys)  # a dataset folder, not a model
    assert "not a CLIP checkpoint" in message and "config.json" in message

    message = _error_of(train_flags(model_dir, data, out) + ["--front_blcoks", "2"], capsys)
    assert "unknown flag" in message and "--front_blcoks" in message
    message = _error_of(train_flags(model_dir, data, out, learning_rate="fast"), capsys)
    assert "--learning_rate" in message and "'fast'" in message
    message = _error_of(train_flags(model_dir, data, out, lora_target="everything"), capsys)
    assert "--lora_target" in message and "'everything'" in message
    message = _error_of([str(tmp_path / "missing.yaml")], capsys)
    assert "missing.yaml" in message and "does not exist" in message
