"""The demo (app.py): which models it serves, its input checks, its examples, and the app itself
driven in headless Chromium on two tiny CLIPs whose answers are known by construction."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from train_helpers import single_thread  # noqa: F401  (an autouse fixture)
from transformers import CLIPModel

import app
from omninegclip.common.cli import EXIT_USER_ERROR, UserError, run_cli
from omninegclip.training.card.widget import WORLD_WIDGET_LABELS, write_world_widget_examples
from omninegclip.training.model_card import load_widget_examples, write_model_card
from pipeline.space import write_space

WHICH = WORLD_WIDGET_LABELS["circle-star"]  # "a red circle and no square" (right) / "... no star"
RIGHT = WHICH["expected_label"]
WRONG = next(label for label in WHICH["candidate_labels"] if label != RIGHT)


def word_clip(tokenizer, word: str) -> CLIPModel:
    """A tiny CLIP whose every image embeds to one direction d, and whose text embedding leans to d
    exactly when the caption holds `word`: one text block with uniform attention (a mean of the
    caption's normalised token vectors), `word`'s token vector along d, the image tower's output
    pinned to d. So it ranks first the candidate that holds `word`."""
    torch.manual_seed(0)
    config = tiny_clip_config(text_layers=1)
    model = CLIPModel(config).eval()
    hidden, projection = config.text_config.hidden_size, config.projection_dim
    direction = torch.zeros(hidden)
    direction[0], direction[1] = 1.0, -1.0  # zero mean: layer norm keeps its direction
    first_dims = torch.eye(projection, hidden)
    with torch.no_grad():
        text = model.text_model
        text.embeddings.position_embedding.weight.zero_()
        text.embeddings.token_embedding.weight[tokenizer.convert_tokens_to_ids(f"{word}</w>")] = 5 * direction
        block = text.encoder.layers[0]
        for layer in (block.self_attn.q_proj, block.self_attn.k_proj, block.mlp.fc2):
            layer.weight.zero_()
            layer.bias.zero_()
        for layer in (block.self_attn.v_proj, block.self_attn.out_proj):
            layer.weight.copy_(torch.eye(hidden))
            layer.bias.zero_()
        model.text_projection.weight.copy_(first_dims)
        model.vision_model.post_layernorm.weight.zero_()
        model.vision_model.post_layernorm.bias.copy_(direction)
        model.visual_projection.weight.copy_(first_dims)
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tokenizer, processor) -> tuple[Path, Path]:
    """(fine-tuned, base) checkpoint folders: the fine-tuned one answers the world's which-object
    example right (it favours "square"), the base one wrong ("star"); the fine-tuned one carries
    the world's widget examples as `make default`'s models do."""
    root = tmp_path_factory.mktemp("demo")
    folders = {}
    for name, word in (("tuned", RIGHT.split()[-1]), ("base", WRONG.split()[-1])):
        folders[name] = root / f"tiny-stand-in-{name}"
        word_clip(tokenizer, word).save_pretrained(folders[name])
        processor.save_pretrained(folders[name])
    examples = load_widget_examples(write_world_widget_examples(root / "world"))
    # The record train.py leaves beside the weights, without which no card is written.
    (folders["tuned"] / "training_provenance.json").write_text(
        json.dumps({"base_model": str(folders["base"]), "data": []})
    )
    write_model_card(folders["tuned"], widget_examples=examples)
    return folders["tuned"], folders["base"]


def test_models_score_as_constructed(two_models):
    tuned, base = two_models
    image = Image.new("RGB", (64, 64), "white")
    for folder, top in ((tuned, RIGHT), (base, WRONG)):
        scores = app.score(app.load_classifier(str(folder), "--model"), image, [WRONG, RIGHT], app.default_template())
        assert max(scores, key=scores.get) == top
        assert sum(scores.values()) == pytest.approx(1.0)


def test_widget_examples_come_from_the_checkpoint(two_models):
    tuned, base = two_models
    examples = app.widget_examples(str(tuned))
    assert [example.title for example in examples] == [labels["title"] for labels in WORLD_WIDGET_LABELS.values()]
    assert examples[0].captions == WHICH["candidate_labels"]
    assert all(example.image.is_file() and example.image.parent == tuned / "widget" for example in examples)
    assert app.widget_examples(str(base)) == []


def test_parse_captions():
    assert app.parse_captions("  a cat \n\nno cat\n") == ["a cat", "no cat"]
    with pytest.raises(ValueError, match="at least two"):
        app.parse_captions("a cat\n \n")
    with pytest.raises(ValueError, match="repeated"):
        app.parse_captions("a cat\nno cat\na cat")


def test_models_from_flag_env_space_card_then_default(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "ROOT", tmp_path)
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    monkeypatch.delenv(app.BASE_ENV, raising=False)
    with pytest.raises(UserError, match="make default"):
        app.choose_models(None, None, folder=tmp_path)
    for default in (app.DEFAULT_MODEL, app.DEFAULT_BASE):
        (tmp_path / default).mkdir(parents=True)
    assert app.choose_models(None, None, folder=tmp_path) == (
        str(tmp_path / app.DEFAULT_MODEL),
        str(tmp_path / app.DEFAULT_BASE),
    )
    space = tmp_path / "space"
    write_space(space, "me/tuned", "me/base")
    assert app.choose_models(None, None, folder=space) == ("me/tuned", "me/base")
    monkeypatch.setenv(app.BASE_ENV, "env/base")
    assert app.choose_models("flag/tuned", None, folder=space) == ("flag/tuned", "env/base")


def test_cli_says_run_make_default_when_the_default_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "ROOT", tmp_path)
    monkeypatch.delenv(app.MODEL_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(app.main, [])
    assert exit_info.value.code == EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert "runs/default/omni-choice does not exist: run `make default` first" in error
    assert "Traceback" not in error


def test_cli_names_the_flag_of_a_bad_model(tmp_path, two_models, capsys):
    tuned, _ = two_models
    with pytest.raises(SystemExit) as exit_info:
        run_cli(app.main, ["--model", str(tuned), "--base", str(tmp_path / "nothing-here")])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert (
        f"--base {tmp_path / 'nothing-here'} does not exist (expected a CLIP checkpoint folder or a Hub id)"
        in capsys.readouterr().err
    )


# ---- bad models and bad inputs (issue 25) ----------------------------------------------------------

BROKEN_MODELS = {  # kind -> what the refusal says (the same words as python -m eval's)
    "weights_lack_two_text_layers": "model.safetensors does not fit its config.json: missing from the weights "
    "(they would stay random): text_model.encoder.layers.3.",
    "bert_with_clip_processor": "not a CLIP checkpoint (its config.json has model_type 'bert', expected 'clip')",
    "weights_truncated": "model.safetensors cannot be read (",
    "folder_without_config": "not a CLIP checkpoint (a folder without config.json)",
}


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory, processor) -> dict[str, Path]:
    """A folder of each `BROKEN_MODELS` kind, each with CLIP's processor files beside it."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("broken")
    folders = {kind: root / kind for kind in BROKEN_MODELS}
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(text_layers=3)).save_pretrained(folders["weights_lack_two_text_layers"])
    config = folders["weights_lack_two_text_layers"] / "config.json"
    config.write_text(config.read_text().replace('"num_hidden_layers": 3', '"num_hidden_layers": 5'))
    BertModel(
        BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    ).save_pretrained(folders["bert_with_clip_processor"])
    CLIPModel(tiny_clip_config()).save_pretrained(folders["weights_truncated"])
    weights = folders["weights_truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for folder in folders.values():
        processor.save_pretrained(folder)
    return folders


@pytest.mark.parametrize("kind", list(BROKEN_MODELS))
def test_the_demo_refuses_at_start_what_eval_refuses_in_the_same_words(
    kind, broken_models, two_models, capsys, monkeypatch
):
    import gradio

    from eval.runner import load_clip

    folder = str(broken_models[kind])
    with pytest.raises(UserError) as evaluation:
        load_clip(folder)
    with pytest.raises(UserError) as demo:
        app.load_classifier(folder, "--model")
    assert BROKEN_MODELS[kind] in str(demo.value)
    assert str(demo.value) == str(evaluation.value).replace(f"model {folder}", f"--model {folder}")
    monkeypatch.setattr(gradio.Blocks, "launch", lambda *args, **kwargs: pytest.fail("the demo served a broken model"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(app.main, ["--model", folder, "--base", str(two_models[1])])
    assert exit_info.value.code == EXIT_USER_ERROR
    error = capsys.readouterr().err
    paragraphs = [
        line for line in re.split(r"[\r\n]", error) if line.startswith("error: ")
    ]  # (after transformers' progress bar)
    assert (
        len(paragraphs) == 1
        and paragraphs[0].startswith(f"error: --model {folder}")
        and BROKEN_MODELS[kind] in paragraphs[0]
    )
    assert "Traceback" not in error


@pytest.fixture(scope="module")
def classifiers(two_models) -> dict:
    tuned, base = two_models
    return {"model": app.load_classifier(str(tuned), "--model"), "base": app.load_classifier(str(base), "--base")}


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict[str, dict]:
    """Uploads as gradio passes them unprocessed: a picture, a text file, a PNG cut short."""
    root = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (64, 64), "white").save(root / "white.png")
    (root / "notes.txt").write_text("not an image")
    (root / "cut.png").write_bytes((root / "white.png").read_bytes()[:60])
    return {
        name: {"path": str(root / name), "orig_name": name, "mime_type": None}
        for name in ("white.png", "notes.txt", "cut.png")
    }


LONG_CAPTION = "a red circle and " + "a long winding description of everything else in the picture " * 8 + "no square"
BAD_INPUTS = {  # name -> (upload, captions, template, what the page says)
    "no_image": (None, f"{WRONG}\n{RIGHT}", "{}", "Upload an image first (or pick an example below)."),
    "upload_not_an_image": (
        "notes.txt",
        f"{WRONG}\n{RIGHT}",
        "{}",
        "The upload 'notes.txt' cannot be read as an image "
        "(not an image PIL can read (corrupt or not an image file)): "
        "upload an image file (PNG, JPEG, WebP, GIF, BMP or TIFF).",
    ),
    "upload_cut_short": ("cut.png", f"{WRONG}\n{RIGHT}", "{}", "The upload 'cut.png' cannot be read as an image ("),
    "one_caption": ("white.png", RIGHT, "{}", "Type at least two candidate captions, one per line (got 1)."),
    "template_with_two_placeholders": (
        "white.png",
        f"{WRONG}\n{RIGHT}",
        "{} and {}",
        "The template must hold exactly one {}, where each caption goes, and no other braces: "
        "'{} and {}' has 2 {} (e.g. 'a photo of {}.', or {} alone for the captions as typed).",
    ),
    "template_with_a_named_field": (
        "white.png",
        f"{WRONG}\n{RIGHT}",
        "a {x} photo of {}",
        "The template must hold exactly one {}, where each caption goes, and no other braces: "
        "'a {x} photo of {}' also has {x}.",
    ),
    "template_without_placeholder": ("white.png", f"{WRONG}\n{RIGHT}", "a photo", "'a photo' has no {}"),
    "template_with_a_stray_brace": (
        "white.png",
        f"{WRONG}\n{RIGHT}",
        "a photo of {}}",
        "'a photo of {}}' also has }.",
    ),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_get_a_message_saying_what_is_expected(name, classifiers, uploads):
    import gradio

    upload, text, template, message = BAD_INPUTS[name]
    with pytest.raises(gradio.Error) as error:
        app.answer(classifiers, uploads.get(upload), text, template)
    assert message in error.value.message


def test_on_a_space_uploads_are_read_with_pil_alone(uploads, monkeypatch):
    monkeypatch.setattr(app, "open_rgb_image", None)  # as on a Space: no omninegclip package
    assert app.read_image(uploads["white.png"]).mode == "RGB"
    with pytest.raises(
        ValueError, match=r"^the upload 'notes.txt' cannot be read as an image \(cannot identify image file"
    ):
        app.read_image(uploads["notes.txt"])


def test_a_caption_over_77_tokens_is_cut_as_eval_cuts_it_and_the_page_says_so(classifiers, uploads, tokenizer):
    from omninegclip.common.embedding import embed_images, embed_texts

    template = "a photo of {}."
    assert len(tokenizer(template.format(LONG_CAPTION))["input_ids"]) > 77
    base, tuned, note = app.answer(classifiers, uploads["white.png"], f"{LONG_CAPTION}\n{WRONG}\n{RIGHT}", template)
    assert note.startswith(
        "Note: 1 caption(s) longer than the 77 tokens CLIP's text encoder reads (in the template): "
        "caption 1 ('a red circle"
    )
    assert "Each model read only their first 77 tokens, as `python -m eval` and `train.py` do." in note
    picture = app.read_image(uploads["white.png"])
    for scores, classifier in ((base, classifiers["base"]), (tuned, classifiers["model"])):
        model = classifier.model
        texts = embed_texts(
            model, classifier.tokenizer, [template.format(c) for c in (LONG_CAPTION, WRONG, RIGHT)], progress=False
        )
        image = embed_images(model, classifier.image_processor, [picture], progress=False)
        expected = (model.logit_scale.exp() * image @ texts.T).softmax(-1)[0].tolist()
        assert [scores[c] for c in (LONG_CAPTION, WRONG, RIGHT)] == pytest.approx(expected, abs=1e-5)
    assert app.answer(classifiers, uploads["white.png"], f"{WRONG}\n{RIGHT}", template)[2] == ""


def test_the_served_demo_answers_bad_inputs_with_its_own_messages(two_models, uploads, monkeypatch):
    """Through gradio's server (its API, no browser): a text file uploaded as the image reaches
    `read_image` (the image component's own processing would fail first with a generic error), a bad
    template gets its message, and a long caption is scored, with the note."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports
    tuned, base = two_models
    demo, _ = app.build_demo(str(tuned), str(base))
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        client = Client(url, verbose=False)
        for upload, template, message in (
            ("notes.txt", "{}", BAD_INPUTS["upload_not_an_image"][3]),
            ("white.png", "{} and {}", BAD_INPUTS["template_with_two_placeholders"][3]),
        ):
            with pytest.raises(AppError) as error:
                client.predict(handle_file(uploads[upload]["path"]), f"{WRONG}\n{RIGHT}", template, api_name="/run")
            assert str(error.value) == message
        base_scores, tuned_scores, note = client.predict(
            handle_file(uploads["white.png"]["path"]), f"{LONG_CAPTION}\n{RIGHT}", "{}", api_name="/run"
        )
        assert {row["label"] for row in tuned_scores["confidences"]} == {LONG_CAPTION, RIGHT}
        assert note.startswith("Note: 1 caption(s) longer than the 77 tokens")
    finally:
        demo.close()


def chromium_path() -> str:
    found = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get when run as root)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_app_in_headless_chromium(two_models, monkeypatch):
    """Serve the app, pick the which-object example in Chromium, score it, and read both answers
    off the page. OMNINEGCLIP_SCREENSHOT=PATH also saves a screenshot of the page there."""
    executable = chromium_path()
    playwright = pytest.importorskip("playwright.sync_api")
    tuned, base = two_models
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports
    demo, example_folders = app.build_demo(str(tuned), str(base))
    _, url, _ = demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        allowed_paths=example_folders,
    )
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=executable, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 760})
                page.set_default_timeout(60_000)  # a bound on every wait below, not a measurement
                page.goto(url)
                page.get_by_text(WHICH["title"]).click()
                playwright.expect(page.locator("#captions textarea")).to_have_value(
                    "\n".join(WHICH["candidate_labels"])
                )
                page.locator("#submit").click()
                tuned_top = page.locator("#model-scores [data-testid='label-output-value']")
                base_top = page.locator("#base-scores [data-testid='label-output-value']")
                playwright.expect(tuned_top).to_have_text(RIGHT)
                playwright.expect(base_top).to_have_text(WRONG)
                if os.environ.get("OMNINEGCLIP_SCREENSHOT"):
                    page.screenshot(path=os.environ["OMNINEGCLIP_SCREENSHOT"], full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()


def test_page_names_models_without_machine_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "tuned").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    assert app.shown_name("runs/tuned") == "runs/tuned"
    assert app.shown_name(str(outside)) == f".../{outside.name}"
    assert app.shown_name("owner/model") == "owner/model"


def test_space_folder(tmp_path, monkeypatch):
    import gradio
    from huggingface_hub import SpaceCard
    from packaging.requirements import Requirement

    import pipeline.space as space

    folder = tmp_path / "space"
    card = SpaceCard.load(write_space(folder, "me/omninegclip-world-omni-choice", "me/omninegclip-world-base"))
    assert (card.data.sdk, card.data.app_file, card.data.sdk_version) == ("gradio", "app.py", gradio.__version__)
    assert card.data.models == ["me/omninegclip-world-omni-choice", "me/omninegclip-world-base"]
    assert (folder / "app.py").read_bytes() == Path(app.__file__).read_bytes()
    requirements = [Requirement(line) for line in (folder / "requirements.txt").read_text().splitlines()]
    assert {requirement.name for requirement in requirements} == set(space.SPACE_REQUIREMENTS)
    assert all(requirement.specifier.contains(version(requirement.name)) for requirement in requirements)
    with pytest.raises(UserError, match="already holds"):
        write_space(folder, "me/a", "me/b")
    write_space(folder, "me/a", "me/b", overwrite=True)
    assert SpaceCard.load(folder / "README.md").data.models == ["me/a", "me/b"]

    uploads = []
    monkeypatch.setattr(
        space, "create_repo", lambda repo_id, **kwargs: type("Url", (), {"repo_id": f"me/{repo_id}"})()
    )
    monkeypatch.setattr(space, "upload_folder", lambda **kwargs: uploads.append(kwargs))
    assert space.push_space(tmp_path / "pushed", "demo", "me/a", "me/b") == "me/demo"
    assert uploads[0]["repo_type"] == "space" and uploads[0]["repo_id"] == "me/demo"
    assert sorted(path.name for path in Path(uploads[0]["folder_path"]).iterdir()) == sorted(space.SPACE_FILES)


def test_space_app_runs_without_the_project(tmp_path):
    """On a Space, app.py stands alone: it imports without the omninegclip package and reads its
    models from the Space card beside it."""
    import subprocess
    import sys

    folder = tmp_path / "space"
    write_space(folder, "me/tuned", "me/base")
    # The package is installed here (pip install -e .); a Space has none: make importing it fail.
    probe = (
        "import sys; sys.modules['omninegclip'] = None; import app; "
        "assert not any(name.startswith('omninegclip.') for name in sys.modules); print(app.choose_models(None, None))"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", app.MODEL_ENV, app.BASE_ENV)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=folder, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('me/tuned', 'me/base')"


def test_space_cli_wants_hub_ids(tmp_path, two_models, capsys):
    import pipeline.space as space

    tuned, _ = two_models
    with pytest.raises(SystemExit) as exit_info:
        run_cli(space.main, [str(tmp_path / "space"), "--model", str(tuned), "--base", "me/base"])
    assert exit_info.value.code == EXIT_USER_ERROR
    assert f"--model {tuned}: expected a Hub model id" in capsys.readouterr().err
    assert not (tmp_path / "space").exists()


def version(distribution: str) -> str:
    from importlib.metadata import version as installed

    return installed(distribution)
