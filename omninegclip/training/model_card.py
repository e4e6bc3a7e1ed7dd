"""The project's model card and Hub upload: `model_card.md` rendered with the Hub metadata that makes
the zero-shot-image-classification widget work, written beside a checkpoint's weights, and the folder
pushed. The work is done in `omninegclip.training.card` (one module per concern, see its docstring);
this module is the surface train.py, the Trainer and the built-in default import, and the command line.

Public surface:
- `write_model_card(folder, base_model=None, datasets=None, repo_id=None, widget_examples=None,
  license=None, base_model_id=None, dataset_ids=None, base_description=None, namespace=None,
  results=None, results_model=None, overwrite=False) -> Path`: the card of a checkpoint folder, as
  its README.md; `card_text(folder, ...same settings) -> str`: the same card, nothing written;
- `push_checkpoint(folder, repo_id, token=None, private=None, ..., **card settings) -> str`: create
  the repo, write the card naming it, upload the folder in one commit (less `UPLOAD_IGNORE`);
- `render_model_card(facts, ...)`, `CheckpointFacts`, `checkpoint_facts(folder, ...)`, `CARD_TAGS`;
- `WidgetExample`, `DEFAULT_WIDGET`, `load_widget_examples(path)`, `world_widget_examples()`;
- `public_text(text)`, `citations_markdown(benchmark_types)`;
- CLI (console script `omninegclip-card`):
  `python -m omninegclip.training.model_card CHECKPOINT [--push_to_hub REPO_ID] [--overwrite]`
  re-renders the card (for instance after `python -m eval` wrote `CHECKPOINT/eval/`) and optionally
  pushes. It refuses a folder without train.py's `training_provenance.json` and a README.md that the
  project did not write (unless `--overwrite`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omninegclip.common.cli import run_cli
from omninegclip.training.card.citations import citations_markdown
from omninegclip.training.card.facts import CheckpointFacts, checkpoint_facts
from omninegclip.training.card.hub import UPLOAD_IGNORE, push_checkpoint
from omninegclip.training.card.names import HUB_URL, public_text
from omninegclip.training.card.render import CARD_TAGS, render_model_card
from omninegclip.training.card.widget import DEFAULT_WIDGET, WidgetExample, load_widget_examples, world_widget_examples
from omninegclip.training.card.write import card_text, check_card_writable, write_model_card

__all__ = [
    "CARD_TAGS",
    "DEFAULT_WIDGET",
    "UPLOAD_IGNORE",
    "CheckpointFacts",
    "WidgetExample",
    "card_text",
    "checkpoint_facts",
    "citations_markdown",
    "cli",
    "load_widget_examples",
    "main",
    "public_text",
    "push_checkpoint",
    "render_model_card",
    "world_widget_examples",
    "write_model_card",
]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        description="(Re)write a checkpoint's model card; optionally push the checkpoint."
    )
    parser.add_argument("checkpoint", help="a checkpoint folder written by train.py")
    parser.add_argument(
        "--push_to_hub", metavar="REPO_ID", help="push the folder to this Hub repo (name or owner/name)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--widget_examples", help="JSON list of widget examples (default: the folder's own, else built-in)"
    )
    parser.add_argument(
        "--license", help="the card's license (a Hub license id; default: the one given before, else mit)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a README.md in the folder that this project did not write (a card of your own)",
    )
    args = parser.parse_args(argv)
    folder = Path(args.checkpoint)
    check_card_writable(folder, args.overwrite)  # before the widget file is read or a repo is created
    examples = load_widget_examples(args.widget_examples) if args.widget_examples else None
    settings = dict(widget_examples=examples, license=args.license, overwrite=args.overwrite)
    if args.push_to_hub:
        repo_id = push_checkpoint(folder, args.push_to_hub, private=args.private or None, **settings)
        print(f"pushed to {HUB_URL}/{repo_id}")
    else:
        print(f"wrote {write_model_card(folder, **settings)}")


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
