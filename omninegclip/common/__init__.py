"""Shared by every layer: the CLI error convention, CLIP's constants and tokenizer, safe loading,
provenance, batched embedding, output folders and evaluation results (`results`: results.json typed,
and its markdown table)."""
