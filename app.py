"""Omni-NegCLIP demo: one image, candidate captions with negations, the base CLIP and the fine-tuned
one scored side by side (a Gradio app; also the `app_file` of the Space that
`python -m pipeline.space` writes).

    python app.py [--model MODEL] [--base BASE] [--host HOST] [--port PORT]     # or: make demo

MODEL and BASE are checkpoint folders or Hub ids, loaded with `CLIPModel.from_pretrained` and
`CLIPProcessor.from_pretrained`. Each is taken from, in order: the flag; the environment
(`OMNINEGCLIP_MODEL`, `OMNINEGCLIP_BASE`); the `models` list of a Space card beside this file
(the README.md that `pipeline.space.write_space` writes: fine-tuned first, then base); the
built-in default's folders (`runs/default/omni-choice`, `runs/default/base`, made by `make default`).

Each model scores the captions as `pipeline("zero-shot-image-classification")` (and so the Hub
widget) does: every caption put into the template, a softmax over the candidates. The examples are
the ones the fine-tuned checkpoint carries for its widget (`widget/examples.json`, written by
`omninegclip.training.model_card`): for the default, two scenes of its image world.

A Space holds this file alone (no `omninegclip` package), so it reads that record itself and falls
back to a plain exception and exit when the project's CLI helpers are not importable.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODEL_ENV, BASE_ENV = "OMNINEGCLIP_MODEL", "OMNINEGCLIP_BASE"
WIDGET_RECORD = "widget/examples.json"

try:  # in the repository
    from omninegclip.common.cli import UserError, run_cli
    from pipeline.default import IMPROVED

    DEFAULT_MODEL, DEFAULT_BASE = f"runs/default/{IMPROVED.name}", "runs/default/base"
except ImportError:  # on a Space: app.py, README.md and requirements.txt only
    run_cli, DEFAULT_MODEL, DEFAULT_BASE = None, None, None

    class UserError(Exception):
        """Bad input or a bad flag."""


logger = logging.getLogger("omninegclip.app")


@dataclass
class Example:
    image: Path
    captions: list[str]
    title: str


def space_models(folder: Path = ROOT) -> list[str]:
    """The `models` of a Gradio Space card in `folder` (its README.md), else []."""
    readme = folder / "README.md"
    if not readme.is_file() or not readme.read_text().startswith("---"):  # no card metadata (the project's README)
        return []
    from huggingface_hub import SpaceCard

    data = SpaceCard.load(readme).data
    if data.get("sdk") != "gradio" or data.get("app_file") != Path(__file__).name:
        return []
    return list(data.get("models") or [])


def choose_models(model: str | None, base: str | None, folder: Path = ROOT) -> tuple[str, str]:
    """(fine-tuned, base): flag, else environment, else the Space card's models, else the default's folders."""
    listed = space_models(folder)
    chosen = []
    for value, env, index, default, flag in ((model, MODEL_ENV, 0, DEFAULT_MODEL, "--model"),
                                              (base, BASE_ENV, 1, DEFAULT_BASE, "--base")):
        value = value or os.environ.get(env) or (listed[index] if len(listed) > index else None)
        if value is None and default is not None:
            if not (ROOT / default).is_dir():
                raise UserError(f"{default} does not exist: run `make default` first (it trains the built-in default's "
                                f"models), or name models with --model/--base or {MODEL_ENV}/{BASE_ENV}")
            value = str(ROOT / default)
        if value is None:
            raise UserError(f"no model given: pass {flag} or set {env}")
        chosen.append(value)
    return chosen[0], chosen[1]


def load_classifier(source: str, flag: str):
    """`pipeline("zero-shot-image-classification")` on a plain CLIP checkpoint (folder or Hub id)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor, pipeline

    try:
        model = CLIPModel.from_pretrained(source).eval()
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{flag} {source}: not a CLIP checkpoint folder or a reachable Hub model ({reason})") from None
    return pipeline("zero-shot-image-classification", model=model, tokenizer=processor.tokenizer,
                    image_processor=processor.image_processor, device="cuda" if torch.cuda.is_available() else "cpu")


def default_template() -> str:
    """The pipeline's own caption template (the Hub widget's too)."""
    from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

    return inspect.signature(ZeroShotImageClassificationPipeline.preprocess).parameters["hypothesis_template"].default


def _checkpoint_file(source: str, name: str) -> Path | None:
    """`name` inside a checkpoint folder, or downloaded from its Hub repo; None where it has none."""
    if Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(source, name))
    except (OSError, EntryNotFoundError, ValueError):
        return None


