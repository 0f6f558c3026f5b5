"""Benchmarks of the app under the shipped gunicorn configuration:
`python -m tools.bench.<name> --db sqlite|postgresql`.

Each one starts what it needs on 127.0.0.1 (a fresh database, the servers as separate processes),
loads them from another process for a bounded time, stops everything it started and prints a table.
See tools/bench/README.md.
"""
