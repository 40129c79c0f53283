"""Micro benchmarks (pytest-benchmark): `python -m pytest bench -q`.

Each benchmark records its throughput (packets or job cycles per second) in
`extra_info`, visible with `--benchmark-json` or `--benchmark-columns`."""
