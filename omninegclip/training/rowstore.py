"""A split's prepared rows as flat arrays, in memory or in files of a folder.

Per caption set (by `CaptionSet.name`), the token ids of every row one after the other in one
flat array (uint16 for CLIP's vocabulary, int32 otherwise) and each row's start (`offsets`, rows +
1, int64): a row with no such caption has length 0. Per row: its unique image (an index into the
split's `ImageRefs` and image embeddings), whether its texts can be used, and how many of its
captions were cut to the token limit. `gather` pads a batch of rows to its longest caption without
a Python loop over the rows.

On disk (`RowStoreWriter`, then `RowStore.open`) each array is one `.npy` file. The token files are
read a batch at a time with positioned reads (`FlatFile`): what was read stays in the page cache,
shared by every process of the machine, not in a process's memory. The small per-row arrays are
memory-mapped. The writer writes chunk by chunk with plain file writes (no array of all rows is
ever held), for preparations larger than memory.

Public surface: `RowStore`, `RowStoreWriter`, `FlatFile`, `token_dtype`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META_FILE = "rows.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


class FlatFile:
    """A flat array in an `.npy` file, read a few slices at a time with positioned reads (`os.pread`):
    what a batch read stays in the page cache (shared by every process of the machine) and not in
    this process's memory, as pages of a memory map would. Pickles as its path."""

    def __init__(self, path: Path):
        mapped = np.load(path, mmap_mode="r")
        self.path, self.dtype, self.length, self.offset = Path(path), mapped.dtype, len(mapped), mapped.offset
        del mapped
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "_fd"} | {"_fd": None}

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def slices(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The values of `[start, start + length)` for each pair, one after the other."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        chunks = [
            os.pread(self._fd, int(length) * size, self.offset + int(start) * size)
            for start, length in zip(starts.tolist(), lengths.tolist())
            if length
        ]
        return np.frombuffer(b"".join(chunks), dtype=self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self.slices(np.zeros(1, dtype=np.int64), np.array([self.length])), dtype=dtype)


