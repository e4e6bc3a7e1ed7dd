"""Command line: `python -m eval MODEL [MODEL ...] --tasks TASK[,TASK...] --out DIR [data flags]`.

Each MODEL is a Hub id or a local CLIP checkpoint folder. Examples:

    python -m eval openai/clip-vit-base-patch32 ./omninegclip-b32 --tasks ccneg,negbench_mcq \\
        --ccneg ccneg_dataset/ccneg_preprocessed.pt --ccneg_images ccneg_images/cc3m_subset_images_extracted_final \\
        --negbench_mcq data/images/COCO_val_mcq_llama3.1_rephrased.csv --out results/
    python -m eval runs/base runs/front --tasks world,layerwise --world data/world --out results/

Writes results.json, results.md, results.png and model_index.json (and layerwise.md/.png) to --out.
Bad input is one `error:` paragraph naming the file, row or flag (exit status 2); `--debug` or
OMNINEGCLIP_DEBUG=1 shows the traceback. Rows left out (empty captions, unreadable images, …) are
counted, with examples, in each task's notes in results.json and results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.tasks import DATA_FLAGS, TASKS
from omninegclip.common.cli import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    task_list = "\n".join(f"  {name:20s} {spec.description}" for name, spec in TASKS.items())
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Evaluate CLIP checkpoints side by side on negation and general benchmarks.",
        epilog=f"tasks:\n{task_list}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="Hub id or local folder of a CLIP checkpoint")
    parser.add_argument("--tasks", required=True, help="comma-separated task names (see the list below)")
    parser.add_argument(
        "--out", required=True, help="folder for results.json, results.md, results.png, model_index.json"
    )
    parser.add_argument("--model_names", help="comma-separated display names, one per MODEL (default: the ids)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per batch (texts: 4x); default 64")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--max_items", type=int, help="evaluate only the first N items of each task (quick runs)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for Python, NumPy and torch, recorded in results.json (default 0)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback behind an error message (or set OMNINEGCLIP_DEBUG=1)"
    )
    parser.add_argument(
        "--dataset_ids",
        metavar="KEY=HUB_ID[,KEY=HUB_ID]",
        help="the Hub ids the data are published under, e.g. world=you/omninegclip-world: the dataset.type "
        "of those tasks' model-index entries (default: a short name such as ccneg)",
    )
    data = parser.add_argument_group("data (each task names the ones it needs)")
    for key, help_text in DATA_FLAGS.items():
        data.add_argument(f"--{key}", help=help_text, metavar="SPLIT" if key.endswith("_split") else "PATH")
    return parser


def parse_dataset_ids(text: str | None) -> dict[str, str]:
    pairs = [part.strip() for part in (text or "").split(",") if part.strip()]
    bad = [part for part in pairs if part.count("=") != 1 or not all(part.split("="))]
    if bad:
        raise UserError(f"--dataset_ids: expected KEY=HUB_ID pairs separated by commas, got {bad}")
    return dict(part.split("=") for part in pairs)


INTERRUPTED_HINT = (
    "nothing was written to --out (results are written once every model is evaluated); run the same command again"
)


def main(argv: list[str]) -> None:
    from eval.runner import run_evaluation

    args = build_parser().parse_args(argv)
    results = run_evaluation(
        models=args.models,
        tasks=args.tasks.split(","),
        data={key: getattr(args, key) for key in DATA_FLAGS if getattr(args, key) is not None},
        out_dir=args.out,
        batch_size=args.batch_size,
        device=args.device,
        model_names=args.model_names.split(",") if args.model_names else None,
        max_items=args.max_items,
        progress=not args.no_progress,
        seed=args.seed,
        dataset_ids=parse_dataset_ids(args.dataset_ids),
    )
    from omninegclip.common.results import results_markdown

    print(results_markdown(results))
    written = [
        name
        for name in ("results.json", "results.md", "model_index.json", "results.png")
        if (Path(args.out) / name).is_file()
    ]
    print(f"written to {args.out}: {', '.join(written)}")


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
