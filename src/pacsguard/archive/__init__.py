"""Fix: a PACS archive that is secure by default.

Front ends (DIMSE now, DICOMweb later) are thin: they translate protocol requests into calls on
one `ArchiveService`, after one security gate has named the Principal and the Policy has allowed
the action. Every decision and every data access becomes an audit event.
"""
