"""Benchmarks: pacsguard side by side with its peers on the same run (ratios, not absolutes)."""
