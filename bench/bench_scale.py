"""Training data at NegBench scale: host memory per row and preparation throughput (issue 28).

    python -m bench.bench_scale                      # on 2 idle CPU cores: ~10 minutes
    python -m bench.bench_scale --rows 40000,160000 --tokenize-rows 1000000 --out docs/bench

Sections:
  memory      `train.py` on a tiny CLIP, one step, three caption sets (caption, presence and absence
              negations), rows sharing `--images` small JPEGs given as paths in a parquet file, once
              per row count in `--rows`, each in a fresh process with fresh caches: the training
              process's peak RSS (VmHWM; the preparation workers are processes of their own, forked
              from it, and their largest `ru_maxrss` is reported apart), and a second launch on the
              same data and caches (what it reuses). The growth per extra row between the smallest
              and the largest count is the figure the target bounds.
  throughput  the preparation of `--tokenize-rows` caption rows (validation, tokenization of three
              caption sets, each row's image identity) with 1 and 2 worker processes: rows per second
              per core (CPU time of every process, so a busy machine does not deflate it), projected
              to 10M rows on 16 cores.
Targets (issue 28): peak RSS growth <= 300 bytes per extra row; 10M caption rows tokenized in <= 10
minutes on 16 cores (projected from the measured run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from omninegclip.common.clip import ClipSize

TARGETS = {"rss_bytes_per_row": 300, "tokenize_10m_minutes_16_cores": 10.0}
PROJECTED_ROWS, PROJECTED_CORES = 10_000_000, 16
ROW_GROUP = 16_384  # rows per parquet row group, as published datasets write them (not the whole file in one)
BENCH_CLIP = ClipSize(
    text_hidden=32,
    text_layers=4,
    text_heads=4,
    vision_hidden=32,
    vision_layers=2,
    vision_heads=4,
    image_size=32,
    patch_size=4,
    projection_dim=16,
    text_intermediate=64,
    vision_intermediate=64,
)
OBJECTS = "dog cat bicycle car chair table person umbrella bench bottle cup horse sheep bird kite".split()
PLACES = "park street kitchen beach garden office field river station market".split()


# ----------------------------------------------------------------------------------------------
# Fixture: images, a caption table, a tiny CLIP
# ----------------------------------------------------------------------------------------------


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` small JPEGs of drawn shapes (varied sizes, 64-160 px); their absolute paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(64, 161, size=2))
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, size=3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            draw.ellipse((x, y, x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))), fill=colour)
        path = folder / f"{index:06d}.jpg"
        image.save(path, quality=85)
        paths.append(str(path.resolve()))
    return paths


def caption_table(rows: int, images: list[str], seed: int = 0) -> pa.Table:
    """`rows` rows over `images` (round robin): a caption naming two objects and a place, its presence
    negation (one of them denied) and absence negation (a third object denied), all distinct texts."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.integers(0, len(OBJECTS), size=rows) for _ in range(3))
    place = rng.integers(0, len(PLACES), size=rows)
    captions, presence, absence = [], [], []
    for i in range(rows):
        first, second, third, where = OBJECTS[a[i]], OBJECTS[b[i]], OBJECTS[c[i]], PLACES[place[i]]
        captions.append(f"a {first} and a {second} in the {where}, photo {i}")
        presence.append(f"a {second} in the {where} with no {first}, photo {i}")
        absence.append(f"a {first} and a {second} in the {where} but no {third}, photo {i}")
    return pa.table(
        {
            "image": [images[i % len(images)] for i in range(rows)],
            "caption": captions,
            "presence_negated": presence,
            "absence_negated": absence,
        }
    )


def write_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from omninegclip.common.tokenization import build_clip_tokenizer

    size = BENCH_CLIP.image_size
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    CLIPModel(BENCH_CLIP.config()).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer()).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------


