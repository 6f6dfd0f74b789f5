"""Experiments: the main demo job and the benchmarks behind ``mlem bench``."""
