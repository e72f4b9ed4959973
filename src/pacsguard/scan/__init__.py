"""Find: scan DICOM endpoints and assess their exposure."""
