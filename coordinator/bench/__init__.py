"""Benchmarks: they report figures and never assert them (DESIGN §8)."""
