"""Training images, decoded once: the unique images of a split, decoded and preprocessed in parallel
DataLoader workers, checked in the same pass, embedded by the frozen image tower on the training
device in its precision, and cached on disk.

Public surface:
- `ImageRefs.find(datasets, column, names)`: the unique images of some datasets' rows (rows that name
  the same file, or hold the same bytes, share one image) and each row's image index. Nothing is
  decoded or copied: a unique image is a (dataset, row) reference into the data as loaded.
- `ImageTransform.for_processor(image_processor)`: what a worker does to one image: decode it
  (once), convert it to RGB with `omninegclip.common.safe_load.open_rgb_image`, and preprocess it. For
  CLIP's usual settings (shortest-edge resize, centre crop, rescale, normalise) this is a plain
  PIL/numpy path whose JPEG decoding uses draft mode (the decoder's own 1/2, 1/4, 1/8 scaling to
  no smaller than the resize target); otherwise the image processor itself runs in the worker.
- `image_pass(refs, transform, ...)`: one pass over the unique images in a DataLoader with worker
  processes; returns an `ImagePass` (the embeddings, or None when `model` is None, and the unreadable
  images by index). With `cache_dir` the result is stored under a key of the vision weights, the
  preprocessing, the precision and the images, and a relaunch reads it without decoding anything.
  The file is written atomically (a temporary name, then a rename); one that cannot be read
  (truncated, corrupt, of another shape) is named in a warning, then rebuilt and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import xxhash
from PIL import Image
from tqdm.auto import tqdm

from omninegclip.common.embedding import _features
from omninegclip.common.outputs import is_alive
from omninegclip.common.safe_load import UnreadableImage, first_line, open_rgb_image

logger = logging.getLogger(__name__)

DECODE_CHUNK = 32  # images a worker decodes and hands over at once


def _base_folder(name: str) -> Path | None:
    """Where relative image paths of a dataset given as data files (or a folder) are looked up."""
    first = Path(name.split(",")[0])
    if first.is_file():
        return first.parent
    return first if first.is_dir() else None


def _resolve(reference, base: Path | None):
    """An image path as written in the data: beside the data file when it is there, else as written."""
    if not isinstance(reference, str) or not reference.strip():
        return None
    written = Path(reference).expanduser()
    beside = base / written if base is not None and not written.is_absolute() else None
    chosen = beside if beside is not None and beside.is_file() else written
    return str(chosen.resolve()) if chosen.is_file() else reference


def image_key(value, base: Path | None) -> tuple[int, int] | None:
    """What an image is, as a 128-bit hash in two uint64: its bytes where the data holds them, else
    its resolved path (the file's size and time are added per launch, `ImageRefs.stat_digest`); None
    when the value names nothing (the image then counts as its own)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            digest = xxhash.xxh3_128_intdigest(b"bytes:" + xxhash.xxh3_128_digest(value["bytes"]))
            return digest >> 64, digest & (2**64 - 1)
        value = value.get("path")
    resolved = _resolve(value, base)
    if resolved is None:
        return None
    digest = xxhash.xxh3_128_intdigest(("path:" + resolved).encode())
    return digest >> 64, digest & (2**64 - 1)


def first_occurrences(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows' image keys ((rows, 2) uint64; (0, 0) = an image of its own): the row of each unique
    image's first occurrence, in order of first occurrence, and each row's unique image index."""
    rows = len(keys)
    if rows == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    own = (keys[:, 0] == 0) & (keys[:, 1] == 0)
    keyed = np.ascontiguousarray(keys, dtype=np.uint64).copy()
    keyed[own, 1] = np.arange(rows, dtype=np.uint64)[own]  # (0, row): distinct from every hash's pair
    packed = keyed.view(np.dtype([("hi", np.uint64), ("lo", np.uint64)])).reshape(rows)
    _, first, inverse = np.unique(packed, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    by_first = np.argsort(first, kind="stable")
    rank[by_first] = np.arange(len(first))
    return first[by_first].astype(np.int64), rank[inverse.reshape(-1)]


@dataclass
class ImageRefs:
    """The unique images of a split: `refs[i] = (dataset, row)` of image i's first row, read from
    `raw[dataset]` (the image column, undecoded: `{"bytes", "path"}` or a path string)."""

    raw: list[datasets.Dataset]
    column: str
    bases: list[Path | None]
    refs: np.ndarray  # (images, 2) int64
    digest: str  # what the images are: their identities, in order, and the files' sizes and times (cache key)
    key_digest: str = ""  # their identities alone (stored with the prepared rows)

    def __len__(self) -> int:
        return len(self.refs)

    @classmethod
    def from_keys(
        cls,
        sources: list[datasets.Dataset],
        column: str,
        names: list[str],
        keys: np.ndarray,
        starts: np.ndarray,
        positions: np.ndarray | None = None,
    ) -> tuple["ImageRefs", np.ndarray]:
        """The unique images of rows with `image_key`s `keys` ((rows, 2) uint64; (0, 0): an image of
        its own), and each row's image index. The rows are those of `sources[k]` one after the other
        (source k's first at `starts[k]`), or those at `positions` in that numbering."""
        first, index = first_occurrences(keys)
        placed = first if positions is None else np.asarray(positions, dtype=np.int64)[first]
        source = np.searchsorted(starts, placed, side="right") - 1
        refs = np.stack([source, placed - starts[source]], axis=1).astype(np.int64).reshape(-1, 2)
        key_digest = hashlib.sha256(np.ascontiguousarray(keys[first], dtype=np.uint64).tobytes()).hexdigest()
        return cls.of(sources, column, names, refs, key_digest), index

    @classmethod
    def of(
        cls, sources: list[datasets.Dataset], column: str, names: list[str], refs: np.ndarray, key_digest: str
    ) -> "ImageRefs":
        """The unique images at `refs` ((images, 2): dataset, row) of `sources`, whose identities
        (`image_key`s, in order) hash to `key_digest`; the files' sizes and times are read now."""
        raw, bases = [], []
        for dataset, name in zip(sources, names):
            if isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
            raw.append(dataset.select_columns([column]))
            bases.append(_base_folder(name))
        found = cls(raw, column, bases, np.asarray(refs, dtype=np.int64).reshape(-1, 2), "", key_digest)
        found.digest = hashlib.sha256((key_digest + found.stat_digest()).encode()).hexdigest()
        return found

    @classmethod
    def find(
        cls, sources: list[datasets.Dataset], column: str, names: list[str], rows: list[list[int]]
    ) -> tuple["ImageRefs", list[np.ndarray]]:
        """The unique images among `rows[k]` of `sources[k]`, and the image index of each of those rows.
        An image is its path when the data holds only a path, else its bytes (hashed): rows that
        repeat an image (several captions of one photo, a dataset mixed in twice) share it."""
        keys, starts, size = [], [], 0
        for dataset, name, keep in zip(sources, names, rows):
            base = _base_folder(name)
            if isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
            values = dataset.select_columns([column]).select(list(keep))[column] if len(keep) else []
            keys += [image_key(value, base) or (0, 0) for value in values]
            starts.append(size)
            size += len(dataset)
        starts = np.array(starts, dtype=np.int64)
        positions = np.concatenate([start + np.asarray(keep, dtype=np.int64) for start, keep in zip(starts, rows)])
        keys = np.array(keys, dtype=np.uint64).reshape(-1, 2)
        found, index = cls.from_keys(sources, column, names, keys, starts, positions)
        bounds = np.cumsum([0] + [len(keep) for keep in rows])
        return found, [index[low:high] for low, high in zip(bounds[:-1], bounds[1:])]

    def stat_digest(self, chunk: int = 4096) -> str:
        """The size and modification time of every image given as a file: a file replaced in place
        is another image (the cache key is made of these)."""
        digest = hashlib.sha256()
        for start in range(0, len(self), chunk):
            for value in self.read(list(range(start, min(start + chunk, len(self))))):
                if isinstance(value, str):
                    try:
                        stat = os.stat(value)
                        digest.update(f"{value}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
                    except OSError:  # missing: the pass counts it
                        digest.update(f"{value}:missing\0".encode())
        return digest.hexdigest()

    def read(self, indices: list[int]) -> list:
        """The undecoded image values of some unique images (paths resolved), in the order asked."""
        values = [None] * len(indices)
        by_source: dict[int, list[int]] = {}
        for position, index in enumerate(indices):
            by_source.setdefault(int(self.refs[index, 0]), []).append(position)
        for source, positions in by_source.items():
            rows = [int(self.refs[indices[position], 1]) for position in positions]
            for position, value in zip(positions, self.raw[source][rows][self.column]):
                values[position] = _located(value, self.bases[source])
        return values


def _located(value, base: Path | None):
    if isinstance(value, dict):
        return value if value.get("bytes") is not None else _resolve(value.get("path"), base)
    return _resolve(value, base)


# ----------------------------------------------------------------------------------------------
# One image, in a worker
# ----------------------------------------------------------------------------------------------


def _value(setting, key: str):
    return setting.get(key) if isinstance(setting, dict) else getattr(setting, key, None)


@dataclass(frozen=True)
class ImageTransform:
    """Decode and preprocess one image to `pixel_values` (3, H, W) float32. `plain` is set when the
    processor's settings are CLIP's usual ones, which the PIL/numpy path reproduces; else the
    processor runs on the decoded image."""

    processor: object
    plain: dict | None = None
    draft: bool = True

    @classmethod
    def for_processor(cls, image_processor, draft: bool = True) -> "ImageTransform":
        p = image_processor
        size, crop = getattr(p, "size", None), getattr(p, "crop_size", None)
        shortest = _value(size, "shortest_edge")
        others = [_value(size, key) for key in ("height", "width", "longest_edge", "max_height", "max_width")]
        usual = (
            getattr(p, "do_resize", False)
            and shortest
            and not any(others)
            and getattr(p, "do_center_crop", False)
            and _value(crop, "height")
            and _value(crop, "width")
            and getattr(p, "do_rescale", False)
            and getattr(p, "do_normalize", False)
            and getattr(p, "do_convert_rgb", True) is not False
            and not getattr(p, "do_pad", None)
            and int(getattr(p, "resample", -1)) == int(Image.Resampling.BICUBIC)
            and shortest >= max(_value(crop, "height") or 0, _value(crop, "width") or 0)  # the crop always fits
        )
        plain = None
        if usual:
            plain = {
                "shortest_edge": int(shortest),
                "crop": (int(_value(crop, "height")), int(_value(crop, "width"))),
                "scale": float(p.rescale_factor),
                "mean": tuple(float(x) for x in p.image_mean),
                "std": tuple(float(x) for x in p.image_std),
            }
        return cls(p, plain, draft)

    def describe(self) -> str:
        """For the cache key: what this transform computes."""
        if self.plain is None:
            return "processor"
        return json.dumps({"plain": self.plain, "draft": self.draft}, sort_keys=True)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shortest-edge resize, as the image processors compute it."""
        shortest = self.plain["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(shortest * long / short)
        return (shortest, new_long) if width <= height else (new_long, shortest)

    def decode(self, value) -> np.ndarray:
        """What a worker hands over: on the plain path the resized, cropped image as uint8 (H, W, 3)
        (a quarter of the bytes of float pixel values; `normalize` finishes it on the device),
        otherwise the processor's float32 pixel values (3, H, W)."""
        if self.plain is None:
            return self._processed(open_rgb_image(value))
        original = {}

        def draft_to(size: tuple[int, int]) -> tuple[int, int] | None:
            original["size"] = size
            return self.resized_size(*size) if self.draft else None

        image = open_rgb_image(value, draft=draft_to)
        target = self.resized_size(*original.get("size", image.size))
        if image.size != target:
            image = image.resize(target, Image.Resampling.BICUBIC)
        crop_height, crop_width = self.plain["crop"]
        width, height = image.size
        top, left = (height - crop_height) // 2, (width - crop_width) // 2
        return np.asarray(image, dtype=np.uint8)[top : top + crop_height, left : left + crop_width].copy()

    def _processed(self, image: Image.Image) -> np.ndarray:
        return np.asarray(self.processor(images=[image], return_tensors="np")["pixel_values"][0], dtype=np.float32)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """A batch of `decode` outputs as pixel values (B, 3, H, W) float32, where it lies (the GPU)."""
        if pixels.dtype != torch.uint8:
            return pixels
        mean = torch.tensor(self.plain["mean"], dtype=torch.float32, device=pixels.device)
        std = torch.tensor(self.plain["std"], dtype=torch.float32, device=pixels.device)
        return ((pixels.float() * self.plain["scale"] - mean) / std).permute(0, 3, 1, 2).contiguous()

    def __call__(self, value) -> np.ndarray:
        """One image's pixel values (3, H, W) float32, as the image processor gives them."""
        return self.normalize(torch.from_numpy(self.decode(value))[None])[0].numpy()


class _Decoded(torch.utils.data.Dataset):
    """Unique image i -> (i, `decode` output or None, the UnreadableImage or None), read in chunks."""

    def __init__(self, refs: ImageRefs, transform: ImageTransform | None):
        self.refs, self.transform = refs, transform

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]):
        out = []
        for index, value in zip(indices, self.refs.read(indices)):
            try:
                pixels = self.transform.decode(value) if self.transform is not None else open_rgb_image(value).close()
                out.append((index, pixels, None))
            except UnreadableImage as error:
                out.append((index, None, error))
        return out

    def collate(self, items):
        """(indices, the chunk's `decode` outputs stacked (None when only checked), errors)."""
        good = [(index, pixels) for index, pixels, error in items if error is None]
        errors = [(index, error.kind, str(error)) for index, _, error in items if error is not None]
        indices = torch.tensor([index for index, _ in good], dtype=torch.long)
        if not good or good[0][1] is None:
            return indices, None, errors
        return indices, torch.from_numpy(np.stack([pixels for _, pixels in good])), errors


# ----------------------------------------------------------------------------------------------
# The pass over every unique image
# ----------------------------------------------------------------------------------------------


@dataclass
class ImagePass:
    """Per unique image: its embedding (unnormalised, on the CPU, in the dtype the tower gave it:
    bf16 or fp16 under autocast, else float32; memory-mapped when read from or written to the
    cache; None when only checked) and, for the images that cannot be used, why."""

    embeds: torch.Tensor | None
    unreadable: dict[int, UnreadableImage] = field(default_factory=dict)


def default_workers() -> int:
    """Decoding workers when none are asked for: the cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for module in (model.vision_model, model.visual_projection):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model, transform: ImageTransform | None, refs: ImageRefs, precision: str) -> str:
    """What a cached pass depends on: the vision weights (embedding only), the preprocessing (the
    image processor's settings and the decoding path), the precision, and the images themselves."""
    digest = hashlib.sha256()
    if model is not None:
        digest.update(_weights_digest(model).encode())
        digest.update(transform.processor.to_json_string().encode())
        digest.update(transform.describe().encode())
        digest.update(precision.encode())
    digest.update(f"{refs.digest}:{len(refs)}".encode())
    return digest.hexdigest()[:32]


SAFETENSORS_DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.uint16),
}
TORCH_DTYPES = {code: dtype for dtype, (code, _) in SAFETENSORS_DTYPES.items()}


def _read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (its JSON) and where its data starts; a ValueError when the file is
    not one or is shorter than its header says (a copy cut short)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{size} bytes: not a safetensors file")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, 100 * 2**20):
            raise ValueError(f"a header of {length} bytes in a file of {size}: not a safetensors file, or cut short")
        header = json.loads(handle.read(length))
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    if size < 8 + length + end:
        raise ValueError(f"{size} bytes, its header describes {8 + length + end}: cut short")
    return header, 8 + length


def random_access(array: np.ndarray) -> np.ndarray:
    """A memory-mapped array read a few rows at a time (batches of random rows): without the kernel's
    read-ahead, a process holds the pages its batches touch and not the whole file around them."""
    mapped = getattr(array, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return array


def _mapped_tensor(path: Path, entry: dict, start: int) -> torch.Tensor:
    """One tensor of a safetensors file, memory-mapped (copy on write): only the pages read are loaded."""
    dtype = TORCH_DTYPES[entry["dtype"]]
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size():
        raise ValueError(f"its tensor of shape {shape} has {end - begin} bytes")
    array = random_access(
        np.memmap(path, dtype=SAFETENSORS_DTYPES[dtype][1], mode="c", offset=start + begin, shape=shape)
    )
    tensor = torch.from_numpy(array)
    return tensor.view(dtype) if dtype == torch.bfloat16 else tensor


def _load_cached(path: Path, count: int, embedded: bool) -> ImagePass | None:
    """The pass stored at `path` for `count` images (the embeddings memory-mapped), or None (with a
    warning naming the file) when the file cannot be read (truncated, e.g. a copy cut short, or
    corrupt) or does not hold such a pass (another shape). The caller then decodes the images again
    and replaces the file."""
    try:
        header, start = _read_header(path)  # the unreadable images ride in the header's metadata
        entry = header.get("image_embeds")
        embeds = _mapped_tensor(path, entry, start) if entry is not None else None
        listed = json.loads((header.get("__metadata__") or {}).get("unreadable", "{}"))
        unreadable = {int(index): UnreadableImage(kind, message) for index, (kind, message) in listed.items()}
        problem = None
        if embedded and (embeds is None or embeds.ndim != 2 or len(embeds) != count):
            problem = (
                f"it holds {tuple(embeds.shape) if embeds is not None else 'no'} image embeddings, "
                f"expected {count} rows"
            )
        elif not embedded and "checked" not in header:
            problem = "it is not the record of a checking pass"
        elif any(not 0 <= index < count for index in unreadable):
            problem = f"it lists unreadable images outside the {count} images"
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # ValueError: json too
        problem = first_line(error)
    if problem is not None:
        logger.warning(
            "the cached image pass %s cannot be used (%s); decoding the images again and replacing it", path, problem
        )
        return None
    return ImagePass(embeds, unreadable)


class _Embeddings:
    """Where `image_pass` puts the embeddings as they come, in the dtype the tower gives them (bf16
    or fp16 under autocast, else float32): a tensor in memory, or, with a cache file to write, a raw
    file beside it (rows written where they belong, never all held in memory)."""

    def __init__(self, rows: int, raw: Path | None):
        self.rows, self.raw = rows, raw
        self.tensor: torch.Tensor | None = None
        self.handle = None
        self.dim = self.dtype = None

    def _open(self, dim: int, dtype: torch.dtype) -> None:
        """The storage for every row, all 0 until written (the raw file is sparse)."""
        self.dim, self.dtype = dim, dtype
        if self.raw is None:
            self.tensor = torch.zeros(self.rows, dim, dtype=dtype)
        else:
            self.handle = open(self.raw, "w+b")
            self.handle.truncate(self.rows * dim * torch.empty(0, dtype=dtype).element_size())

    def put(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        features = features.detach().cpu().contiguous()
        if self.dtype is None:
            self._open(features.shape[-1], features.dtype)
        if self.tensor is not None:
            self.tensor[indices] = features
            return
        row_bytes = self.dim * features.element_size()
        data = features.view(torch.uint8).numpy().reshape(len(features), row_bytes)
        order = indices.numpy()
        breaks = np.flatnonzero(np.diff(order) != 1) + 1  # write each run of consecutive rows at once
        for run in np.split(np.arange(len(order)), breaks):
            if len(run):
                os.pwrite(self.handle.fileno(), data[run].tobytes(), int(order[run[0]]) * row_bytes)

    def finish(self, projection_dim: int) -> torch.Tensor | None:
        """The embeddings in memory; None when they went to the raw file (the cache writer maps the
        file it writes from it instead)."""
        if self.dtype is None:  # no image could be read
            self._open(projection_dim, torch.float32)
        if self.handle is not None:
            self.handle.flush()
        return self.tensor


def _partial_name(path: Path, suffix: str = "") -> Path:
    """A temporary sibling of `path`, named by host and pid: a cache folder shared by several
    machines holds the writes of each, and only this machine's processes can be known to be gone."""
    return path.with_suffix(f".partial-{socket.gethostname()}-{os.getpid()}{suffix}")


def _remove_stale_partials(path: Path) -> None:
    """What killed runs of this machine left behind (`<stem>.partial-<host>-<pid>` of processes that are gone)."""
    for stale in path.parent.glob(f"{path.stem}.partial-{socket.gethostname()}-*"):
        pid = stale.name.rpartition("-")[2].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not is_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _save_cached(path: Path, result: ImagePass, embeddings: _Embeddings | None = None) -> ImagePass:
    """`result` written as a safetensors file to a temporary sibling, flushed to disk, then renamed
    over `path`: a run killed while writing (or a full disk) leaves no partial file under the real
    name. The embeddings are copied from the raw file the pass wrote (`embeddings`), a chunk at a
    time (`image_pass` made the folder and removes the raw file). Returns the pass with its
    embeddings mapped from the file."""
    metadata = {"unreadable": json.dumps({str(i): [e.kind, str(e)] for i, e in result.unreadable.items()})}
    header: dict = {"__metadata__": metadata}
    if embeddings is not None:
        code = SAFETENSORS_DTYPES[embeddings.dtype][0]
        size = embeddings.rows * embeddings.dim * torch.empty(0, dtype=embeddings.dtype).element_size()
        header["image_embeds"] = {"dtype": code, "shape": [embeddings.rows, embeddings.dim], "data_offsets": [0, size]}
    else:
        header["checked"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    partial = _partial_name(path)
    try:
        with open(partial, "wb") as out:
            out.write(len(text).to_bytes(8, "little") + text)
            if embeddings is None:
                out.write(np.zeros(1, dtype=np.float32).tobytes())
            else:
                embeddings.handle.seek(0)
                while chunk := embeddings.handle.read(1 << 24):
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    if embeddings is None:
        return result
    header, start = _read_header(path)
    return ImagePass(_mapped_tensor(path, header["image_embeds"], start), result.unreadable)


def _decode_loader(
    refs: ImageRefs,
    transform: ImageTransform | None,
    batch_size: int,
    num_workers: int | None,
    device: torch.device | None,
) -> torch.utils.data.DataLoader:
    """The DataLoader whose worker processes decode (and, with a `transform`, preprocess) the images."""
    requested = default_workers() if num_workers is None else num_workers
    # Workers decode small chunks (each worker one chunk at a time), the tower embeds `batch_size`
    # images at once: with one batch per worker, a few large batches would leave most workers idle.
    chunk = max(1, min(DECODE_CHUNK, batch_size, -(-len(refs) // max(requested, 1))))
    chunks = -(-len(refs) // chunk)
    workers = min(requested, chunks) if chunks > 1 else 0
    decoded = _Decoded(refs, transform)
    return torch.utils.data.DataLoader(
        decoded,
        batch_size=chunk,
        num_workers=workers,
        collate_fn=decoded.collate,
        pin_memory=device is not None and device.type == "cuda",
    )


@torch.no_grad()
def image_pass(
    refs: ImageRefs,
    transform: ImageTransform | None,
    model=None,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    batch_size: int = 256,
    num_workers: int | None = None,
    cache_dir: str | Path | None = None,
    desc: str = "training images",
) -> ImagePass:
    """Decode every unique image once, in `num_workers` worker processes (default: the cores), and
    embed it with `model`'s image tower on `device` under `autocast_dtype` (None: the weights' own
    dtype) — or, with `model=None`, only check that it decodes. See the module docstring for the cache."""
    precision = str(autocast_dtype or (next(model.parameters()).dtype if model is not None else "none"))
    path = None
    if cache_dir is not None:
        stem = "image_embeds" if model is not None else "image_check"
        path = Path(cache_dir) / f"{stem}-{cache_key(model, transform, refs, precision)}.safetensors"
        cached = _load_cached(path, len(refs), model is not None) if path.is_file() else None
        if cached is not None:
            logger.info("%s: reusing %s (no image decoded)", desc, path)
            return cached
    device = (
        torch.device(device)
        if device is not None
        else (next(model.parameters()).device if model is not None else None)
    )
    loader = _decode_loader(refs, transform if model is not None else None, batch_size, num_workers, device)
    unreadable, pending = {}, []
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(path)
    sink = _Embeddings(len(refs), _partial_name(path, ".raw") if path is not None else None)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if model is not None and autocast_dtype is not None
        else contextlib.nullcontext()
    )

    def embed(pending: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        indices = torch.cat([indices for indices, _ in pending])
        with autocast:
            features = _features(model.get_image_features(pixel_values=torch.cat([pixels for _, pixels in pending])))
        sink.put(indices, features)

    try:
        for indices, pixels, errors in tqdm(
            loader,
            desc=f"{'embedding' if model is not None else 'checking'} {desc}",
            unit="chunk",
            delay=2,
            leave=False,
        ):
            unreadable.update((index, UnreadableImage(kind, message)) for index, kind, message in errors)
            if model is None or pixels is None:
                continue
            pending.append((indices, transform.normalize(pixels.to(device, non_blocking=True))))
            if sum(len(indices) for indices, _ in pending) >= batch_size:
                embed(pending)
                pending = []
        if pending:
            embed(pending)
        embeds = sink.finish(model.config.projection_dim) if model is not None else None
        result = ImagePass(embeds, unreadable)
        if path is not None:
            result = _save_cached(path, result, sink if model is not None else None)
    finally:
        if sink.handle is not None and not sink.handle.closed:
            sink.handle.close()
        if sink.raw is not None:
            sink.raw.unlink(missing_ok=True)
    return result


def pixel_values(
    transform: ImageTransform, refs: list[ImageRefs], offsets: np.ndarray, indices: np.ndarray
) -> torch.Tensor:
    """The preprocessed pixels of some images, numbered across several splits' unique images
    (`offsets[s]` = the number of split s's first image): the batch of a run whose image tower trains."""
    pixels = []
    for index in indices.tolist():
        split = int(np.searchsorted(offsets, index, side="right") - 1)
        pixels.append(torch.from_numpy(transform(refs[split].read([index - int(offsets[split])])[0])))
    return torch.stack(pixels)
