"""Reading files that come from outside without running their code or exhausting memory.

Public surface:
- `load_torch_file(path, hint="") -> object`: a `torch.save` file read with
  `torch.load(weights_only=True)`: tensors, plain containers, strings and numbers load, and NumPy
  arrays, dtypes and scalars (their reconstruction functions are allowlisted through torch's
  `safe_globals`: they build arrays from bytes and run no code); anything
  that would need arbitrary unpickling (which can run code) is refused with a `UserError` naming the
  file and the refused class or function, before any of it is built. `hint` (e.g. what the file
  should hold) is appended to every error message.
- `open_rgb_image(source, max_pixels=None) -> PIL.Image.Image`: an image file (a path, raw bytes or
  a `datasets.Image` value `{"bytes", "path"}`) fully decoded and converted to RGB by `to_rgb`;
  a corrupt, truncated, missing or oversized image
  raises `UnreadableImage` with a short reason, instead of whatever PIL, the file system or
  PIL's decompression-bomb guard would raise. `max_pixels` defaults to PIL's own limit,
  `PIL.Image.MAX_IMAGE_PIXELS` (about 89 million); larger images are refused from their header,
  never decoded.
- `to_rgb(image) -> PIL.Image.Image`: the one conversion of a decoded image to 8-bit RGB, by content:
  16-bit and 32-bit grayscale (`I;16*`, `I`) scaled by their bit depth (values up to 255 kept,
  up to 65535 divided by 257), other integer ranges and floats (`F`; 0..1 taken as 0..255) by
  their actual range, never clipped to white; transparency (RGBA, LA, PA, P or L with a
  transparent colour) composited onto white; CMYK, palette, 1-bit and grayscale by PIL.
- `load_pretrained_checked(cls, source, what, **kwargs)`: `cls.from_pretrained(source, ...)` with
  `trust_remote_code=False`, refusing (a `UserError` naming `what`, the weights file and the keys)
  weights that do not fit the config (keys missing, so left random; unexpected, so ignored; of
  another shape) and a weights file that cannot be read (truncated, corrupt) or does not exist.
- `UnreadableImage(ValueError)`: `.kind` is one of `UNREADABLE_KINDS` (how a skip is counted),
  the message says why.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from omninegclip.common.cli import UserError

UNREADABLE_KINDS = ("missing_image", "corrupt_image", "truncated_image", "image_too_large")


def _numpy_globals() -> list:
    """The NumPy functions and classes a pickled array, dtype or scalar names (NumPy 1 and 2 spellings)."""
    import numpy as np

    multiarray = np._core.multiarray
    dtypes = [type(np.dtype(kind)) for kind in "?bhilqBHILQefdgFDGSUV"]
    return [
        np.ndarray,
        np.dtype,
        multiarray._reconstruct,
        multiarray.scalar,
        *dtypes,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]


def load_torch_file(path: str | Path, hint: str = "") -> object:
    """The object in a `torch.save` file, loaded with `weights_only=True` onto the CPU."""
    import torch

    path = Path(path)
    hint = f" {hint.strip()}" if hint.strip() else ""
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a file written by torch.save).{hint}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_numpy_globals()):
            warnings.simplefilter(
                "ignore", UserWarning
            )  # torch's note on the pickle protocol of a file it then refuses
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if refused is not None:
            raise UserError(
                f"{path}: refused to load: the file needs arbitrary unpickling of {refused.group(1)}, which could "
                f"run code (torch.load with weights_only=True refused it; nothing in the file was run).{hint}"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+(?:\n\s*\n\s*[^\n]+)?)", text)
        reason = " ".join(detail.group(1).split()) if detail else "it could not be parsed"
        raise UserError(f"{path}: not a readable torch.save file ({reason}; nothing in it was run).{hint}") from None
    except EOFError:
        raise UserError(f"{path}: not a readable torch.save file (it is empty or ends early).{hint}") from None
    except (RuntimeError, OSError, ValueError, struct.error) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a readable torch.save file ({first_line}).{hint}") from None


WEIGHTS_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _weights_file(source) -> str:
    folder = Path(str(source)).expanduser()
    found = [folder / name for name in WEIGHTS_FILES if (folder / name).is_file()]
    return str(found[0]) if found else f"the weights of {source}"


def _key_list(keys) -> str:
    names = sorted(str(key[0] if isinstance(key, tuple) else key) for key in keys)
    return ", ".join(names[:6]) + (f", … ({len(names)} in all)" if len(names) > 6 else "")


def load_pretrained_checked(cls, source, what: str, **kwargs):
    """`cls.from_pretrained(source, **kwargs)`, refusing weights that do not fit (see the module docstring)."""
    from safetensors import SafetensorError

    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, trust_remote_code=False, **kwargs)
    except SafetensorError as error:
        raise UserError(
            f"{what}: {_weights_file(source)} cannot be read ({first_line(error)}): the file is truncated or "
            f"corrupt; copy or download it again"
        ) from None
    except (RuntimeError, ValueError) as error:
        if "size mismatch" not in str(error) and "shape" not in str(error):
            raise
        raise UserError(
            f"{what}: {_weights_file(source)} does not fit its config.json ({first_line(error)})"
        ) from None
    problems = [
        f"{label}: {_key_list(info.get(key) or ())}"
        for key, label in (
            ("missing_keys", "missing from the weights (they would stay random)"),
            ("unexpected_keys", "in the weights but not in the config (they would be ignored)"),
            ("mismatched_keys", "of another shape than the config says"),
        )
        if info.get(key)
    ]
    if problems:
        raise UserError(
            f"{what}: {_weights_file(source)} does not fit its config.json: "
            + "; ".join(problems)
            + ". Pass the folder the weights were saved with (its config.json beside them)"
        )
    return model


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UnreadableImage(ValueError):
    """An image that cannot be used; `kind` says how (one of `UNREADABLE_KINDS`)."""

    def __init__(self, kind: str, message: str):
        if kind not in UNREADABLE_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {UNREADABLE_KINDS}")
        super().__init__(message)
        self.kind = kind


def _open(source) -> Image.Image:
    if source is None:
        raise UnreadableImage("missing_image", "no image in this row")
    if isinstance(source, dict):  # a datasets.Image value read with decode=False
        data, path = source.get("bytes"), source.get("path")
        if data is None and not path:
            raise UnreadableImage("missing_image", "no image in this row (neither bytes nor a path)")
        source = data if data is not None else path
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.is_file():
        raise UnreadableImage("missing_image", f"no such image file {str(path)!r}")
    return Image.open(path)


def _grey_to_8_bits(image: Image.Image) -> Image.Image:
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif image.mode != "F" and low >= 0 and high <= 255:
        scaled = values
    elif image.mode != "F" and low >= 0 and high <= 65535:
        scaled = values / 257.0  # 16 bits of depth: 65535 -> 255
    else:
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB, by its content (see the module docstring)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _grey_to_8_bits(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return image.convert("RGB")


def open_rgb_image(source, max_pixels: int | None = None, draft=None) -> Image.Image:
    """`source` decoded completely, as RGB; `UnreadableImage` if it cannot be (see the module docstring).
    `draft(original (width, height)) -> (width, height) | None`: a JPEG is then decoded at the
    smallest of the decoder's own scales (1/2, 1/4, 1/8) that is no smaller than the size returned."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # The size is checked below, against `limit`; PIL's own warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(source)
        with image:
            width, height = image.size
            if limit is not None and width * height > limit:
                raise UnreadableImage(
                    "image_too_large",
                    f"{width}x{height} = {width * height} pixels, over the decompression-bomb limit of {limit} pixels",
                )
            requested = draft((width, height)) if draft is not None else None
            if requested is not None and image.format == "JPEG":
                image.draft("RGB", requested)
            image.load()
            return to_rgb(image) if image.mode != "RGB" else image.copy()
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as error:  # over twice PIL's limit: refused by PIL itself while opening
        raise UnreadableImage("image_too_large", f"{error} (decompression-bomb guard)") from None
    except UnidentifiedImageError:
        raise UnreadableImage("corrupt_image", "not an image PIL can read (corrupt or not an image file)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        message = str(error) or type(error).__name__
        kind = "truncated_image" if "truncated" in message else "corrupt_image"
        raise UnreadableImage(kind, message) from None
