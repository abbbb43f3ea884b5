"""Tools for development, tests and benchmarks: the demo customer API, sample models."""
