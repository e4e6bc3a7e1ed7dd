"""Shared by every layer: the CLI error convention, CLIP's constants and tokenizer, safe loading,
provenance, batched embedding and output folders."""
