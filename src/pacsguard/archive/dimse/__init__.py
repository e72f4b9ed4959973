"""DIMSE front end over the archive service (pynetdicom)."""
