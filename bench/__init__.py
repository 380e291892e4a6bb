"""Benchmarks, printed as figures; never part of the test run (`make bench`)."""
