"""A dataset build killed midway (SIGKILL: no clean-up code runs) leaves the previous output as it
was and nothing partial at the target; the next build removes what the killed one left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data_builder
from omninegclip.building import writing
from omninegclip.common.cli import UserError

REPO = Path(__file__).resolve().parent.parent
SMALL_WORLD = ["--num_train", "4", "--num_validation", "1", "--num_test", "1", "--image_size", "16", "--no_progress"]

# Runs data_builder.main(argv) with a pause after the first split is on disk: the kill then lands
# while the build is writing its output (some splits written, others not).
PAUSE_WHILE_WRITING = """
import sys, time
from pathlib import Path
import datasets, data_builder
save = datasets.Dataset.save_to_disk
def save_then_pause(self, path, *args, **kwargs):
    save(self, path, *args, **kwargs)
    Path(sys.argv[1]).write_text(str(path))
    time.sleep(120)
datasets.Dataset.save_to_disk = save_then_pause
data_builder.main(sys.argv[2:])
"""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def leftovers(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.building-*"))


def wait_for(condition, process: subprocess.Popen) -> None:
    """Poll until `condition` holds; the build ending first fails the test. No deadline: a loaded
    machine only makes the wait longer."""
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the build ended (status {process.returncode}) before it could be killed: {process.stderr.read()}"
            )
        time.sleep(0.02)


def kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def start(*argv: str) -> subprocess.Popen:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def previous(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A finished build at tmp_path/world, and its bytes."""
    out = tmp_path / "world"
    data_builder.main(["shapes", "--out", str(out), "--seed", "1", *SMALL_WORLD])
    return out, snapshot(out)


def test_kill_while_writing_keeps_the_previous_output_and_the_next_build_cleans_up(tmp_path, previous):
    out, before = previous
    signal_file = tmp_path / "one_split_written"
    process = start(
        "-c",
        PAUSE_WHILE_WRITING,
        str(signal_file),
        "shapes",
        "--out",
        str(out),
        "--overwrite",
        "--seed",
        "2",
        *SMALL_WORLD,
    )
    try:
        wait_for(signal_file.exists, process)
        written = Path(signal_file.read_text())
        # Killed mid-write: one split is in the hidden staging folder, the others are not.
        assert written.is_dir() and written.parent.parent.name == f".world.building-{process.pid}"
        kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert snapshot(out) == before  # the previous output, byte for byte, and nothing partial at the target
    assert leftovers(out) == [tmp_path / f".world.building-{process.pid}"]
    data_builder.main(["shapes", "--out", str(out), "--overwrite", "--seed", "2", *SMALL_WORLD])
    assert leftovers(out) == []
    assert snapshot(out) != before and (out / writing.SUMMARY_FILE).is_file()


def test_kill_of_a_real_build_midway(tmp_path, previous):
    """No hooks: a build big enough to take seconds (a few thousand images), killed once it has started."""
    out, before = previous
    process = start(
        "data_builder.py",
        "shapes",
        "--out",
        str(out),
        "--overwrite",
        "--num_train",
        "3000",
        "--num_validation",
        "50",
        "--num_test",
        "50",
        "--image_size",
        "32",
        "--no_progress",
    )
    try:
        wait_for(lambda: any((folder / "scratch").is_dir() for folder in leftovers(out)), process)
        time.sleep(0.5)  # drawing the world: well before the end of the build
        kill(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert snapshot(out) == before
    assert [folder.name for folder in leftovers(out)] == [f".world.building-{process.pid}"]
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        data_builder.main(["shapes", "--out", str(out), *SMALL_WORLD])  # the output is still there
    assert leftovers(out) == []  # ... and the failed attempt already removed the leftovers


def test_a_build_killed_between_its_final_renames_gets_its_previous_output_back(tmp_path, previous):
    out, before = previous
    stale = tmp_path / ".world.building-999999999"  # no such process
    stale.mkdir()
    out.rename(stale / "previous")  # the state after `out -> previous`, before `staging -> out`
    (stale / "output").mkdir()
    assert writing.recover_interrupted_builds(out) == [stale]
    assert snapshot(out) == before and leftovers(out) == []


def test_leftovers_of_a_running_build_are_not_touched(tmp_path, previous):
    out, _ = previous
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = tmp_path / f".world.building-{sleeper.pid}"
        (running / "scratch").mkdir(parents=True)
        assert writing.recover_interrupted_builds(out) == []
        assert running.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert writing.recover_interrupted_builds(out) == [running] and not running.exists()
