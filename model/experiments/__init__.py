"""Reproducible experiment scripts (`python -m model.experiments.NAME`) that write docs/results*.

Each script is resumable (finished seeds are read back, not retrained) and records the hardware,
torch version, date and the exact command beside its numbers.
"""