@dataclass
class RowStore:
    """Rows of one split (see the module docstring); every array may be a read-only memory map."""

    ids: dict[str, np.ndarray]
    offsets: dict[str, np.ndarray]
    image_index: np.ndarray
    usable: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.image_index)

    @classmethod
    def from_lists(cls, tokens: dict[str, list[list[int]]], image_index, pad_token_id: int = 0) -> "RowStore":
        """A store in memory from token lists (one list per row and caption set), every row usable."""
        rows = len(image_index)
        ids, offsets = {}, {}
        for name, sequences in tokens.items():
            largest = max((max(sequence, default=0) for sequence in sequences), default=0)
            lengths = np.fromiter((len(sequence) for sequence in sequences), dtype=np.int64, count=rows)
            offsets[name] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = [token for sequence in sequences for token in sequence]
            ids[name] = np.asarray(flat, dtype=token_dtype(max(largest, pad_token_id) + 1))
        return cls(
            ids,
            offsets,
            np.asarray(image_index, dtype=np.int64),
            np.ones(rows, dtype=bool),
            np.zeros(rows, dtype=np.uint8),
        )

    def in_memory(self) -> "RowStore":
        """The same rows, read into memory (for a store whose folder is about to go)."""
        return RowStore(
            {name: np.array(flat) for name, flat in self.ids.items()},
            {name: np.array(offsets) for name, offsets in self.offsets.items()},
            np.array(self.image_index),
            np.array(self.usable),
            np.array(self.truncated),
        )

    def has(self, name: str) -> bool:
        return name in self.ids

    def lengths(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        offsets = self.offsets[name]
        if rows is None:
            return np.diff(offsets)
        return offsets[rows + 1] - offsets[rows]

    def gather(self, name: str, rows: np.ndarray, pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of `rows` padded to their longest (int64, (len(rows), longest >= 1)), and their lengths."""
        starts = np.asarray(self.offsets[name][rows], dtype=np.int64)
        lengths = np.asarray(self.offsets[name][rows + 1], dtype=np.int64) - starts
        longest = max(1, int(lengths.max(initial=0)))
        padded = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
        # Each value's column in its row: its place among the values, less the row's first place.
        columns = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = self.ids[name]
        if isinstance(flat, FlatFile):
            values = flat.slices(starts, lengths)
        else:
            values = flat[np.repeat(starts, lengths) + columns]
        padded[np.repeat(np.arange(len(rows)), lengths), columns] = values
        return padded, lengths

    def row_tokens(self, name: str, row: int) -> list[int]:
        """One row's token ids of a caption set."""
        ids, length = self.gather(name, np.array([row]), 0)
        return ids[0, : int(length[0])].tolist()

    # -- disk --------------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> "RowStore | None":
        """The store saved in `folder`, memory-mapped; None when the folder holds no complete store."""
        try:
            meta = json.loads((folder / META_FILE).read_text())
            if meta.get("format") != FORMAT_VERSION:
                return None
            load = lambda stem: np.load(folder / f"{stem}.npy", mmap_mode="r")  # noqa: E731
            store = cls(
                {name: FlatFile(folder / f"ids.{name}.npy") for name in meta["caption_sets"]},
                {name: load(f"offsets.{name}") for name in meta["caption_sets"]},
                load("image_index"),
                load("usable"),
                load("truncated"),
            )
        except (OSError, ValueError, KeyError):
            return None
        rows = meta.get("rows")
        if any(len(array) != rows for array in (store.image_index, store.usable, store.truncated)) or any(
            len(offsets) != rows + 1 or int(offsets[-1]) != len(store.ids[name])
            for name, offsets in store.offsets.items()
        ):
            return None
        return store


class RowStoreWriter:
    """Writes a `RowStore` into `folder` a chunk of rows at a time (`append`), then `close()`: the
    metadata file, written last, marks the folder complete."""

    def __init__(self, folder: Path, names: list[str], dtype: np.dtype):
        self.folder, self.names, self.dtype = folder, names, np.dtype(dtype)
        folder.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self.tokens = {name: 0 for name in names}
        self._files = {}
        for stem in [f"ids.{name}" for name in names] + [f"offsets.{name}" for name in names]:
            self._files[stem] = open(folder / f"{stem}.raw", "wb")
        for stem in ("image_index", "usable", "truncated"):
            self._files[stem] = open(folder / f"{stem}.raw", "wb")
        for name in names:
            self._files[f"offsets.{name}"].write(np.zeros(1, dtype=np.int64).tobytes())

    def append(
        self,
        ids: dict[str, np.ndarray],
        lengths: dict[str, np.ndarray],
        usable: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """A chunk of rows: per caption set its rows' token ids one after the other and their lengths."""
        for name in self.names:
            self._files[f"ids.{name}"].write(np.ascontiguousarray(ids[name], dtype=self.dtype).tobytes())
            ends = self.tokens[name] + np.cumsum(lengths[name], dtype=np.int64)
            self._files[f"offsets.{name}"].write(ends.tobytes())
            self.tokens[name] = int(ends[-1]) if len(ends) else self.tokens[name]
        self._files["usable"].write(np.asarray(usable, dtype=bool).tobytes())
        self._files["truncated"].write(np.asarray(truncated, dtype=np.uint8).tobytes())
        self.rows += len(usable)

    def close(self, image_index: np.ndarray, meta: dict | None = None) -> None:
        """Every row's image index (known only once all rows are read); then turn the raw files into
        `.npy` files (a header, then the bytes as written) and mark the folder complete."""
        if len(image_index) != self.rows:
            raise ValueError(f"{len(image_index)} image indices for {self.rows} rows")
        self._files["image_index"].write(np.asarray(image_index, dtype=np.int64).tobytes())
        shapes = {f"ids.{name}": (self.tokens[name], self.dtype) for name in self.names}
        shapes |= {f"offsets.{name}": (self.rows + 1, np.dtype(np.int64)) for name in self.names}
        shapes |= {
            "image_index": (self.rows, np.dtype(np.int64)),
            "usable": (self.rows, np.dtype(bool)),
            "truncated": (self.rows, np.dtype(np.uint8)),
        }
        for stem, handle in self._files.items():
            handle.close()
            length, dtype = shapes[stem]
            _raw_to_npy(self.folder / f"{stem}.raw", self.folder / f"{stem}.npy", length, dtype)
        record = {"format": FORMAT_VERSION, "rows": self.rows, "caption_sets": self.names, **(meta or {})}
        partial = self.folder / f"{META_FILE}.partial"
        partial.write_text(json.dumps(record))
        os.replace(partial, self.folder / META_FILE)


def _raw_to_npy(raw: Path, target: Path, length: int, dtype: np.dtype) -> None:
    """Prefix the raw bytes with an `.npy` header, copying them through in chunks (never all in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    with open(target, "wb") as out, open(raw, "rb") as source:
        np.lib.format.write_array_header_1_0(out, header)
        while chunk := source.read(1 << 24):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    raw.unlink()
