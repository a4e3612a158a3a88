"""The GPU benchmarks that bench/gpu/run.sh runs on a CUDA machine (each module has a ``--dry-run`` for a CPU)."""
