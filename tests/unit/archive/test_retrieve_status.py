"""Pure parts of the retrieve answers: final status from sub-operation counts (PS3.4 C.4.2.3.1),
which counts each response carries, the Failed SOP Instance UID List, and Error Comments."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_primitives import C_MOVE, C_STORE

from pacsguard.archive.dimse.aio_retrieve import Counts, _final_status
from pacsguard.archive.dimse.aio_session import set_error_comment


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([0x0000, 0x0000], 0x0000),
        ([0x0000, 0xA700], 0xB000),  # some failed
        ([0x0000, 0xB007], 0xB000),  # a warning only
        ([0xA700, None], 0xA702),  # all failed (None: could not be sent)
    ],
)
def test_final_status_from_counts(statuses: list[int | None], expected: int) -> None:
    counts = Counts(remaining=len(statuses))
    for number, status in enumerate(statuses):
        counts.record(f"1.2.{number}", status)
    assert _final_status(counts, len(statuses)) == expected
    assert counts.remaining == 0


def test_counts_in_responses_and_failed_list() -> None:
    counts = Counts(remaining=3)
    counts.record("1.2.1", 0x0000)
    assert counts.failed_list() is None  # nothing failed: no identifier
    counts.record("1.2.2", 0xC000)
    pending, final = C_MOVE(), C_MOVE()
    counts.fill(pending, remaining=True)
    counts.fill(final, remaining=False)
    assert pending.NumberOfRemainingSuboperations == 1
    assert final.NumberOfRemainingSuboperations is None  # not in Success/Warning/Failure
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    failed = counts.failed_list()
    assert failed is not None and failed.FailedSOPInstanceUIDList == "1.2.2"


def test_error_comment_is_a_valid_lo() -> None:
    rsp = C_STORE()
    set_error_comment(rsp, "index unavailable")
    assert rsp.ErrorComment == "index unavailable"
    set_error_comment(rsp, "Zoë\\" + "x" * 80)  # non-ASCII, a backslash, too long
    assert rsp.ErrorComment == "Zo??" + "x" * 60
