"""The exact openai CLIP tokenizer, built offline.

No Hub is reachable here, but the `open_clip_torch` wheel ships CLIP's BPE merges
(`open_clip/bpe_simple_vocab_16e6.txt.gz`). From that file the 49,408-token vocabulary of
`openai/clip-vit-base-patch32` follows deterministically: the 256 byte symbols, the same with the
end-of-word marker `</w>`, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
We only read the file; `open_clip` itself is never imported (it would pull torchvision).

Public surface: `build_clip_tokenizer()`, `bpe_merges_path()`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

from omninegclip.common.clip import CONTEXT_LENGTH

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49,152 - 256 - 2 merges of the file (its first line is a header).
NUM_MERGES = 49152 - 256 - 2


def bpe_merges_path() -> Path:
    """Where the `open_clip_torch` wheel put CLIP's merges file (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "CLIP's BPE merges come from the open_clip_torch wheel, which is not installed. "
            "Install it without its dependencies: pip install --no-deps open_clip_torch==3.3.0"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / BPE_FILE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"open_clip is installed but has no {BPE_FILE_NAME} in {list(spec.submodule_search_locations)}"
    )


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible map of the 256 bytes onto printable unicode characters, in vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(bpe_merges_path(), "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")[1 : NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = _byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """openai CLIP's tokenizer (vocab 49,408; bos 49406; eos = pad 49407), made from local files only."""
    vocab, merges = _vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges))
    tokenizer.model_max_length = model_max_length
    return tokenizer
