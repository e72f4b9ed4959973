"""The archive service package's public surface: what front ends and tests import from
`pacsguard.archive.service`, whichever module of the package holds it."""

from __future__ import annotations

import pacsguard.archive.service as service


def test_exported_names_are_what_we_mean() -> None:
    assert set(service.__all__) == {
        # statuses the front ends pass through
        "SUCCESS", "DUPLICATE_SOP_INSTANCE", "NOT_AUTHORIZED", "PROCESSING_FAILURE",
        "OUT_OF_RESOURCES", "DATASET_MISMATCH", "CANNOT_UNDERSTAND",
        # the service and its policy
        "ArchiveService", "Authorizer", "Denied", "ServiceLimits",
        # ingest
        "INDEXED_KEYWORDS", "Source", "StoreResult", "_header_by_pydicom",
        # retrieve
        "Retrieval", "RetrieveTally", "InstanceData", "UNCOMPRESSED", "deliverable_syntaxes",
    }  # fmt: skip
    for name in service.__all__:
        assert hasattr(service, name), name
