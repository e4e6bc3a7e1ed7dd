"""Reading the flags: from the command line or a YAML/JSON file of flags (`parse_flags`,
`config_file_flags`) into the dataclasses (`OmniNegCLIPConfig` and `train.py`'s model and data
arguments), and `--report_to` trackers checked before anything slow (`check_report_to`). The
settings' own rules live in their `__post_init__` (omninegclip/training/config.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainingArguments

from omninegclip.common.cli import UserError
from omninegclip.common.safe_load import first_line

logger = logging.getLogger("omninegclip.train")

CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def _takes_one_value(action) -> bool:
    return action.nargs in (None, "?")


def _is_boolean(action) -> bool:
    return getattr(action.type, "__name__", "") == "string_to_bool" or action.nargs == 0


def config_file_flags(path: Path, parser=None) -> list[str]:
    """A YAML/JSON mapping of flag names to values, as command-line flags (so both go through the
    same parser): booleans as true/false, lists as several values, mappings as JSON, null skipped.
    With the `parser`, a list for a one-value flag is an error naming the key, and YAML's `no`/`yes`
    (read as booleans) stay the words for a flag that is not boolean (`save_strategy: no`)."""
    actions = {
        option: action
        for action in (parser._actions if parser is not None else [])
        for option in action.option_strings
    }
    import yaml

    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())  # JSON is YAML
    except yaml.YAMLError as error:
        raise UserError(f"config file {path} is not valid YAML/JSON: {error}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} must hold a mapping of flag names to values, got {type(values).__name__}")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        action = actions.get(f"--{key}")
        if isinstance(value, list) and action is not None and _takes_one_value(action):
            if len(value) != 1:
                raise UserError(f"config file {path}: key {key!r} holds a list ({value}), but --{key} takes one value")
            value = value[0]  # report_to: [none]
        flags.append(f"--{key}")
        if isinstance(value, bool) and action is not None and not _is_boolean(action):
            flags.append("yes" if value else "no")  # YAML 1.1 reads an unquoted no/yes/off/on as a boolean
        elif isinstance(value, bool):
            flags.append(str(value).lower())
        elif isinstance(value, list):
            flags.extend(str(item) for item in value)
        elif isinstance(value, dict):
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags


def parse_flags(parser, argv: list[str]) -> tuple[list, str]:
    """`parser` (an `HfArgumentParser`) on `argv`, or on one YAML/JSON file of flags followed by flags
    that override it: (the dataclasses, where the flags came from). A bad or unknown flag is a
    `UserError` naming where it came from, instead of argparse's usage dump and exit."""
    where = "command line"
    if argv and argv[0].endswith(CONFIG_FILE_SUFFIXES) and not argv[0].startswith("-"):
        where = f"config file {argv[0]} (or the flags after it)"
        argv = config_file_flags(Path(argv[0]), parser) + argv[1:]

    def refuse(message: str):
        raise UserError(f"bad flag in the {where}: {message}; `python train.py --help` lists the flags")

    parser.error = refuse
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as error:  # TrainingArguments validates itself with ValueError
        raise UserError(f"bad training arguments in the {where}: {' '.join(str(error).split())}") from None
    if unknown:
        raise UserError(f"unknown flag(s) in the {where}: {unknown}; `python train.py --help` lists the flags")
    return parsed, where


# What `--report_to NAME` needs installed (tensorboard and trackio come with requirements.txt).
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "trackio": "trackio",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "neptune": "neptune",
    "dvclive": "dvclive",
    "codecarbon": "codecarbon",
    "dagshub": "dagshub",
    "azure_ml": "azureml-core",
    "flyte": "flytekit",
}


def check_report_to(training_args: TrainingArguments) -> None:
    """Fail before anything slow on a `--report_to` tracker that is unknown or not installed (the
    Trainer would fail only after data preparation, with a traceback). Comma-separated names are
    split (`--report_to tensorboard,trackio` as `--report_to tensorboard trackio`)."""
    from transformers.integrations import get_reporting_integration_callbacks

    if isinstance(training_args.report_to, list):
        training_args.report_to = [
            name.strip() for entry in training_args.report_to for name in entry.split(",") if name.strip()
        ]
    try:
        callbacks = get_reporting_integration_callbacks(training_args.report_to)
    except ValueError as error:
        raise UserError(f"--report_to {','.join(training_args.report_to)}: {error}") from None
    for name, callback in zip(training_args.report_to, callbacks):
        try:
            callback()
        except (RuntimeError, ImportError) as error:
            package = TRACKER_PACKAGES.get(name, name)
            raise UserError(
                f"--report_to {name}: the {name} tracker is not installed ({first_line(error)}); install it with "
                f"`pip install {package}`, or pass --report_to none"
            ) from None
