"""The benchmarks of Chot: `make bench` (bench/run.py) measures every stage against its baseline."""
