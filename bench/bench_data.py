"""Data-side speed and memory of Omni-NegCLIP, each number beside the limit measured in the same run.

    python -m bench.bench_data                              # builder section, 1,000 COCO-like images (make bench-data)
    python -m bench.bench_data --images 2000 --full_size_annotations   # + annotation loading at COCO train2017's size
    python -m bench.bench_data --sections builder --out runs/bench_data

Sections (`--sections`, comma-separated; each a function `section_NAME(args, fixture) -> dict` in
`SECTIONS`, so others can be added beside it):

- `builder`: `data_builder.py coco --captions_per_image 0` on a COCO-format fixture of realistic
  JPEGs (`bench/coco_fixture.py`: 640x480-ish, ~115 KiB at quality 90, 5 captions and ~7 boxes an
  image). Reports rows/s and images/s of the whole build and of its image phase (read, check,
  store), peak memory (the build's process and its largest worker), bytes written against the input
  images' bytes, for `--num_proc` 1 and the cores; the limit beside them: the per-core rate of
  reading and checking one image (draft-mode JPEG decode, what the builder does) times the workers,
  and the full decode the previous builder did. With `--baseline COMMIT` (default the commit
  before images were stored once) the previous builder runs too, on the same fixture. With
  `--full_size_annotations`, the COCO reader's peak memory and time on annotation files of
  train2017's size (118,287 images, 591k captions, ~850k instances), now and at the baseline.

- `preparation` and `input` (`bench/bench_prep.py`): `train.py`'s side, on the same fixture: each
  unique image decoded once in 1 and 2 worker processes against one core's decode-once rate, bytes
  written against the images' bytes, and the training input path's ms/step at batch 256 against
  the previous per-row collator; `--device cuda --dtype bf16` adds images/s embedded on the GPU.

Every build runs in its own process (peak resident memory from `getrusage`: the process, and
separately the largest of its worker processes). The machine's load average is recorded before and
after each measurement: on a shared machine the times are inflated and the parallel speed-up is
capped by the cores others use. Results: `--out`/results.json (everything) and results.md (tables).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from PIL import Image

from bench.bench_prep import input_table, preparation_table, section_input, section_preparation
from bench.coco_fixture import FixtureInfo, make_fixture
from omninegclip import REPO_ROOT as ROOT

BASELINE = "d2ecc5f"  # the last commit whose builder stored every caption row with its image bytes


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu": _cpu_name(),
        "load_average_at_start": _load(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------------- child processes

_DRIVER = r"""
import json, resource, sys, time, importlib.util
payload = json.loads(sys.argv[1])
timings = {{}}
def cpu():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
def timed(module, name, key):
    original = getattr(module, name)
    def wrapper(*args, **kwargs):
        start, start_cpu = time.perf_counter(), cpu()
        try:
            return original(*args, **kwargs)
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
            timings[key + "_cpu"] = timings.get(key + "_cpu", 0.0) + cpu() - start_cpu
    setattr(module, name, wrapper)
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
start = time.perf_counter()
{body}
wall = time.perf_counter() - start
print("RESULT " + json.dumps({{"wall_s": wall, "cpu_s": cpu(), "timings": timings, "result": result,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(body: str, payload: dict) -> dict:
    """Run `body` (Python; sets `result`) in a fresh interpreter; its wall time, peak memory, `timings`."""
    code = _DRIVER.format(body=body)
    load_before = _load()
    completed = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, cwd=str(ROOT)
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        raise RuntimeError(f"child failed (exit {completed.returncode}):\n{completed.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "load_before": load_before, "load_after": _load()}


def _folder_bytes(folder: Path, under: str | None = None) -> int:
    root = folder / under if under else folder
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file()) if root.exists() else 0


def baseline_file(commit: str, path: str, into: Path) -> Path | None:
    """The baseline's version of a file of this repository (from git), copied into `into` as
    baseline_<name>; None when git or the commit is not there."""
    try:
        text = subprocess.run(
            ["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True, cwd=str(ROOT)
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    into.mkdir(parents=True, exist_ok=True)
    copy = into / f"baseline_{Path(path).name}"
    copy.write_text(text)
    return copy


# ----------------------------------------------------------------------------- limits


def per_core_image_rates(fixture: FixtureInfo, scratch: Path, sample: int = 300) -> dict:
    """Images/s of one core: reading a file and checking it as the builder does (draft-mode JPEG
    decode), as the previous builder did (a full decode), and reading alone; median of 3 passes."""
    files = sorted(Path(fixture.images_dir).iterdir())[:sample]
    copies = Path(scratch) / "copies"

    def read():
        for path in files:
            path.read_bytes()

    def draft():
        for path in files:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.draft("RGB", (image.width // 8, image.height // 8))
                image.load()

    def full():
        for path in files:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                image.load()

    def draft_and_write():  # the image phase's floor: read, check, write a copy (folders made beforehand)
        for path in files:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (image.width // 8, image.height // 8))
                image.load()
            (copies / path.name).write_bytes(data)

    rates = {}
    for name, work in (
        ("read", read),
        ("read_and_draft_decode", draft),
        ("read_and_full_decode", full),
        ("read_check_and_write", draft_and_write),
    ):
        times = []
        for _ in range(3):
            shutil.rmtree(copies, ignore_errors=True)
            copies.mkdir(parents=True)
            start = time.process_time()  # CPU time of this process: what one core does, whatever others run
            work()
            times.append(time.process_time() - start)
        rates[name] = len(files) / max(statistics.median(times), 1e-9)
    shutil.rmtree(copies, ignore_errors=True)
    rates["images"] = len(files)
    return rates


# ----------------------------------------------------------------------------- builder section

_BUILD = r"""
{load}
# The image phase: store_images now; the baseline read and decoded the images inside _write_split.
timed(builder, "store_images" if hasattr(builder, "store_images") else "_write_split", "image_phase")
# read_source: the source's reader as data_builder.py calls it (_read_source before it moved into
# omninegclip/building/inputs.py).
for name, key in (("read_source", "read_annotations"), ("_read_source", "read_annotations"),
                  ("build_from_source", "build_rows"), ("_negate_all", "negations"),
                  ("quality_gate", "quality_gate"), ("over_context_length", "token_count")):
    if hasattr(builder, name):
        timed(builder, name, key)
summary = builder.main(payload["argv"])
result = {{"rows_out": sum(summary["rows_out"].values()), "images": summary.get("images"),
          "rows_in": summary["rows_in"]}}
"""

_READ_COCO = r"""
sources = {load}
items = sources.read_coco(
    payload["captions"], payload["instances"], payload["images"], captions_per_image=0, **payload["kwargs"]
).items
result = {{"captions": len(items)}}
"""


def _build(args, fixture: FixtureInfo, out: Path, module: Path | None, num_proc: int | None) -> dict:
    argv = [
        "coco",
        "--captions",
        fixture.captions_file,
        "--instances",
        fixture.instances_file,
        "--images",
        fixture.images_dir,
        "--captions_per_image",
        "0",
        "--out",
        str(out),
        "--overwrite",
        "--no_progress",
    ]
    if num_proc is not None:
        argv += ["--num_proc", str(num_proc)]
    if module is None:  # the same rows as a baseline from before the statement family's extra rows
        argv += ["--statement_rate", "0"]
    load = (
        "import data_builder as builder"
        if module is None
        else f"builder = load({str(module)!r}, 'baseline_data_builder')"
    )
    shutil.rmtree(out, ignore_errors=True)
    measured = run_child(_BUILD.format(load=load), {"argv": argv})
    measured["bytes_on_disk"] = _folder_bytes(out)
    measured["image_bytes_on_disk"] = _folder_bytes(out, "images")
    shutil.rmtree(out, ignore_errors=True)
    return measured


def section_builder(args, fixture: FixtureInfo) -> dict:
    out = Path(args.out)
    rates = per_core_image_rates(fixture, out)
    runs = {}
    cores = len(os.sched_getaffinity(0))
    for num_proc in sorted({1, args.num_proc or cores}):
        runs[f"new_num_proc_{num_proc}"] = _build(args, fixture, out / "build", None, num_proc)
    if args.baseline != "none":
        module = baseline_file(args.baseline, "data_builder.py", out / "baseline")
        if module is not None:
            runs["baseline"] = _build(args, fixture, out / "build", module, None)
    annotations = {}
    if args.full_size_annotations:
        full = make_fixture(
            out / "fixture_full", images=min(args.images, 200), full_size_annotations=True, progress=False
        )
        payload = {
            "captions": full.captions_file,
            "instances": full.instances_file,
            "images": full.images_dir,
            "kwargs": {},
        }
        for num_proc in sorted({1, args.num_proc or cores}):
            annotations[f"new_num_proc_{num_proc}"] = run_child(
                _READ_COCO.format(load="__import__('omninegclip.building.sources').sources"),
                {**payload, "kwargs": {"num_proc": num_proc}},
            )
        old = (
            baseline_file(args.baseline, "omninegclip/building/sources.py", out / "baseline")
            if args.baseline != "none"
            else None
        )
        if old is not None:
            annotations["baseline"] = run_child(
                _READ_COCO.format(load=f"load({str(old)!r}, 'baseline_sources')"), payload
            )
        annotations["files_mb"] = {
            "captions": Path(full.captions_file).stat().st_size / 2**20,
            "instances": Path(full.instances_file).stat().st_size / 2**20,
        }
        annotations["fixture"] = asdict(full)
    return {"fixture": asdict(fixture), "per_core_rates": rates, "builds": runs, "annotations": annotations}


def builder_table(result: dict) -> list[str]:
    fixture, rates, builds = result["fixture"], result["per_core_rates"], result["builds"]
    lines = [
        f"Fixture: {fixture['images']} JPEGs, mean {fixture['mean_image_bytes'] / 1024:.1f} KiB "
        f"({fixture['image_bytes'] / 2**20:.1f} MiB in all), {fixture['captions']} captions "
        "(`--captions_per_image 0`).",
        "",
        f"Per-core limit (CPU time, {rates['images']} images, median of 3): read + draft-mode check "
        f"**{rates['read_and_draft_decode']:.0f} images/s**; read + full decode (the previous check) "
        f"{rates['read_and_full_decode']:.0f} images/s; read alone {rates['read']:.0f} images/s; read + draft-mode "
        "check + write a copy (the image phase's floor, its limit below) "
        f"**{rates['read_check_and_write']:.0f} images/s**.",
        "",
        "| build | wall s | rows/s | image phase s | image phase CPU ms/image | limit: CPU ms/image "
        "| image phase images/s | limit: workers x per-core images/s | peak RSS MB | written MB "
        "| written / input image bytes | load before → after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in builds.items():
        rows = run["result"]["rows_out"]
        images = (run["result"].get("images") or {}).get("files") or fixture["images"]
        phase, phase_cpu = run["timings"].get("image_phase"), run["timings"].get("image_phase_cpu")
        baseline = name == "baseline"
        workers = 1 if baseline else int(name.rsplit("_", 1)[1])
        rate = rates["read_and_full_decode"] if baseline else rates["read_check_and_write"]
        per_image = rows / images if baseline else 1  # the baseline decoded each image once per row
        lines.append(
            f"| {name} | {run['wall_s']:.1f} | {rows / run['wall_s']:.0f} | {phase:.2f} "
            f"| {1000 * phase_cpu / images:.2f} | {1000 * per_image / rate:.2f} "
            f"| {images / phase:.0f} | {workers * rate / per_image:.0f} | {run['peak_rss_mb']:.0f} "
            f"| {run['bytes_on_disk'] / 2**20:.1f} "
            f"| {run['bytes_on_disk'] / fixture['image_bytes']:.2f} | {run['load_before']} → {run['load_after']} |"
        )
    lines += [
        "",
        "Where the wall time goes (s; `build_rows` holds the negations and the image phase):",
        "",
        "| build | " + " | ".join(PHASES) + " | all |",
        "|---|" + "---:|" * (len(PHASES) + 1),
    ]
    for name, run in builds.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{run['timings'][phase]:.2f}" if phase in run["timings"] else "-" for phase in PHASES)
            + f" | {run['wall_s']:.2f} |"
        )
    one, many = (
        builds.get("new_num_proc_1"),
        [run for name, run in builds.items() if name.startswith("new_num_proc_") and not name.endswith("_1")],
    )
    if one and many and one["timings"].get("image_phase") and many[0]["timings"].get("image_phase"):
        lines += [
            "",
            f"Image phase speed-up from 1 to {len(os.sched_getaffinity(0))} workers: "
            f"{one['timings']['image_phase'] / many[0]['timings']['image_phase']:.2f}x "
            "(target 1.6x on an idle 2-core machine).",
        ]
    if "baseline" in builds:
        lines += [
            "",
            "The baseline decodes every image in full once per caption row (its limits: the full-decode rate, "
            "per row) and stores the image bytes in every row; its image phase is its whole row writer "
            "(decode + Arrow).",
        ]
    lines += [
        "",
        "CPU ms/image: the image phase's CPU time (the process and its workers) over the images; the limit: "
        "reading and checking one image on one core. Peak RSS: the building process (forked workers share its "
        "pages and hold one image each).",
    ]
    annotations = result.get("annotations") or {}
    if annotations:
        lines += [
            "",
            f"COCO reader on full-size annotations ({annotations['fixture']['annotated_images']} images, "
            f"{annotations['fixture']['captions']} captions, {annotations['fixture']['instances']} instances; "
            f"JSON {annotations['files_mb']['captions']:.0f} + {annotations['files_mb']['instances']:.0f} MB):",
            "",
            "| reader | wall s | peak RSS MB | load before → after |",
            "|---|---:|---:|---|",
        ]
        for name, run in annotations.items():
            if isinstance(run, dict) and "wall_s" in run:
                lines.append(
                    f"| {name} | {run['wall_s']:.1f} | {run['peak_rss_mb']:.0f} "
                    f"| {run['load_before']} → {run['load_after']} |"
                )
    return lines


PHASES = ("read_annotations", "build_rows", "negations", "image_phase", "quality_gate", "token_count")
SECTIONS = {
    "builder": (section_builder, builder_table),
    "preparation": (section_preparation, preparation_table),  # bench/bench_prep.py: train.py's side
    "input": (section_input, input_table),
}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"Comma-separated, of: {', '.join(SECTIONS)} (default: all)."
    )
    parser.add_argument(
        "--out", default="runs/bench_data", help="Folder for results.json, results.md and the fixtures."
    )
    parser.add_argument("--images", type=int, default=1000, help="Images in the fixture (5 captions each).")
    parser.add_argument(
        "--num_proc", type=int, help="Workers of the parallel build (default: the cores); a build with 1 runs too."
    )
    parser.add_argument(
        "--baseline", default=BASELINE, help="Git commit whose builder runs as the previous path ('none': skip)."
    )
    parser.add_argument(
        "--full_size_annotations",
        action="store_true",
        help="Also time the COCO reader on train2017-size annotation files.",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="preparation: also embed the images with a ViT-B/32-geometry tower on this device (cuda)",
    )
    parser.add_argument(
        "--dtype", default=None, choices=["fp32", "bf16"], help="preparation on cuda: the tower's autocast precision"
    )
    args = parser.parse_args(argv)
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in sections if name not in SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fixture = make_fixture(out / "fixture", images=args.images, progress=False)
    results = {"machine": machine(), "arguments": vars(args), "sections": {}}
    for name in sections:
        measure, _ = SECTIONS[name]
        results["sections"][name] = measure(args, fixture)
    results["machine"]["load_average_at_end"] = _load()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Data benchmark",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}; load average {results['machine']['load_average_at_start']} "
        f"at the start, {results['machine']['load_average_at_end']} at the end.",
        "",
    ]
    for name in sections:
        lines += [f"## {name}", ""] + SECTIONS[name][1](results["sections"][name]) + [""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
