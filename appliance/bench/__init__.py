"""Benchmarks behind `appliance bench`."""
