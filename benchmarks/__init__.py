"""Benchmarks: `make bench`. They measure and print; nothing here asserts a time."""
