"""Speed and memory figures, each runnable as `python -m benchmarks.<name>`."""
