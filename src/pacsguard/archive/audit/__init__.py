"""Audit: every security-relevant event, hash-chained, in DICOM PS3.15 A.5 vocabulary."""
