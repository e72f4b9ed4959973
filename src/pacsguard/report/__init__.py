"""Sinks for scan results: JSON Lines (canonical), terminal table, summaries."""
