"""The Python side of `bench/gpu_check.sh` (one GPU check of the whole GPU path). Subcommands:

    python -m bench.gpu_check install WHEEL_DIR TARGET   install what the project needs and this machine lacks
    python -m bench.gpu_check versions                    python, torch, CUDA, GPU, library versions (JSON)
    python -m bench.gpu_check init-model FOLDER WORLD     a random CLIP of ViT-B/32 geometry with the world's processor
    python -m bench.gpu_check check-checkpoint FOLDER...  each trained folder is a plain, finite CLIP (JSON)
    python -m bench.gpu_check report WORK OUT             every step's numbers into OUT/results.json and results.md

`install` runs before the project's libraries can be imported, so it uses the standard library and
pip's own `packaging` only. It reads requirements.txt (torch excepted: the machine's CUDA build
stays), keeps every installed distribution that satisfies its requirement, and installs a carried
wheel (from WHEEL_DIR, no index, no dependencies resolved by pip) only where one is missing or
too old, following the requirements of each wheel it installs. Extra roots: the open_clip_torch
wheel (CLIP's BPE merges; its own dependencies are never needed) and DeepSpeed where carried.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from omninegclip import REPO_ROOT as ROOT

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip always carries it
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

KEEP = {"torch"}  # the machine's CUDA build of torch is never replaced
NO_DEPS = {"open-clip-torch"}  # only its BPE data file is read (its dependencies would pull torchvision)
EXTRA_ROOTS = ["open_clip_torch", "deepspeed"]  # installed where carried and missing


# ---- install ---------------------------------------------------------------------------------


def carried_wheels(folder: Path) -> dict[str, tuple[Version, Path]]:
    wheels = {}
    for path in sorted(folder.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        wheels[canonicalize_name(name)] = (Version(version), path)
    return wheels


def wheel_requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as archive:
        meta = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    environment = default_environment() | {"extra": ""}
    requirements = [
        Requirement(line.split(":", 1)[1].strip()) for line in text.splitlines() if line.startswith("Requires-Dist:")
    ]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def installed_version(name: str) -> Version | None:
    try:
        return Version(metadata.version(name))
    except (metadata.PackageNotFoundError, ValueError):
        return None


def project_requirements() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [
        Requirement(line.split("#")[0].strip())
        for line in lines
        if line.split("#")[0].strip() and not line.startswith("-")
    ]


def plan_install(wheels: dict[str, tuple[Version, Path]]) -> tuple[list[Path], list[dict]]:
    """(wheels to install, one row per requirement looked at: kept / install / missing)."""
    queue = project_requirements() + [Requirement(name) for name in EXTRA_ROOTS if canonicalize_name(name) in wheels]
    chosen: dict[str, Path] = {}
    rows, seen = [], set()
    while queue:
        requirement = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in chosen or (name, str(requirement.specifier)) in seen:
            continue
        seen.add((name, str(requirement.specifier)))
        have = installed_version(name)
        if have is not None and (name in KEEP or requirement.specifier.contains(have, prereleases=True)):
            rows.append({"requirement": str(requirement), "action": "kept", "version": str(have)})
            continue
        if name in KEEP:
            rows.append(
                {
                    "requirement": str(requirement),
                    "action": "missing",
                    "version": "None",
                    "note": "install it for your CUDA",
                }
            )
            continue
        carried = wheels.get(name)
        if carried is None or not requirement.specifier.contains(carried[0], prereleases=True):
            rows.append(
                {
                    "requirement": str(requirement),
                    "action": "missing",
                    "version": str(have),
                    "note": "no carried wheel fits" if carried is None else f"carried {carried[0]} does not fit",
                }
            )
            continue
        chosen[name] = carried[1]
        rows.append(
            {"requirement": str(requirement), "action": "install", "version": str(carried[0]), "was": str(have)}
        )
        if name not in NO_DEPS:
            queue.extend(wheel_requirements(carried[1]))
    return list(chosen.values()), rows


def install(wheel_dir: str, target: str) -> int:
    wheels = carried_wheels(Path(wheel_dir)) if Path(wheel_dir).is_dir() else {}
    paths, rows = plan_install(wheels)
    for row in rows:
        print(
            f"{row['action']:8} {row['requirement']:40} {row['version']}"
            + (f"  ({row['note']})" if "note" in row else "")
        )
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--upgrade",
        "--target",
        target,
    ]
    failed = []
    if paths and importlib.util.find_spec("pip") is None:  # no pip: a wheel is a zip archive of site-packages
        print(f"no pip here: unpacking {len(paths)} wheels into {target}", flush=True)
        for path in paths:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(target)
    elif paths:
        print("$", " ".join(pip + [str(path.name) for path in paths]), flush=True)
        if subprocess.call(pip + [str(path) for path in paths]) != 0:  # then one by one: one bad wheel spoils no other
            failed = [path.name for path in paths if subprocess.call(pip + [str(path)]) != 0]
    print(json.dumps({"install": rows, "failed_wheels": failed}))
    return 1 if failed else 0


# ---- versions, model, checkpoint --------------------------------------------------------------


def versions() -> int:
    import platform

    import torch

    record = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
    }
    if torch.cuda.is_available():
        record |= {
            "gpu": torch.cuda.get_device_name(),
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    for name in (
        "transformers",
        "datasets",
        "accelerate",
        "peft",
        "deepspeed",
        "huggingface_hub",
        "tokenizers",
        "pyarrow",
        "numpy",
    ):
        record[name] = str(installed_version(name))
    print(json.dumps({"versions": record}))
    return 0


def init_model(folder: str, world: str, size_name: str = "vit-b-32") -> int:
    """A random CLIP with the world's pixel statistics, no download: ViT-B/32's geometry, or "small":
    the built-in default's."""
    from omninegclip.common.clip import VIT_B_32
    from pipeline.default import SMALL_CLIP, make_initial_model, world_pixel_statistics

    sizes = {"small": SMALL_CLIP, "vit-b-32": VIT_B_32}
    make_initial_model(
        Path(folder), sizes[size_name], seed=0, pixel_statistics=world_pixel_statistics(Path(world), rows=256)
    )
    print(f"wrote a random {size_name} CLIP to {folder}")
    return 0


