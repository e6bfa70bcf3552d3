"""Load benchmarks run against a real server process: `make bench` (`python -m bench`)."""
