"""cagefs's benchmarks: `python -m bench` runs the suite (bench/__main__.py); `bench.crypto`,
`bench.replace` and `bench.fuse_ceiling` run on their own with `python -m bench.NAME`."""
