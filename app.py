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
widget) does: every caption put into the template, a softmax over the candidates; a text longer than
the text encoder reads (CLIP's 77 tokens) is cut to its first 77 tokens, as `python -m eval` and
`train.py` do, and the page says which captions were. The examples are the ones the fine-tuned
checkpoint carries for its widget (`widget/examples.json`, written by
`omninegclip.training.model_card`): for the default, two scenes of its image world.

Bad input: a model that is not a CLIP checkpoint, or whose weights do not fit its config, is refused
at start with one error paragraph (the check `python -m eval` and `train.py` make:
`check_clip_checkpoint`, `load_pretrained_checked`); an upload that is not a readable image, a
template without exactly one `{}` (or with other braces) and fewer than two captions get a message on
the page saying what was wrong and what is expected (`answer`).

A Space holds this file alone (no `omninegclip` package), so it reads that record itself, loads the
models its card names without the project's checks, decodes images with PIL alone, and falls back to
a plain exception and exit when the project's CLI helpers are not importable.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MODEL_ENV, BASE_ENV = "OMNINEGCLIP_MODEL", "OMNINEGCLIP_BASE"
WIDGET_RECORD = "widget/examples.json"

try:  # in the repository
    from omninegclip.common.checkpoints import check_clip_checkpoint
    from omninegclip.common.cli import UserError, run_cli
    from omninegclip.common.safe_load import UnreadableImage, load_pretrained_checked, open_rgb_image
    from pipeline.default import RECOMMENDED

    DEFAULT_MODEL, DEFAULT_BASE = f"runs/default/{RECOMMENDED.name}", "runs/default/base"
except ImportError:  # on a Space: app.py, README.md and requirements.txt only
    run_cli, DEFAULT_MODEL, DEFAULT_BASE = None, None, None
    check_clip_checkpoint = load_pretrained_checked = open_rgb_image = None

    class UserError(Exception):
        """Bad input or a bad flag."""

    class UnreadableImage(ValueError):
        """An upload that is not an image PIL can read."""


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
    for value, env, index, default, flag in (
        (model, MODEL_ENV, 0, DEFAULT_MODEL, "--model"),
        (base, BASE_ENV, 1, DEFAULT_BASE, "--base"),
    ):
        value = value or os.environ.get(env) or (listed[index] if len(listed) > index else None)
        if value is None and default is not None:
            if not (ROOT / default).is_dir():
                raise UserError(
                    f"{default} does not exist: run `make default` first (it trains the built-in default's "
                    f"models), or name models with --model/--base or {MODEL_ENV}/{BASE_ENV}"
                )
            value = str(ROOT / default)
        if value is None:
            raise UserError(f"no model given: pass {flag} or set {env}")
        chosen.append(value)
    return chosen[0], chosen[1]


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def load_classifier(source: str, flag: str):
    """`pipeline("zero-shot-image-classification")` on a plain CLIP checkpoint (folder or Hub id),
    texts cut to the text encoder's context. A `UserError` naming `flag` unless `source` passes the
    check `python -m eval` makes: a CLIP config (`check_clip_checkpoint`) and weights that fit it, none
    missing (left random), unexpected or unreadable (`load_pretrained_checked`)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor, pipeline

    what = f"{flag} {source}"
    try:
        if check_clip_checkpoint is not None:
            check_clip_checkpoint(source, what)
            model = load_pretrained_checked(CLIPModel, source, what)
        else:  # on a Space: the models its card names, as they are
            model = CLIPModel.from_pretrained(source)
        processor = CLIPProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{what}: cannot load the CLIP weights and processor ({_first_line(error)})") from None
    return pipeline(
        "zero-shot-image-classification",
        model=model.eval(),
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        device="cuda" if torch.cuda.is_available() else "cpu",
        pipeline_class=_context_pipeline_class(),
    )


@functools.cache
def _context_pipeline_class():
    """transformers' zero-shot pipeline, each text cut to the text encoder's context (its position
    embeddings: CLIP's 77 tokens), as eval and train.py tokenize (`truncation=True`). The pipeline
    itself would pass a longer text on and fail (it drops the `tokenizer_kwargs` it is given)."""
    from transformers import ZeroShotImageClassificationPipeline

    class ContextZeroShotImageClassificationPipeline(ZeroShotImageClassificationPipeline):
        def preprocess(self, image, tokenizer_kwargs=None, **kwargs):
            cut = {"truncation": True, "max_length": context_length(self.model)}
            return super().preprocess(image, tokenizer_kwargs={**cut, **(tokenizer_kwargs or {})}, **kwargs)

    return ContextZeroShotImageClassificationPipeline


def context_length(model) -> int:
    """The tokens a CLIP's text encoder reads (start and end tokens included): 77 for CLIP."""
    return model.config.text_config.max_position_embeddings


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
        image = (
            None if entry["image"].startswith(("http://", "https://")) else _checkpoint_file(source, entry["image"])
        )
        if image is None:
            left_out.append(entry["image"])
            continue
        examples.append(Example(image, list(entry["candidate_labels"]), entry["title"]))
    if left_out:
        logger.warning(
            "%s: %d widget example(s) left out (image is a URL or missing): %s", record, len(left_out), left_out
        )
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


IMAGE_FILES = "an image file (PNG, JPEG, WebP, GIF, BMP or TIFF)"


def read_image(value):
    """The image to score, as RGB: a PIL image, or a file decoded completely: a path, or the record
    of an upload as gradio passes it unprocessed (`{"path", "orig_name", ...}`). A `ValueError` naming
    the upload and saying what is expected when it is not an image that can be read."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    path = value.get("path") if isinstance(value, dict) else value
    name = (value.get("orig_name") if isinstance(value, dict) else None) or Path(str(path)).name
    if not path:
        raise ValueError(f"the upload {name!r} has no file: upload {IMAGE_FILES}")
    try:
        if open_rgb_image is not None:
            return open_rgb_image(path)  # the decoding eval and train.py use (16-bit, transparency, size limit)
        with Image.open(path) as image:  # on a Space: PIL alone
            image.load()
            return image.convert("RGB")
    except (UnreadableImage, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"the upload {name!r} cannot be read as an image ({_first_line(error)}): upload {IMAGE_FILES}"
        ) from None


def check_template(template: str) -> str:
    """`template` when it holds exactly one `{}` (where each caption goes) and no other brace; a
    `ValueError` saying what it holds otherwise (Python's format() would fail on it, or ignore text)."""
    template = template or ""
    count = template.count("{}")
    expected = "the template must hold exactly one {}, where each caption goes, and no other braces"
    if count != 1:
        raise ValueError(
            f"{expected}: {template!r} has {count or 'no'} {{}} (e.g. 'a photo of {{}}.', or {{}} alone "
            f"for the captions as typed)"
        )
    others = re.findall(r"\{[^{}]*\}|[{}]", template.replace("{}", "", 1))
    if others:
        raise ValueError(f"{expected}: {template!r} also has {', '.join(others)}")
    return template


def cut_captions(classifier, captions: list[str], template: str) -> list[int]:
    """The positions of the captions whose text (in the template) is longer than `classifier`'s text
    encoder reads: it reads only their first tokens."""
    lengths = [
        len(ids)
        for ids in classifier.tokenizer([template.format(caption) for caption in captions], verbose=False)["input_ids"]
    ]
    limit = context_length(classifier.model)
    return [index for index, length in enumerate(lengths) if length > limit]


def score(classifier, image, captions: list[str], template: str) -> dict[str, float]:
    """{caption: probability}, softmax over the candidates, as the pipeline computes it."""
    return {
        row["label"]: row["score"]
        for row in classifier(image, candidate_labels=captions, hypothesis_template=template)
    }


def _sentence(message: str) -> str:
    return message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")


def answer(classifiers: dict, image, text: str, template: str) -> tuple[dict[str, float], dict[str, float], str]:
    """What the Score button shows: (the base model's scores, the fine-tuned model's, a note on the
    captions cut to the text encoder's context, or ""). `classifiers`: {"base": ..., "model": ...} of
    `load_classifier`; `image`: what `read_image` takes. Bad input raises a `gradio.Error` saying what
    was wrong and what is expected."""
    import gradio as gr

    try:
        if image is None:
            raise ValueError("upload an image first (or pick an example below)")
        picture = read_image(image)
        captions = parse_captions(text)
        template = check_template(template)
    except ValueError as error:  # the user's input, not the server's fault: no traceback in the server's log
        raise gr.Error(_sentence(str(error)), print_exception=False) from None
    cut = sorted(
        set(cut_captions(classifiers["base"], captions, template))
        | set(cut_captions(classifiers["model"], captions, template))
    )
    note = ""
    if cut:
        limit = context_length(classifiers["model"].model)
        shown = [
            captions[index] if len(captions[index]) <= 40 else captions[index][:40].rstrip() + "…" for index in cut
        ]
        named = "; ".join(f"caption {index + 1} ({text!r})" for index, text in zip(cut, shown))
        note = (
            f"Note: {len(cut)} caption(s) longer than the {limit} tokens CLIP's text encoder reads "
            f"(in the template): {named}. "
            f"Each model read only their first {limit} tokens, as `python -m eval` and `train.py` do."
        )
    return (
        score(classifiers["base"], picture, captions, template),
        score(classifiers["model"], picture, captions, template),
        note,
    )


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

    classifiers = {"model": load_classifier(model, "--model"), "base": load_classifier(base, "--base")}
    examples = widget_examples(model)
    template_default = default_template()

    def run(image, text, template):
        return answer(classifiers, image, text, template)

    with gr.Blocks(title="Omni-NegCLIP demo") as demo:
        gr.Markdown(
            "# Omni-NegCLIP: does CLIP understand *no*?\n"
            "Upload an image and type candidate captions with negations, one per line. Both models score every "
            'caption as `pipeline("zero-shot-image-classification")` and the Hub widget do (softmax over the '
            f"candidates).\n\n**Base:** `{shown_name(base)}` · **Fine-tuned with Omni-NegCLIP:** `{shown_name(model)}`"
        )
        with gr.Row():
            image = gr.Image(type="pil", label="Image", elem_id="image", height=320)
            with gr.Column():
                captions = gr.Textbox(
                    lines=5,
                    label="Candidate captions, one per line",
                    elem_id="captions",
                    placeholder="a red circle and no square\na red circle and no star",
                )
                template = gr.Textbox(
                    value=template_default,
                    label="Template ({} is the caption; this default is the pipeline's and the Hub widget's)",
                    elem_id="template",
                )
                submit = gr.Button("Score", variant="primary", elem_id="submit")
        with gr.Row():
            base_scores = gr.Label(label="Base CLIP", elem_id="base-scores")
            model_scores = gr.Label(label="Fine-tuned (Omni-NegCLIP)", elem_id="model-scores")
        notes = gr.Markdown(elem_id="notes")
        if examples:
            gr.Examples(
                examples=[[str(example.image), "\n".join(example.captions)] for example in examples],
                inputs=[image, captions],
                example_labels=[example.title for example in examples],
                label="The fine-tuned model's widget examples",
            )
        # Unprocessed inputs: the upload comes as its file record, so that a file that is not an
        # image gets `read_image`'s message instead of the image component's generic error.
        submit.click(run, [image, captions, template], [base_scores, model_scores, notes], preprocess=False)
    return demo, sorted({str(example.image.parent) for example in examples})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help=f"fine-tuned checkpoint, folder or Hub id (env {MODEL_ENV}; default {DEFAULT_MODEL})"
    )
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
