"""Training and evaluation speed benchmark (`python -m bench.bench_train`); see bench/README.md."""