def widget_examples(source: str) -> list[Example]:
    """The widget examples a checkpoint carries (`widget/examples.json`: image paths relative to the
    checkpoint, or URLs). Examples whose image is a URL or missing are left out, with a warning."""
    record = _checkpoint_file(source, WIDGET_RECORD)
    if record is None:
        logger.warning("%s carries no %s: no examples preloaded", source, WIDGET_RECORD)
        return []
    examples, left_out = [], []
    for entry in json.loads(record.read_text()):
        image = None if entry["image"].startswith(("http://", "https://")) else _checkpoint_file(source, entry["image"])
        if image is None:
            left_out.append(entry["image"])
            continue
        examples.append(Example(image, list(entry["candidate_labels"]), entry["title"]))
    if left_out:
        logger.warning("%s: %d widget example(s) left out (image is a URL or missing): %s", record, len(left_out), left_out)
    return examples


def parse_captions(text: str) -> list[str]:
    """One caption a line; blank lines ignored. At least two, no repeats."""
    captions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(captions) < 2:
        raise ValueError(f"type at least two candidate captions, one per line (got {len(captions)})")
    repeated = sorted({caption for caption in captions if captions.count(caption) > 1})
    if repeated:
        raise ValueError(f"each caption once, please: repeated {repeated}")
    return captions


def score(classifier, image, captions: list[str], template: str) -> dict[str, float]:
    """{caption: probability}, softmax over the candidates, as the pipeline computes it."""
    return {row["label"]: row["score"] for row in classifier(image, candidate_labels=captions, hypothesis_template=template)}


def shown_name(source: str) -> str:
    """A model as the page names it: a Hub id as is, a folder relative to the working directory
    when it lies under it, else by its own name (no machine-specific paths on the page)."""
    path = Path(source)
    if not path.is_dir():
        return source
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return f".../{path.resolve().name}"


def build_demo(model: str, base: str):
    """The Gradio app on two checkpoints (folders or Hub ids): returns (blocks, folders the examples live in)."""
    import gradio as gr

    classifiers = {"base": load_classifier(base, "--base"), "model": load_classifier(model, "--model")}
    examples = widget_examples(model)
    template_default = default_template()

    def run(image, text, template):
        if image is None:
            raise gr.Error("Upload an image first (or pick an example below).")
        try:
            captions = parse_captions(text)
        except ValueError as error:
            raise gr.Error(str(error).capitalize()) from None
        if "{}" not in template:
            raise gr.Error("The template must contain {} where the caption goes (use {} alone for the captions as typed).")
        return score(classifiers["base"], image, captions, template), score(classifiers["model"], image, captions, template)

    with gr.Blocks(title="Omni-NegCLIP demo") as demo:
        gr.Markdown(
            "# Omni-NegCLIP: does CLIP understand *no*?\n"
            "Upload an image and type candidate captions with negations, one per line. Both models score every "
            "caption as `pipeline(\"zero-shot-image-classification\")` and the Hub widget do (softmax over the "
            f"candidates).\n\n**Base:** `{shown_name(base)}` · **Fine-tuned with Omni-NegCLIP:** `{shown_name(model)}`"
        )
        with gr.Row():
            image = gr.Image(type="pil", label="Image", elem_id="image", height=320)
            with gr.Column():
                captions = gr.Textbox(lines=5, label="Candidate captions, one per line", elem_id="captions",
                                      placeholder="a red circle and no square\na red circle and no star")
                template = gr.Textbox(value=template_default, label="Template ({} is the caption; this default is the "
                                      "pipeline's and the Hub widget's)", elem_id="template")
                submit = gr.Button("Score", variant="primary", elem_id="submit")
        with gr.Row():
            base_scores = gr.Label(label="Base CLIP", elem_id="base-scores")
            model_scores = gr.Label(label="Fine-tuned (Omni-NegCLIP)", elem_id="model-scores")
        if examples:
            gr.Examples(examples=[[str(example.image), "\n".join(example.captions)] for example in examples],
                        inputs=[image, captions], example_labels=[example.title for example in examples],
                        label="The fine-tuned model's widget examples")
        submit.click(run, [image, captions, template], [base_scores, model_scores])
    return demo, sorted({str(example.image.parent) for example in examples})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help=f"fine-tuned checkpoint, folder or Hub id (env {MODEL_ENV}; default {DEFAULT_MODEL})")
    parser.add_argument("--base", help=f"base checkpoint, folder or Hub id (env {BASE_ENV}; default {DEFAULT_BASE})")
    parser.add_argument("--host", help="address to serve on (default: gradio's, 127.0.0.1 or GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port to serve on (default: gradio's, 7860 or GRADIO_SERVER_PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, base = choose_models(args.model, args.base)
    demo, example_folders = build_demo(model, base)
    demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False, allowed_paths=example_folders)


if __name__ == "__main__":
    if run_cli is not None:
        run_cli(main)
    else:
        main(sys.argv[1:])
