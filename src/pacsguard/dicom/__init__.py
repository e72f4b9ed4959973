"""DICOM vocabulary shared by the scanner, the lab and the archive."""
