"""The archive service: the one place where store, query and retrieve happen.

Front ends (DIMSE today, DICOMweb next) translate protocol requests into these calls and the
results back into protocol answers; they hold no archive logic. Every call names the Principal,
is authorized here, and becomes an audit event whatever its outcome.

One concept per module, one object for the front ends:

- `_core`: statuses, limits, the policy check (`require`) every operation starts with;
- `ingest`: store (C-STORE, STOW-RS), durable before it answers;
- `query`: C-FIND / QIDO-RS, audited before the first match is released;
- `retrieve`: C-GET / C-MOVE / WADO-RS, audited before the first instance and after the last.

`ArchiveService` mixes them together over one index, blob store and audit sink.
"""

from __future__ import annotations

from pacsguard.archive.service._core import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    DUPLICATE_SOP_INSTANCE,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    Authorizer,
    Denied,
    ServiceLimits,
)
from pacsguard.archive.service.ingest import (
    INDEXED_KEYWORDS,
    Ingest,
    Source,
    StoreResult,
    _header_by_pydicom,
)
from pacsguard.archive.service.query import Queries
from pacsguard.archive.service.retrieve import (
    UNCOMPRESSED,
    InstanceData,
    Retrieval,
    Retrieves,
    RetrieveTally,
    deliverable_syntaxes,
)

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "DUPLICATE_SOP_INSTANCE",
    "INDEXED_KEYWORDS",
    "NOT_AUTHORIZED",
    "OUT_OF_RESOURCES",
    "PROCESSING_FAILURE",
    "SUCCESS",
    "UNCOMPRESSED",
    "ArchiveService",
    "Authorizer",
    "Denied",
    "InstanceData",
    "Retrieval",
    "RetrieveTally",
    "ServiceLimits",
    "Source",
    "StoreResult",
    "_header_by_pydicom",
    "deliverable_syntaxes",
]


class ArchiveService(Ingest, Queries, Retrieves):
    """Store / query / retrieve over an index and a blob store, authorized and audited."""