def check_checkpoint(*folders: str) -> int:
    """Each folder loads as a plain CLIPModel and every weight is finite float32 (one JSON line per
    folder; a folder that is not there, its training having failed, is reported as such). One
    process for all: the imports and the start of Python are paid once."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPModel

    ok = True
    for folder in folders:
        if not (Path(folder) / "model.safetensors").is_file():
            print(
                json.dumps(
                    {f"checkpoint {Path(folder).name}": {"folder": folder, "ok": False, "missing_folder": True}}
                )
            )
            ok = False
            continue
        state = load_file(str(Path(folder) / "model.safetensors"))
        expected = set(CLIPModel.from_pretrained(folder).state_dict())
        record = {
            "folder": folder,
            "tensors": len(state),
            "missing": sorted(expected - set(state))[:5],
            "unexpected": sorted(set(state) - expected)[:5],
            "all_finite": all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()),
            "dtypes": sorted({str(t.dtype).replace("torch.", "") for t in state.values()}),
        }
        record["ok"] = not record["missing"] and not record["unexpected"] and record["all_finite"]
        ok = ok and record["ok"]
        print(json.dumps({f"checkpoint {Path(folder).name}": record}))
    return 0 if ok else 1


# ---- report ----------------------------------------------------------------------------------

BENCH_STEPS = ("bench", "bench-compile")  # steps that run bench/bench_train.py into WORK/<step>/
_DICT_LINE = re.compile(r"^\{'.*\}$")


def _json_lines(text: str) -> dict:
    """The `{"key": ...}` one-line JSON records this script's subcommands print."""
    found = {}
    for line in text.splitlines():
        if line.startswith('{"'):
            try:
                found |= json.loads(line)
            except json.JSONDecodeError:
                pass
    return found


def _trainer_logs(text: str) -> list[dict]:
    """The Trainer's printed log dicts (`{'loss': ...}`, and the final `{'train_runtime': ...}`)."""
    logs = []
    for line in text.splitlines():
        line = line.strip()
        if _DICT_LINE.match(line):
            try:
                logs.append(ast.literal_eval(line))
            except (ValueError, SyntaxError):
                pass
    return logs


