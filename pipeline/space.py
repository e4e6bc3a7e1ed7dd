"""The demo's Hugging Face Space: a folder holding `app.py` (the repository's demo), a Space card
(README.md: `sdk: gradio`, `app_file: app.py`, the models) and the Space's `requirements.txt`,
ready to be pushed beside the model.

- `write_space(folder, model_repo_id, base_repo_id) -> Path`: write that folder. The card lists the
  fine-tuned model first and the base second; `app.py` reads them from there (see its docstring);
- `push_space(folder, space_id, model_repo_id, base_repo_id) -> str`: create the Space and upload it;
- CLI: `python -m pipeline.space FOLDER --model REPO_ID --base REPO_ID [--push_to_hub SPACE_ID]`.

The pins come from the project's own requirements files (gradio from requirements-demo.txt, which
also gives the card's `sdk_version`; torch, transformers, pillow and huggingface_hub from
requirements.txt), so the Space runs what the tests ran.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData, create_repo, upload_folder
from packaging.requirements import Requirement

from omninegclip import REPO_ROOT as ROOT
from omninegclip.common.cli import UserError, run_cli

APP = ROOT / "app.py"
SPACE_FILES = ("README.md", "app.py", "requirements.txt")
# What app.py imports on a Space (gradio itself comes with `sdk_version`).
SPACE_REQUIREMENTS = ("torch", "transformers", "pillow", "huggingface_hub")
CARD_TAGS = ["clip", "negation", "omni-negclip", "zero-shot-image-classification"]


def pinned(requirements_file: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{name: requirement line} for `names` in a requirements file (comments and includes skipped)."""
    found = {}
    for line in requirements_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.name.lower().replace("-", "_") in names:
            found[requirement.name.lower().replace("-", "_")] = str(requirement)
    missing = [name for name in names if name not in found]
    if missing:
        raise UserError(f"{requirements_file}: no requirement for {missing}")
    return found


def gradio_version() -> str:
    requirement = Requirement(pinned(ROOT / "requirements-demo.txt", ("gradio",))["gradio"])
    versions = [spec.version for spec in requirement.specifier if spec.operator == "=="]
    if not versions:
        raise UserError(
            f"{ROOT / 'requirements-demo.txt'}: gradio must be pinned with == (the Space's sdk_version), "
            f"got {requirement}"
        )
    return versions[0]


def render_space_card(model_repo_id: str, base_repo_id: str, license: str = "mit") -> SpaceCard:
    data = SpaceCardData(
        title="Omni-NegCLIP demo",
        sdk="gradio",
        sdk_version=gradio_version(),
        app_file=APP.name,
        license=license,
        models=[model_repo_id, base_repo_id],
        tags=CARD_TAGS,
        emoji="🚫",
        colorFrom="indigo",
        colorTo="gray",
        short_description="Does CLIP understand 'no'? Base vs Omni-NegCLIP, side by side",
        pinned=False,
    )
    body = f"""
# Omni-NegCLIP demo

Upload an image, type candidate captions with negations (one per line), and compare how the base
CLIP [`{base_repo_id}`](https://huggingface.co/{base_repo_id}) and the same model fine-tuned with
Omni-NegCLIP, [`{model_repo_id}`](https://huggingface.co/{model_repo_id}), score them: each model
puts every caption into the template and takes a softmax over the candidates, as
`pipeline("zero-shot-image-classification")` and the model's widget do. The examples are the ones
in the fine-tuned model's card (`widget/examples.json` in its repo).

The models are the `models` listed above (fine-tuned first, then base); `OMNINEGCLIP_MODEL` and
`OMNINEGCLIP_BASE` (Space variables) override them. Locally: \
`python app.py --model {model_repo_id} --base {base_repo_id}`.
"""
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_space(
    folder: str | Path, model_repo_id: str, base_repo_id: str, license: str = "mit", overwrite: bool = False
) -> Path:
    """Write the Space folder (README.md, app.py, requirements.txt); returns its card's path.
    Refuses to replace those files unless `overwrite`."""
    folder = Path(folder)
    existing = [name for name in SPACE_FILES if (folder / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{folder} already holds {existing}: pass --overwrite (overwrite=True) to replace them")
    card = render_space_card(model_repo_id, base_repo_id, license)
    requirements = pinned(ROOT / "requirements.txt", SPACE_REQUIREMENTS)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(APP, folder / APP.name)
    (folder / "requirements.txt").write_text("\n".join(requirements[name] for name in SPACE_REQUIREMENTS) + "\n")
    card.save(folder / "README.md")
    return folder / "README.md"


def push_space(
    folder: str | Path,
    space_id: str,
    model_repo_id: str,
    base_repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    **space_kwargs,
) -> str:
    """Create (or reuse) the Space, write the folder, upload it in one commit; returns the Space id."""
    full_id = create_repo(
        space_id, repo_type="space", space_sdk="gradio", token=token, private=private, exist_ok=True
    ).repo_id
    write_space(folder, model_repo_id, base_repo_id, **space_kwargs)
    upload_folder(
        repo_id=full_id,
        repo_type="space",
        folder_path=str(folder),
        allow_patterns=list(SPACE_FILES),
        token=token,
        commit_message="Omni-NegCLIP demo",
    )
    return full_id


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="Write (and optionally push) the demo's Hugging Face Space.")
    parser.add_argument("folder", help="folder to write the Space into")
    parser.add_argument("--model", required=True, help="Hub id of the fine-tuned model")
    parser.add_argument("--base", required=True, help="Hub id of the base model")
    parser.add_argument("--push_to_hub", metavar="SPACE_ID", help="push the folder to this Space (name or owner/name)")
    parser.add_argument("--private", action="store_true", help="create the Space private")
    parser.add_argument("--license", default="mit")
    parser.add_argument("--overwrite", action="store_true", help="replace the Space files already in the folder")
    args = parser.parse_args(argv)
    for flag, value in (("--model", args.model), ("--base", args.base)):
        if Path(value).exists() or value.count("/") != 1:
            raise UserError(
                f"{flag} {value}: expected a Hub model id (owner/name); a Space cannot load a local folder"
            )
    if args.push_to_hub:
        space_id = push_space(
            args.folder,
            args.push_to_hub,
            args.model,
            args.base,
            private=args.private or None,
            license=args.license,
            overwrite=args.overwrite,
        )
        print(f"pushed to https://huggingface.co/spaces/{space_id}")
    else:
        print(
            f"wrote {write_space(args.folder, args.model, args.base, license=args.license, overwrite=args.overwrite)}"
        )


def cli() -> None:
    """The console script's entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
