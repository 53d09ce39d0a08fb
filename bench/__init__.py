"""The benchmark: the gateway beside nginx (and HAProxy) on one registry, on loopback.

Run it with `make bench` (or `python -m bench --help`). See BENCHMARKS.md for the
latest results and what each number means.
"""
