"""AISDiff's benchmarks (speed, cost, fidelity): run `python -m benchmarks.NAME` from the repository root."""
