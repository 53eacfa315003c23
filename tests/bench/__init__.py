"""Benchmarks of the round path, server memory, scale and time to accuracy.

Run them all with ``.venv/bin/python -m tests.bench.run`` (see ``run.py``); they write
``docs/bench/report.md`` and ``docs/bench/report.json``. Nothing here asserts a timing:
``test_bench_smoke.py`` only checks that a tiny run completes and writes a well-formed report.
"""
