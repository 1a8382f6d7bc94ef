"""Benchmarks that print figures, so changes can be compared with a baseline; see
BENCHMARKS.md for what each measures and the figures of a full run.

Run them all with `python -m bench` (`make bench`), or one with `python -m bench.NAME`;
results go to `bench/results/`. store_rates, throughput and progress_latency run on
SQLite and on a real sqld (`--backend sqlite|remote|both`, see `backends.py`); cluster
runs two servers and two workers on sqld behind a proxy adding 0 and 20 ms.
"""
