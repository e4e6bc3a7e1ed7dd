"""Focused checks behind the bad-input matrix rows of issue 14 (runs that would give a wrong artifact
silently): the arithmetic of the zero-step refusal under several processes, the output-folder lock,
image modes converted by content, and the other cases a CLI row cannot reach cheaply."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import train
from omninegclip.common.cli import UserError
from omninegclip.training import saving
from omninegclip.training import trainer as trainer_module
from omninegclip.training.checkpoints import PROVENANCE_FILE, TRAINER_STATE_FILE, check_output_and_resume
from omninegclip.training.trainer import check_training_steps


def _trainer(
    rows: int,
    per_device: int,
    processes: int = 1,
    accumulation: int = 1,
    drop_last: bool = True,
    max_steps: int = -1,
    epochs: float = 1.0,
):
    args = SimpleNamespace(
        world_size=processes,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=per_device,
        dataloader_drop_last=drop_last,
        max_steps=max_steps,
        num_train_epochs=epochs,
    )
    return SimpleNamespace(args=args, train_dataset=range(rows), _get_train_sampler=lambda: range(rows))


def test_zero_steps_under_several_processes_names_rows_global_batch_and_forced_drop_last():
    with pytest.raises(UserError) as error:
        check_training_steps(_trainer(rows=20, per_device=16, processes=2, accumulation=2))
    message = str(error.value)
    assert (
        "20 training rows, a global batch of 32 rows per forward pass (--per_device_train_batch_size 16 x 2 "
        "process(es))" in message
    )
    assert "64 per optimiser step (x --gradient_accumulation_steps 2)" in message
    assert (
        "--dataloader_drop_last (forced: several processes)" in message
        and "--per_device_train_batch_size <= 10" in message
    )


def test_steps_counted_like_the_trainer():
    assert check_training_steps(_trainer(rows=20, per_device=8, processes=2, epochs=3)) == 3  # one batch per epoch
    assert (
        check_training_steps(_trainer(rows=20, per_device=4, drop_last=False, accumulation=2, epochs=1)) == 3
    )  # 5 batches
    assert check_training_steps(_trainer(rows=20, per_device=64, drop_last=False, max_steps=7)) == 7  # one short batch
    with pytest.raises(UserError, match="--num_train_epochs 0.0"):
        check_training_steps(_trainer(rows=20, per_device=4, epochs=0.0))


def test_read_only_output_dir_is_refused_before_any_work(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from omninegclip.common.outputs import OutputLock

    real_write = Path.write_bytes

    def read_only(self, data):
        if self.parent == tmp_path / "mount":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(self, data)

    (tmp_path / "mount").mkdir()
    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(
        UserError, match=r"--output_dir '.*mount' is not writable \(Read-only file system\); nothing was done"
    ):
        OutputLock(tmp_path / "mount", "--output_dir").acquire()
    assert list((tmp_path / "mount").iterdir()) == []


def test_lock_is_released_after_the_run_and_a_second_holder_is_refused(tmp_path):
    from omninegclip.common.outputs import LOCK_FILE, OutputLock

    with OutputLock(tmp_path, "--output_dir"):
        assert (tmp_path / LOCK_FILE).is_file()
        with pytest.raises(UserError, match=rf"is in use by another run \(pid {__import__('os').getpid()}, lock file"):
            OutputLock(tmp_path, "--output_dir").acquire()
    assert not (tmp_path / LOCK_FILE).exists()


def test_resuming_into_its_own_non_empty_folder_is_allowed(tmp_path):
    from transformers import TrainingArguments

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / TRAINER_STATE_FILE).write_text("{}")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, resume_from_checkpoint="latest")
    assert check_output_and_resume(args) == str(tmp_path / "checkpoint-2")
    args.resume_from_checkpoint = str(tmp_path.parent)  # a checkpoint elsewhere would mix two runs in this folder
    with pytest.raises(UserError, match="is not empty"):
        check_output_and_resume(args)
    args.resume_from_checkpoint = None
    with pytest.raises(
        UserError,
        match="does not resume a checkpoint of it: pass --resume_from_checkpoint latest to continue the run saved "
        "there, --overwrite_output_dir",
    ):
        check_output_and_resume(args)


# ---------------------------------------------------------------------------------------- image modes


def gradient_16_bit_png() -> bytes:
    """A 256 x 4 16-bit grayscale PNG (mode I;16), levels 0..63750 rising left to right."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 63750, 256), (4, 1)).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _grey_row(image) -> list[int]:
    import numpy as np

    pixels = np.asarray(image)
    assert (
        image.mode == "RGB" and (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    )
    return pixels[0, :, 0].tolist()


def test_16_bit_grayscale_keeps_its_levels_and_their_order():
    from omninegclip.common.safe_load import open_rgb_image

    row = _grey_row(open_rgb_image(gradient_16_bit_png()))
    assert len(set(row)) >= 200 and row == sorted(row)
    assert row[0] == 0 and row[-1] == round(63750 / 257)  # scaled by bit depth, not clipped to white


@pytest.mark.parametrize(
    "mode, values, expected_first, expected_last",
    [
        ("I", [-1000, 1000], 0, 255),  # a signed range: scaled by its actual range
        ("I", [0, 200], 0, 200),  # 8-bit data in a 32-bit container: kept
        ("F", [0.0, 1.0], 0, 255),  # floats in 0..1
        ("F", [-5.0, 20.0], 0, 255),  # floats of any other range: by their range
    ],
)
def test_wide_grey_modes_are_scaled_by_content(mode, values, expected_first, expected_last):
    import numpy as np
    from PIL import Image

    from omninegclip.common.safe_load import to_rgb

    dtype = np.int32 if mode == "I" else np.float32
    row = _grey_row(to_rgb(Image.fromarray(np.tile(np.linspace(*values, 64), (2, 1)).astype(dtype), mode=mode)))
    assert row == sorted(row) and len(set(row)) >= 50
    assert (row[0], row[-1]) == (expected_first, expected_last)


def test_transparency_is_composited_onto_white_and_cmyk_keeps_its_colour():
    from PIL import Image

    from omninegclip.common.safe_load import to_rgb

    rgba = Image.new("RGBA", (2, 1), (200, 30, 30, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent (black underneath)
    assert [to_rgb(rgba).getpixel((x, 0)) for x in range(rgba.width)] == [(200, 30, 30), (255, 255, 255)]
    la = Image.new("LA", (1, 1), (10, 0))
    assert [to_rgb(la).getpixel((x, 0)) for x in range(la.width)] == [(255, 255, 255)]
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert [to_rgb(palette).getpixel((x, 0)) for x in range(palette.width)] == [(255, 255, 255), (250, 10, 10)]
    cyan = to_rgb(Image.new("CMYK", (1, 1), (255, 0, 0, 0))).getpixel((0, 0))
    assert cyan == (0, 255, 255)


# ---------------------------------------------------------------------------------------- checkpoints


def test_eval_checks_every_model_before_evaluating_any(tmp_path, processor, monkeypatch):
    import shutil

    from train_helpers import save_tiny_clip

    import eval.runner as runner

    good = save_tiny_clip(tmp_path / "good", processor)
    bare = tmp_path / "bare"
    shutil.copytree(good, bare)
    for path in bare.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            path.unlink()
    (tmp_path / "x.png").write_bytes(gradient_16_bit_png())
    csv = tmp_path / "mcq.csv"
    csv.write_text(
        "image_path,correct_answer,caption_0,caption_1,caption_2,caption_3,correct_answer_template\n"
        f"{tmp_path / 'x.png'},0,a dog,no dog,a cat,no cat,negation\n"
    )
    evaluated = []
    monkeypatch.setattr(runner, "evaluate_tasks", lambda *args, **kwargs: evaluated.append(args) or {})
    with pytest.raises(UserError, match="bare: cannot load the CLIP weights and processor"):
        runner.run_evaluation(
            [str(good), str(bare)], ["negbench_mcq"], {"negbench_mcq": str(csv)}, tmp_path / "out", progress=False
        )
    assert evaluated == [] and not any((tmp_path / "out").iterdir())  # checked writable, nothing written


# ---------------------------------------------------------------------------------------- Ctrl-C, full disk


def test_ctrl_c_in_train_exits_130_saying_what_was_kept_and_releases_the_lock(
    tmp_path, processor, monkeypatch, capsys, caplog
):
    from train_helpers import color_rows, invoke_cli, save_dataset, save_tiny_clip, train_flags

    from omninegclip.common.outputs import LOCK_FILE

    out = tmp_path / "run"

    def interrupted(*args):
        (out / "checkpoint-2").mkdir()
        (out / "checkpoint-2" / TRAINER_STATE_FILE).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_and_save", interrupted)
    flags = train_flags(
        save_tiny_clip(tmp_path / "clip", processor), save_dataset(tmp_path / "data", color_rows(4)), out
    )
    code, output = invoke_cli("train", flags, capsys, caplog)
    assert code == 130 and "Traceback" not in output
    assert (
        f"interrupted: the 1 complete checkpoint-* folder(s) in {out} are kept (newest: checkpoint-2); "
        "continue with the same flags plus --resume_from_checkpoint latest"
    ) in output
    assert not (out / LOCK_FILE).exists()


def test_ctrl_c_in_data_builder_and_eval_exits_130_with_one_line(monkeypatch, capsys, caplog, tmp_path):
    from train_helpers import invoke_cli

    import data_builder
    import eval.runner

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_builder, "build_shapes", interrupt)
    code, output = invoke_cli(
        "data_builder", ["shapes", "--out", str(tmp_path / "built"), "--no_progress"], capsys, caplog
    )
    assert code == 130 and output.strip() == f"interrupted: {data_builder.INTERRUPTED_HINT}"
    assert not (tmp_path / "built").exists()
    monkeypatch.setattr(eval.runner, "run_evaluation", interrupt)
    code, output = invoke_cli(
        "eval.__main__", ["some/model", "--tasks", "negbench_mcq", "--out", str(tmp_path / "o")], capsys, caplog
    )
    assert code == 130 and output.strip().startswith("interrupted: nothing was written to --out")


def test_eval_results_on_a_full_disk_leave_the_previous_files(tmp_path, monkeypatch):
    import errno

    import eval.runner as runner

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')

    def full_disk(results, folder):
        (folder).mkdir(parents=True)
        (folder / "results.json").write_text('{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "results.png"))

    monkeypatch.setattr(runner, "write_outputs", full_disk)
    with pytest.raises(
        UserError,
        match=r"could not write the results \(.*results.png: No space left on device\); the files there before",
    ):
        runner.write_outputs_atomically({}, out)
    assert [path.name for path in out.iterdir()] == ["results.json"] and (
        out / "results.json"
    ).read_text() == '{"old": true}'


def test_an_os_error_is_one_line_naming_the_path(capsys):
    import errno

    from omninegclip.common.cli import run_cli

    def main(argv):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/model.safetensors")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: /mnt/ro/model.safetensors: Read-only file system (check the disk's free space"
    )


# ---------------------------------------------------------------------------------------- CC-Neg .pt with NumPy values


def test_a_torch_file_with_numpy_values_loads_and_code_still_cannot_run(tmp_path):
    import numpy as np
    import torch
    from test_bad_input import Evil

    from omninegclip.common.safe_load import load_torch_file

    genuine = {
        "image_paths": ["a.jpg"],
        "annotations": [
            {
                "caption": "a dog",
                "negative": "no dog",
                "ids": np.arange(3, dtype=np.int64),
                "score": np.float32(0.5),
                "index": np.int64(3),
                "name": np.str_("x"),
            }
        ],
    }
    torch.save(genuine, tmp_path / "numpy.pt")
    loaded = load_torch_file(tmp_path / "numpy.pt")
    row = loaded["annotations"][0]
    assert (
        row["ids"].tolist() == [0, 1, 2]
        and row["score"] == np.float32(0.5)
        and row["index"] == 3
        and row["name"] == "x"
    )
    marker = tmp_path / "PWNED"
    hidden = np.empty(1, dtype=object)
    hidden[0] = Evil(marker)  # code inside an object array: the array is allowed, its contents are not
    torch.save({"annotations": hidden}, tmp_path / "evil_numpy.pt")
    with pytest.raises(UserError, match="nothing in it was run"):  # object arrays are not allowlisted at all
        load_torch_file(tmp_path / "evil_numpy.pt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- NegBench ties


def test_ties_are_reported_by_both_rules():
    import torch

    from omninegclip.common.scoring import choice_argmax_correct, choice_correct

    anchors = torch.tensor([[1.0, 0.0]] * 3)
    same, other = [1.0, 0.0], [0.0, 1.0]
    options = torch.tensor(
        [[same, same], [same, same], [same, other]]
    )  # tie (answer first), tie (answer second), clear
    mask = torch.ones(3, 2, dtype=torch.bool)
    answers = torch.tensor([0, 1, 0])
    assert choice_correct(anchors, options, mask, answers).tolist() == [
        False,
        False,
        True,
    ]  # ties count against the model
    assert choice_argmax_correct(anchors, options, mask, answers).tolist() == [
        True,
        False,
        True,
    ]  # NegBench: first of the tied wins


def test_a_failed_final_save_leaves_no_loadable_half_model(tmp_path, processor, monkeypatch, capsys, caplog):
    import errno

    from train_helpers import color_rows, invoke_cli, save_dataset, save_tiny_clip, train_flags

    real_write = trainer_module.write_provenance  # the final folder's record is written with its card

    def full_disk(folder, record):
        if folder.name == saving.FINAL_STAGING:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / PROVENANCE_FILE))
        return real_write(folder, record)

    monkeypatch.setattr(trainer_module, "write_provenance", full_disk)
    out = tmp_path / "run"
    flags = train_flags(
        save_tiny_clip(tmp_path / "clip", processor), save_dataset(tmp_path / "data", color_rows(8)), out
    )
    code, output = invoke_cli("train", flags, capsys, caplog)
    assert (
        code == 2
        and "Traceback" not in output
        and "the disk filled up while saving the final model (it needs about" in output
    )
    assert (
        sorted(path.name for path in out.iterdir()) == []
    )  # no config.json or weights of a half-saved model, no staging left
    monkeypatch.setattr(trainer_module, "write_provenance", real_write)
    code, output = invoke_cli(
        "train", flags, capsys, caplog
    )  # the same command again: the folder is empty, so it runs
    assert code == 0 and {"config.json", "model.safetensors", "README.md"} <= {path.name for path in out.iterdir()}
    assert not (out / saving.FINAL_STAGING).exists()
