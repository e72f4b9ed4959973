"""Surveys over many scans: the history store, survey tables, run-to-run trends, disclosure.

Everything here reads scan records (the JSON Lines records of `pacsguard.report.jsonl`), so it
holds counts, categories and redacted evidence only, never a patient value.
"""
