"""Training and evaluation speed benchmark (`python bench/bench_train.py`); see bench/README.md."""
