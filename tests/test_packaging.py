"""The project as an installable package (pyproject.toml): the wheel holds the model and the package
(with the card template) and nothing generic at the top level, every console script names a real
entry point, and no module patches `sys.path`."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_console_script_names_a_callable_entry_point():
    scripts = PYPROJECT["project"]["scripts"]
    assert "omninegclip-card" in scripts
    for name, target in scripts.items():
        module, attribute = target.split(":")
        assert callable(getattr(importlib.import_module(module), attribute)), name


def test_the_wheel_holds_every_module_and_the_card_template(tmp_path):
    # Built from a copy of the tracked files: the build writes build/ and *.egg-info beside its sources.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for path in tracked:
        if not path.startswith(("tests/", "docs/")) and (ROOT / path).exists():
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, source / path, follow_symlinks=False)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            str(source),
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("omninegclip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = [path for path in tracked if path.startswith("omninegclip/")]
    modules = {path for path in tracked if path.endswith(".py")}
    assert modules and modules <= names, sorted(modules - names)
    assert "modeling_omninegclip.py" in names
    # The scripts on top run from the checkout: no generic top-level module (`train`, `eval`, …) is installed.
    top_level = {
        name.split("/")[0].removesuffix(".py")
        for name in names
        if not name.split("/")[0].endswith((".dist-info", ".data"))
    }
    assert top_level == {"omninegclip", "modeling_omninegclip"}, top_level
    template = zipfile.ZipFile(wheel).read("omninegclip/training/card/model_card.md").decode()
    assert template == (ROOT / "model_card.md").read_text()  # the top-level template's content, not a link
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_card_template_is_one_file():
    """The top-level model_card.md is the template; the package holds a link to it (git mode 120000),
    not a second copy that could drift from it."""
    tracked = subprocess.run(
        ["git", "ls-files", "-s", "*model_card.md"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    entries = {line.split("\t")[1]: line.split()[0] for line in tracked.splitlines()}
    assert entries == {"model_card.md": "100644", "omninegclip/training/card/model_card.md": "120000"}, entries
    link = ROOT / "omninegclip" / "training" / "card" / "model_card.md"
    assert link.is_symlink() and link.resolve() == (ROOT / "model_card.md").resolve()
    from omninegclip.training.card.render import TEMPLATE_PATH

    assert TEMPLATE_PATH.read_text() == (ROOT / "model_card.md").read_text()


def test_no_module_patches_sys_path():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert len(tracked) > 50
    patched = [
        path for path in tracked if re.search(r"sys\.path\s*(\.insert|\.append|\[|\+?=)", (ROOT / path).read_text())
    ]
    assert patched == [], patched


def _layout_rows() -> dict[str, str]:
    """README's layout table: path -> what it says."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Layout") :].split("\n## ", 1)[0]
    return {match[1]: match[2] for match in re.finditer(r"^\| `([^`]+)` \| (.*) \|$", table, flags=re.M)}


def test_the_readme_layout_table_matches_the_tree():
    rows = _layout_rows()
    assert all((ROOT / path).exists() for path in rows), [path for path in rows if not (ROOT / path).exists()]
    tracked = subprocess.run(
        ["git", "ls-files", "omninegclip", "eval"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    modules = [Path(path) for path in tracked if path.endswith(".py")]
    # Every layer has a row: eval/ and each subpackage of omninegclip/.
    layers = {f"{module.parent}/" for module in modules if module.parent.parent in (Path("."), Path("omninegclip"))}
    assert layers - {"omninegclip/"} <= set(rows), sorted(layers - {"omninegclip/"} - set(rows))
    for module in modules:
        if module.stem in ("__init__", "__main__") or module.parent.name == "omninegclip":
            continue
        if f"{module.parent}/" in rows:  # a module of a layer: its row names it
            assert f"`{module.stem}`" in rows[f"{module.parent}/"], (
                f"README's layout row for {module.parent}/ does not name `{module.stem}`"
            )
        else:  # deeper (eval/metrics/NAME/NAME.py): the layer's row names the folder it sits in
            layer = next(parent for parent in module.parents if f"{parent}/" in rows)
            folder = module.relative_to(layer).parts[0]
            assert f"`{folder}/`" in rows[f"{layer}/"], (
                f"README's layout row for {layer}/ does not name `{folder}/` (holding {module})"
            )