def _summary_of_training(logs: list[dict]) -> dict:
    losses = [float(entry["loss"]) for entry in logs if "loss" in entry]
    final = next((entry for entry in reversed(logs) if "train_runtime" in entry), {})
    summary = {
        "logged_losses": len(losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"):
        summary[key] = float(final[key]) if key in final else None  # the Trainer prints them as strings
    return {k: v for k, v in summary.items() if v is not None}


def report(work: str, out: str) -> int:
    work_dir, out_dir = Path(work), Path(out)
    steps = []
    table = work_dir / "steps.tsv"
    for line in table.read_text().splitlines() if table.is_file() else []:
        name, status, seconds, limit = line.split("\t")
        log = work_dir / "logs" / f"{name}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        step = {"step": name, "status": status, "seconds": float(seconds), "limit_s": int(limit)}
        step |= _json_lines(text)
        if name in ("train", "fsdp", "deepspeed") and status != "skipped":
            step |= _summary_of_training(_trainer_logs(text))
        if status not in ("ok", "skipped"):
            step["error_tail"] = "\n".join(text.splitlines()[-25:])
        steps.append(step)
    benches = {}  # bench/bench_train.py's results: the row, and the row with step (c) compiled
    for name in BENCH_STEPS:
        path = work_dir / name / "results.json"
        if path.is_file():
            benches[name] = json.loads(path.read_text())
    for step in steps:
        bench = benches.get(step["step"])
        if bench:
            for row in bench["steps"]:
                key = f"{row['step']} b{row['batch']} N{row['front_blocks']}"
                step[f"{key} samples/s"] = row["samples_per_second"]
                step[f"{key} share of matmul peak"] = row["peak_fraction"]
            for row in bench["speedups"]:
                step[f"project/plain b{row['batch']} N{row['front_blocks']}"] = row["speedup"]
                step[f"trainer/project b{row['batch']} N{row['front_blocks']}"] = row.get("trainer_ratio")
            step["matmul peak TFLOP/s"] = bench["meta"]["matmul_peak_flops"] / 1e12
    eval_json = work_dir / "eval" / "results.json"
    evaluation = json.loads(eval_json.read_text()) if eval_json.is_file() else None
    results = {"steps": steps, "bench_train": benches.get("bench"), "eval": evaluation} | (
        {"bench_train_compiled": benches["bench-compile"]} if "bench-compile" in benches else {}
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    lines = ["# GPU check", ""]
    version = next((s.get("versions") for s in steps if s.get("versions")), None)
    if version:
        lines += [", ".join(f"{k} {v}" for k, v in version.items()), ""]
    lines += ["| step | status | seconds (limit) | numbers |", "|---|---|---:|---|"]
    for step in steps:
        numbers = {
            k: v
            for k, v in step.items()
            if k not in ("step", "status", "seconds", "limit_s", "versions", "install", "error_tail")
        }
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items())
        lines.append(
            f"| {step['step']} | {step['status']} | {step['seconds']:.0f} ({step['limit_s']}) | {shown[:400]} |"
        )
    for name, bench in benches.items():
        bench_md = work_dir / name / "results.md"
        lines += [
            "",
            f"## bench/bench_train.py ({name})",
            "",
            bench_md.read_text() if bench_md.is_file() else json.dumps(bench["speedups"]),
        ]
    data_md = work_dir / "bench-data" / "results.md"
    if data_md.is_file():
        lines += ["", "## bench/bench_data.py (preparation on the GPU, input path)", "", data_md.read_text()]
    eval_md = work_dir / "eval" / "results.md"
    if eval_md.is_file():
        device = (evaluation or {}).get("settings", {}).get("device", "?")
        lines += ["", f"## python -m eval (device {device})", "", eval_md.read_text()]
    failed = [s for s in steps if s["status"] not in ("ok", "skipped")]
    for step in failed:
        lines += ["", f"## {step['step']}: {step['status']}", "", "```", step.get("error_tail", ""), "```"]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}: {len(steps)} steps, {len(failed)} not ok")
    return 0


def main(argv: list[str]) -> int:
    commands = {
        "install": install,
        "versions": versions,
        "init-model": init_model,
        "check-checkpoint": check_checkpoint,
        "report": report,
    }
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
