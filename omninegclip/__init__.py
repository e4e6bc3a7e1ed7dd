"""Shared helpers of Omni-NegCLIP: the offline tokenizer, the offline image world (`shapes`),
the CLI error convention, batched embedding, provenance and cards.

The model and its losses live in the top-level `modeling_omninegclip.py`; training in `train.py`;
dataset building in `data_builder.py`; evaluation in `eval/`.
"""
