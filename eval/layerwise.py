"""Layer-wise analysis: in which text blocks does a caption's negation move away from the caption?

For each text transformer block k, the cosine between the hidden state at the EOS token (the first
`eos_token_id` position, where CLIP pools; the highest token id for legacy configs with
`eos_token_id == 2`, as CLIP does) of a caption and of its negation, averaged over a dataset,
presence- and absence-negated pairs separately. One value per block (the embedding layer's output is
not a block and is left out). A lower cosine means the block tells the two apart; Omni-NegCLIP
trains the front blocks because they separate them most readily.

Pairs come from any table with `caption` and `presence_negated` and/or `absence_negated` columns: a
`save_to_disk` dataset folder (the image world's, or `data_builder.py`'s; `split` picks the split of a
`DatasetDict`) or a CSV. A row without one kind of negation (empty or missing) is counted and left
out of that kind only; a row with an empty caption is left out and counted in `NegationPairs.notes`;
a caption that is not a string is an error naming the row.

Public surface: `NegationPairs`, `read_negation_pairs(source, split="test", max_items=None)`,
`eos_positions(input_ids, eos_token_id)`,
`layerwise_cosines(model, tokenizer, pairs, batch_size=64, progress=True) -> LayerwiseResult`,
`plot_layerwise(results, path)`. `LayerwiseResult` and its table (`layerwise_markdown`) are part of the
results (`omninegclip.common.results`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from omninegclip.common.cli import UserError
from omninegclip.common.clip import CONTEXT_LENGTH
from omninegclip.common.formats import read_csv
from omninegclip.common.results import LayerwiseResult
from omninegclip.common.skips import SkipLog

KINDS = ("presence", "absence")


@dataclass
class NegationPairs:
    captions: list[str]
    negations: dict[str, list[str | None]]  # kind -> one negated caption (or None) per caption
    source: str = ""
    notes: str = ""  # rows left out (empty captions), counted

    def __post_init__(self):
        for kind, negated in self.negations.items():
            if kind not in KINDS:
                raise ValueError(f"unknown negation kind {kind!r}; expected one of {KINDS}")
            if len(negated) != len(self.captions):
                raise ValueError(f"{len(negated)} {kind}-negated captions for {len(self.captions)} captions")

    def count(self, kind: str) -> int:
        return sum(1 for text in self.negations.get(kind, []) if text)


def _usable(value) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def read_negation_pairs(source: str | Path, split: str = "test", max_items: int | None = None) -> NegationPairs:
    source = Path(source)
    columns = ["caption", *(f"{kind}_negated" for kind in KINDS)]
    skips = SkipLog()
    if source.suffix.lower() == ".csv":
        header, rows = read_csv(source, [["caption"], ["presence_negated", "absence_negated"]])
        table = {column: [] for column in columns if column in header}
        for line, row in rows:
            if max_items is not None and len(table["caption"]) >= max_items:
                break
            if skips.text(row["caption"], f"{source}, line {line}", "caption") is None:
                continue
            for column in table:
                table[column].append(row[column])
    elif source.is_dir():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(source))
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"--layerwise {source}: not a dataset saved with save_to_disk ({error})") from error
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise UserError(
                    f"--layerwise {source}: no split {split!r} (splits: {list(dataset)}); "
                    "choose one with --layerwise_split"
                )
            dataset = dataset[split]
        if "caption" not in dataset.column_names or not {"presence_negated", "absence_negated"} & set(
            dataset.column_names
        ):
            raise UserError(
                f"--layerwise {source}: needs a 'caption' column and 'presence_negated' and/or 'absence_negated'; "
                f"columns are {dataset.column_names}"
            )
        if max_items is not None:
            dataset = dataset.select(range(min(max_items, len(dataset))))
        table = {column: dataset[column] for column in columns if column in dataset.column_names}
        keep = [
            index
            for index, caption in enumerate(table["caption"])
            if skips.text(caption, f"--layerwise {source}, row {index}", "caption") is not None
        ]
        table = {column: [values[index] for index in keep] for column, values in table.items()}
    else:
        raise UserError(f"--layerwise {source}: expected a dataset folder (save_to_disk) or a .csv of caption pairs")
    if not table["caption"]:
        raise UserError(
            f"--layerwise {source}: no caption pairs to analyse" + (f": {skips.describe()}" if skips else "")
        )
    negations = {
        kind: [_usable(text) for text in table[f"{kind}_negated"]] for kind in KINDS if f"{kind}_negated" in table
    }
    return NegationPairs(
        captions=list(table["caption"]), negations=negations, source=str(source), notes=skips.describe()
    )


def eos_positions(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Where CLIP pools each sequence: the first `eos_token_id`, or the highest id for legacy configs (eos 2)."""
    if eos_token_id == 2:
        return input_ids.argmax(dim=-1)
    return (input_ids == eos_token_id).int().argmax(dim=-1)


@torch.no_grad()
def _eos_states(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """EOS hidden state after each text block: (len(texts), num_blocks, hidden)."""
    device = next(model.parameters()).device
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=CONTEXT_LENGTH, return_tensors="pt").to(
        device
    )
    output = model.text_model(**encoded, output_hidden_states=True)
    rows = torch.arange(len(texts), device=device)
    positions = eos_positions(encoded["input_ids"], model.config.text_config.eos_token_id)
    # hidden_states[0] is the embedding layer's output, then one per block
    return torch.stack([states[rows, positions] for states in output.hidden_states[1:]], dim=1).float().cpu()


def layerwise_cosines(
    model, tokenizer, pairs: NegationPairs, batch_size: int = 64, progress: bool = True, desc: str = ""
) -> LayerwiseResult:
    num_blocks = model.config.text_config.num_hidden_layers
    sums = {kind: torch.zeros(num_blocks, dtype=torch.float64) for kind in pairs.negations}
    counts = {kind: 0 for kind in pairs.negations}
    starts = range(0, len(pairs.captions), batch_size)
    for start in tqdm(starts, desc=f"layer-wise {desc}".strip(), disable=not progress, leave=False):
        rows = range(start, min(start + batch_size, len(pairs.captions)))
        texts = [pairs.captions[row] for row in rows]
        slots = {}  # kind -> (caption slots, negation slots) into texts
        for kind, negated in pairs.negations.items():
            used = [row for row in rows if negated[row]]
            slots[kind] = ([row - start for row in used], list(range(len(texts), len(texts) + len(used))))
            texts += [negated[row] for row in used]
        states = _eos_states(model, tokenizer, texts)
        for kind, (caption_slots, negation_slots) in slots.items():
            if caption_slots:
                cosine = torch.nn.functional.cosine_similarity(states[caption_slots], states[negation_slots], dim=-1)
                sums[kind] += cosine.sum(dim=0).double()
                counts[kind] += len(caption_slots)
    return LayerwiseResult(
        cosines={
            kind: (sums[kind] / counts[kind]).tolist() if counts[kind] else [float("nan")] * num_blocks
            for kind in sums
        },
        pairs=counts,
    )


def plot_layerwise(results: dict[str, LayerwiseResult], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axis = plt.subplots(figsize=(7, 4.5))
    styles = {"presence": "-", "absence": "--"}
    for index, (model, result) in enumerate(results.items()):
        color = f"C{index % 10}"
        for kind, values in result.cosines.items():
            axis.plot(range(len(values)), values, styles[kind], marker="o", color=color, label=f"{model} · {kind}")
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("text transformer block")
    axis.set_ylabel("mean cosine(EOS of caption, EOS of negation)")
    axis.set_title("Where the text encoder separates a caption from its negation")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
