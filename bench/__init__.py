"""Training and evaluation speed benchmark (`python -m bench.bench_train`); see bench/README.md."""

import os

# Benchmarks never reach the Hub (every model here is built from a config); run as `python -m bench.X`,
# this package is imported before the script, so the setting holds before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
