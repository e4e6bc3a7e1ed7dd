"""Omni-NegCLIP's package, one subpackage per layer (the README's "Layout" table):

- `omninegclip.building`: building caption datasets (`data_builder.py`): the published formats'
  readers, the negation rewrites and their vocabulary, the offline image world, dataset cards;
- `omninegclip.training`: what `train.py` uses: preparing rows and batches, image preprocessing,
  LoRA, model cards;
- `omninegclip.common`: shared by every layer: the CLI error convention, CLIP's constants and
  tokenizer, safe loading, provenance, embedding, output folders, evaluation results.

The model and its losses live in the top-level `modeling_omninegclip.py`, below this package.
Above it, and never imported by it: the scripts `train.py`, `data_builder.py`, `app.py`, and
`eval/` (the benchmarks), `pipeline/` (the built-in default, `make default`) and `bench/`.
"""

from pathlib import Path

# The checkout the package runs from (the built-in pipeline, provenance and the Space read files there).
REPO_ROOT = Path(__file__).resolve().parent.parent
