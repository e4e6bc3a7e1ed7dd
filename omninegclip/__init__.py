"""Omni-NegCLIP's package: `OmniNegCLIPConfig` and `OmniNegCLIPTrainer` (the method as a Trainer,
used as trl's trainers are: docs/trainer.md), and one subpackage per layer (the README's "Layout" table):

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

from omninegclip.common.paths import REPO_ROOT
from omninegclip.training.config import DataArguments, ModelArguments, OmniNegCLIPConfig
from omninegclip.training.trainer import OmniNegCLIPTrainer

__all__ = ["REPO_ROOT", "DataArguments", "ModelArguments", "OmniNegCLIPConfig", "OmniNegCLIPTrainer"]