def train_flags(model: Path, data: Path, out: Path, cache: Path, workers: int) -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--image_embedding_cache_dir",
        str(cache / "images"),
        "--prepared_data_cache_dir",
        str(cache / "prepared"),
        "--preprocessing_num_workers",
        str(workers),
        "--report_to",
        "none",
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "32",
        "--use_cpu",
        "true",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        "--eval_split",
        "none",
        "--overwrite_output_dir",
        "true",
        "--caption_column",
        "caption",
        "--presence_column",
        "presence_negated",
        "--absence_column",
        "absence_negated",
    ]


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM), in bytes. Not `ru_maxrss`: Linux carries that over
    `exec`, so a process started by a large parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(argv: list[str]) -> None:
    """One `train.py` run in this process; prints its peak RSS (self, and the largest child)."""
    import torch

    torch.set_num_threads(1)
    import train

    started = time.perf_counter()
    train.main(argv)
    print(
        "BENCH_RESULT "
        + json.dumps(
            {
                "peak_rss_bytes": _peak_rss(),
                "largest_worker_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
                "seconds": time.perf_counter() - started,
            }
        )
    )


def run_child(flags: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", "--child", *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    found = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not found:
        raise SystemExit(f"train.py failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(found[-1].removeprefix("BENCH_RESULT "))


def section_memory(args, root: Path) -> dict:
    images = write_images(root / "images", args.images)
    model = write_tiny_clip(root / "clip")
    runs = []
    for rows in args.rows:
        data = root / f"rows-{rows}.parquet"
        pq.write_table(caption_table(rows, images), data, row_group_size=ROW_GROUP)
        cache = root / f"cache-{rows}"
        flags = train_flags(model, data, root / f"run-{rows}", cache, args.workers)
        first = run_child(flags)
        second = run_child(flags)
        disk = sum(path.stat().st_size for path in (cache / "prepared").rglob("*") if path.is_file())
        runs.append({"rows": rows, "first_launch": first, "second_launch": second, "prepared_bytes": disk})
        print(f"memory: {rows} rows: first {first}, second {second}, prepared {disk} bytes", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    low, high = runs[0], runs[-1]
    extra = high["rows"] - low["rows"]
    growth = {
        launch: (high[launch]["peak_rss_bytes"] - low[launch]["peak_rss_bytes"]) / extra
        for launch in ("first_launch", "second_launch")
    }
    return {
        "runs": runs,
        "images": args.images,
        "workers": args.workers,
        "rss_bytes_per_extra_row": growth,
        "prepared_bytes_per_row": high["prepared_bytes"] / high["rows"],
    }


def memory_table(result: dict) -> list[str]:
    lines = [
        f"`train.py` on a tiny CLIP, one step, batch 32, three caption sets, rows sharing {result['images']} JPEGs, "
        f"`--preprocessing_num_workers {result['workers']}`; peak RSS of the training process:",
        "",
        "| rows | first launch: peak RSS | largest worker | seconds | second launch: peak RSS | seconds |"
        " prepared files |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        first, second = run["first_launch"], run["second_launch"]
        lines.append(
            f"| {run['rows']:,} | {first['peak_rss_bytes'] / 2**20:,.0f} MiB | "
            f"{first['largest_worker_peak_rss_bytes'] / 2**20:,.0f} MiB | {first['seconds']:.1f} | "
            f"{second['peak_rss_bytes'] / 2**20:,.0f} MiB | {second['seconds']:.1f} | "
            f"{run['prepared_bytes'] / 2**20:,.1f} MiB |"
        )
    target = TARGETS["rss_bytes_per_row"]
    lines += ["", "| what | value | target | verdict |", "| --- | ---: | ---: | --- |"]
    for launch, value in result["rss_bytes_per_extra_row"].items():
        verdict = "met" if value <= target else "MISSED"
        lines.append(
            f"| peak RSS growth per extra row, {launch.replace('_', ' ')} | {value:.0f} B | <= {target} B | "
            f"{verdict} |"
        )
    lines.append(f"| prepared files on disk per row | {result['prepared_bytes_per_row']:.0f} B | | |")
    return lines


# ----------------------------------------------------------------------------------------------
# throughput
# ----------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def section_throughput(args, root: Path) -> dict:
    import datasets

    from omninegclip.common.tokenization import build_clip_tokenizer
    from omninegclip.training.data import CaptionColumns, tokenize_rows

    images = write_images(root / "images", args.images)
    data = root / f"rows-{args.tokenize_rows}.parquet"
    if not data.exists():
        pq.write_table(caption_table(args.tokenize_rows, images), data, row_group_size=ROW_GROUP)
    dataset = datasets.load_dataset("parquet", data_files=str(data), split="train", cache_dir=str(root / "hf"))
    columns = CaptionColumns.from_flags("image", "caption", "presence_negated", "absence_negated")
    tokenizer = build_clip_tokenizer()
    runs = []
    for workers in (1, 2):
        cache = root / f"tokenized-{workers}"
        cpu, wall = _cpu_seconds(), time.perf_counter()
        tokenize_rows(dataset, "bench", columns, tokenizer, 77, cache_dir=cache, num_proc=workers)
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
        runs.append(
            {
                "workers": workers,
                "seconds": wall,
                "cpu_seconds": cpu,
                "rows_per_second": args.tokenize_rows / wall,
                "rows_per_cpu_second": args.tokenize_rows / cpu,
            }
        )
        print(f"throughput: {runs[-1]}", flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    per_core = min(run["rows_per_cpu_second"] for run in runs)  # the lower of the two, with every process's overhead
    minutes = PROJECTED_ROWS / (per_core * PROJECTED_CORES) / 60
    return {"rows": args.tokenize_rows, "runs": runs, "rows_per_core_second": per_core, "projected_minutes": minutes}


def throughput_table(result: dict) -> list[str]:
    lines = [
        f"Preparation (validation, three caption sets tokenized, image identities) of {result['rows']:,} rows "
        "through `datasets.map(num_proc=...)` into its Arrow cache:",
        "",
        "| worker processes | wall seconds | CPU seconds (all processes) | rows/s | rows per CPU second |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['workers']} | {run['seconds']:.1f} | {run['cpu_seconds']:.1f} | {run['rows_per_second']:,.0f} | "
            f"{run['rows_per_cpu_second']:,.0f} |"
        )
    target = TARGETS["tokenize_10m_minutes_16_cores"]
    verdict = "met" if result["projected_minutes"] <= target else "MISSED"
    lines += [
        "",
        "| what | value | target | verdict |",
        "| --- | ---: | ---: | --- |",
        f"| 10M rows on 16 cores (at the lower rows per CPU second above) | {result['projected_minutes']:.1f} min | "
        f"<= {target:.0f} min | {verdict} |",
    ]
    return lines


SECTIONS = {"memory": (section_memory, memory_table), "throughput": (section_throughput, throughput_table)}


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", default="memory,throughput")
    parser.add_argument("--rows", default="40000,160000", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2, help="--preprocessing_num_workers of the memory runs")
    parser.add_argument("--tokenize-rows", type=int, default=1_000_000)
    parser.add_argument("--out", default=None, help="Folder for scale.json and scale.md (default: print only)")
    args = parser.parse_args(argv)
    results, lines = {"load_start": _load()}, ["# Scale benchmark", ""]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for name in args.sections.split(","):
            run, table = SECTIONS[name]
            results[name] = run(args, Path(tmp))
            lines += [f"## {name}", "", *table(results[name]), ""]
    results["load_end"] = _load()
    machine = (
        f"{os.cpu_count()} cores; load average {results['load_start']} at the start, {results['load_end']} at the end."
    )
    lines.insert(2, f"Machine: {machine}\n")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
        (Path(args.out) / "scale.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
