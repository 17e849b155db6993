"""Reference network definitions used by the benchmarks."""
