"""Files a user reads before running anything: the LICENSE the cards name, and the commands in the
config files' comments (each must parse with the real command-line parser and launch its own file)."""

from __future__ import annotations

import shlex
from dataclasses import fields
from pathlib import Path

import pytest

import data_builder
import train
from omninegclip import OmniNegCLIPConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_license_is_the_mit_license_the_cards_name():
    from omninegclip.building.cards import GENERATED_DATA_LICENSE

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert GENERATED_DATA_LICENSE == "mit"
    assert next(field for field in fields(OmniNegCLIPConfig) if field.name == "license").default == "mit"


def _commented_commands(path: Path) -> list[list[str]]:
    """The shell commands in a config file's leading comment, continuation lines joined."""
    lines, joined = [], ""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        joined = f"{joined} {text}".strip() if joined else text
        if joined.endswith("\\"):
            joined = joined[:-1].strip()
            continue
        lines.append(joined)
        joined = ""
    return [shlex.split(line) for line in lines if line.startswith(("python ", "accelerate "))]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_config_comments_run_real_commands_on_their_own_file(config):
    commands = _commented_commands(config)
    assert commands, f"{config.name}: no command in its comment"
    launches = [command for command in commands if "train.py" in command]
    assert launches and all(command[command.index("train.py") + 1] == f"configs/{config.name}" for command in launches)
    for command in commands:
        if "data_builder.py" in command:
            data_builder._parser().parse_args(
                command[command.index("data_builder.py") + 1 :]
            )  # exits 2 on an unknown flag
    train.parse_args([str(config), "--bf16", "false"])  # the file holds only real flags (bf16 needs a GPU here)
