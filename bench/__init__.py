"""Benchmarks that print figures, so changes to the store can be compared with a baseline.

Run them all with `python -m bench` (`make bench`); results go to `bench/results/`. Each
runs on SQLite and on remote libSQL (`--backend sqlite|remote|both`, see `backends.py`).
"""
