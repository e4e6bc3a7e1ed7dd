"""The built-in default (`make default`): the world, a pretrained base, fine-tuning, evaluation,
and the demo Space on its models."""
