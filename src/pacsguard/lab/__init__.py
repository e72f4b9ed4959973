"""The lab: synthetic data and simulated PACS on loopback, for demos, tests and benchmarks."""
