"""What data_builder.py reads, per source subcommand: its flags checked and turned into
`BuildOptions` (`build_options`), the source read by its reader (`read_source`), the offline image
world built (`build_shapes`), the LLM rewriter loaded (`load_rewriter`), and the flags that shape
the data as the summary and the card show them (`shown_arguments`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets

from omninegclip.building.negation import BuildOptions, check_statement_rate
from omninegclip.building.rewrite import LLMRewriter
from omninegclip.building.sources import (
    ImageDownloads,
    Source,
    check_captions_per_image,
    check_negated_captions_per_row,
    read_captions_dataset,
    read_ccneg,
    read_coco,
    read_negationclip,
    read_negbench,
)
from omninegclip.common.cli import UserError


def build_options(args: argparse.Namespace) -> BuildOptions | None:
    """The options of a real source's build from its flags (None for the shapes world); every flag
    is checked here, before any work."""
    if args.source == "shapes":
        _check_shapes_arguments(args)
        return None
    options = BuildOptions(
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        max_rows=args.max_rows,
        absent_top_k=args.absent_top_k,
        max_image_pixels=args.max_image_pixels,
        progress=not args.no_progress,
        num_proc=args.num_proc,
        statement_rate=args.statement_rate,
        generate_presence=args.source in ("coco", "captions") or getattr(args, "synthesize_presence", False),
        generate_absence=args.source in ("coco", "captions") or getattr(args, "synthesize_absence", False),
    )
    if args.source in ("coco", "captions"):
        check_captions_per_image(args.captions_per_image)
    if args.source in ("captions", "negbench"):
        ImageDownloads(timeout=args.download_timeout, max_bytes=args.max_image_bytes)  # checks the two flags
    if args.source == "negbench":
        check_negated_captions_per_row(args.negated_captions_per_row)
    return options


def _check_shapes_arguments(args: argparse.Namespace) -> None:
    check_statement_rate(args.statement_rate)
    for flag in ("num_train", "num_validation", "num_test"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag} {getattr(args, flag)} must be at least 0")
    if not args.num_train + args.num_validation + args.num_test:
        raise UserError("--num_train, --num_validation and --num_test are all 0: nothing to build")
    if not 8 <= args.image_size <= 1024:
        raise UserError(f"--image_size {args.image_size} must be between 8 and 1024 pixels")


_INPUT_FLAGS = ("captions", "instances", "images", "annotations", "dataset", "images_dir", "table")


def shown_arguments(args: argparse.Namespace) -> dict:
    """The settings that shape the data, for the summary and the card: not where the output goes, and
    local input files by name only (the card is public; `inputs` in the summary has the full paths)."""
    hidden = {"out", "overwrite", "push_to_hub", "private", "no_progress", "debug", "image_cache", "num_proc"}
    shown = {key: value for key, value in sorted(vars(args).items()) if key not in hidden and value is not None}
    for key in _INPUT_FLAGS:
        if key in shown and Path(shown[key]).exists():
            shown[key] = Path(shown[key]).name
    return shown


def _downloads(args: argparse.Namespace, scratch: Path) -> ImageDownloads:
    return ImageDownloads(
        Path(args.image_cache) if args.image_cache else scratch / "images",
        timeout=args.download_timeout,
        max_bytes=args.max_image_bytes,
    )


def read_source(args: argparse.Namespace, scratch: Path) -> Source:
    progress = not args.no_progress
    if args.source == "coco":
        return read_coco(args.captions, args.instances, args.images, args.captions_per_image, num_proc=args.num_proc)
    if args.source == "captions":
        return read_captions_dataset(
            args.dataset,
            loader=args.loader,
            split=args.split,
            image_column=args.image_column,
            caption_column=args.caption_column,
            image_id_column=args.image_id_column,
            images_dir=args.images_dir,
            captions_per_image=args.captions_per_image,
            cache_dir=str(scratch / "hf_cache"),
            progress=progress,
            downloads=_downloads(args, scratch),
        )
    if args.source == "ccneg":
        return read_ccneg(args.annotations, args.images, eval_size=args.eval_size)
    if args.source == "negationclip":
        return read_negationclip(args.annotations, args.images, instances=args.instances)
    if args.source == "negbench":
        return read_negbench(
            args.table, args.images, args.negated_captions_per_row, _downloads(args, scratch), progress=progress
        )
    raise UserError(f"unknown source {args.source!r}")


def build_shapes(args: argparse.Namespace) -> tuple[datasets.DatasetDict, dict]:
    try:
        from omninegclip.building.shapes import build_world
    except ImportError as error:
        raise UserError(
            f"the shapes world needs omninegclip.building.shapes.build_world, which cannot be imported ({error})"
        ) from None
    world = build_world(
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        seed=args.seed,
        image_size=args.image_size,
        progress=not args.no_progress,
        statement_rate=args.statement_rate,
    )
    scenes = args.num_train + args.num_validation + args.num_test  # the statement rows come on top
    return world, {"source": "shapes", "inputs": [], "rows_in": scenes, "skips": {}}


def _check_causal_lm_folder(path: Path) -> None:
    """A local --rewriter_model folder must hold a text-generation (causal LM) model, not, say, a CLIP checkpoint."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = path / "config.json"
    if not config.is_file():
        raise UserError(
            f"--rewriter_model {str(path)!r}: holds no config.json (expected a text-generation model folder)"
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise UserError(f"--rewriter_model {str(path)!r}: {config.name} is not a JSON object") from None
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(
            f"--rewriter_model {str(path)!r}: its config.json has model_type {model_type!r}, which is not a "
            "text-generation (causal language) model"
        )


def load_rewriter(model_id: str) -> LLMRewriter:
    path = Path(model_id).expanduser()
    if not path.exists() and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        raise UserError(
            f"--rewriter_model {model_id!r}: no such folder (expected a text-generation model folder or a Hub id)"
        )
    if path.is_dir():
        _check_causal_lm_folder(path)
    try:
        return LLMRewriter.from_pretrained(model_id)
    except (
        Exception
    ) as error:  # transformers' many ways to fail: no such folder or repo, not a text-generation model, offline
        detail = " ".join(str(error).split()) or type(error).__name__
        raise UserError(
            f"--rewriter_model {model_id!r}: could not load a text-generation model ({detail[:300]})"
        ) from None
