"""Clients that talk to a peer: dcmtk's echoscu/storescu/findscu and one raw A-ASSOCIATE-RQ."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from ._errors import PeerError, PeerStartError
from ._process import LOOPBACK, executable, require_loopback, run_tool

# dcmtk client timeouts (connect, ACSE, DIMSE), in seconds: a stalled peer fails a test quickly.
_DCMTK_TIMEOUTS = ("-to", "10", "-ta", "10", "-td", "10")

_REJECT_RESULT = re.compile(r"Result:\s*(?P<result>[^,]+),\s*Source:\s*(?P<source>.+?)\s*$", re.M)
_REJECT_REASON = re.compile(r"Reason:\s*(?P<reason>.+?)\s*$", re.M)
# PS3.8 Table 9-21, source 1 (DICOM UL service-user), as dcmtk spells the reasons.
_SERVICE_USER_REASONS = {
    "No Reason": 1,
    "App Context Name Not Supported": 2,
    "Calling AE Title Not Recognized": 3,
    "Called AE Title Not Recognized": 7,
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ as dcmtk reports it, e.g. Rejected Permanent / Service User / reason."""

    result: str
    source: str
    reason: str

    @property
    def reason_code(self) -> int | None:
        """The PS3.8 reason number for a service-user rejection, None for other sources."""
        return _SERVICE_USER_REASONS.get(self.reason) if self.source == "Service User" else None


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a dcmtk client run showed: exit status, association fate, captured log."""

    argv: tuple[str, ...]
    returncode: int
    log: str
    accepted: bool
    rejection: Rejection | None
    aborted: bool

    @property
    def ok(self) -> bool:
        # findscu exits 0 even when the peer aborts the association, so look at the log as well.
        return self.returncode == 0 and self.accepted and not self.aborted

    @classmethod
    def from_completed(cls, completed: subprocess.CompletedProcess[str]) -> ToolOutcome:
        log = f"{completed.stdout}\n{completed.stderr}"
        rejection = None
        if "Association Rejected" in log:
            result, reason = _REJECT_RESULT.search(log), _REJECT_REASON.search(log)
            rejection = Rejection(
                result=result["result"].strip() if result else "",
                source=result["source"] if result else "",
                reason=reason["reason"] if reason else "",
            )
        return cls(
            argv=tuple(str(a) for a in completed.args),
            returncode=completed.returncode,
            log=log,
            accepted="Association Accepted" in log,
            rejection=rejection,
            aborted="peer aborted association" in log.lower(),
        )

    def raise_for_failure(self, what: str) -> None:
        if not self.ok:
            raise PeerStartError(f"{what} failed (exit {self.returncode}):\n{self.log[-2000:]}")


@dataclass(frozen=True, slots=True)
class FindOutcome:
    """A findscu run plus every C-FIND response it extracted (`-X`), in arrival order."""

    tool: ToolOutcome
    responses: tuple[Dataset, ...]

    @property
    def ok(self) -> bool:
        return self.tool.ok


STUDY_RETURN_KEYS = (
    "StudyInstanceUID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


def _association_args(host: str, port: int, calling_aet: str, called_aet: str) -> list[str]:
    return [
        *_DCMTK_TIMEOUTS,
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        require_loopback(host),
        str(port),
    ]


def echoscu(host: str, port: int, *, calling_aet: str, called_aet: str) -> ToolOutcome:
    """One C-ECHO with dcmtk's echoscu."""
    argv = [
        str(executable("echoscu")),
        "-v",
        *_association_args(host, port, calling_aet, called_aet),
    ]
    return ToolOutcome.from_completed(run_tool(argv))


def storescu(
    host: str, port: int, paths: Sequence[Path], *, calling_aet: str, called_aet: str
) -> ToolOutcome:
    """C-STORE files (or every file under directories) with dcmtk's storescu, one association."""
    argv = [
        str(executable("storescu")),
        "-v",
        "+sd",
        *_association_args(host, port, calling_aet, called_aet),
        *(str(p) for p in paths),
    ]
    return ToolOutcome.from_completed(run_tool(argv, timeout=120.0))


def findscu_studies(
    host: str,
    port: int,
    out_dir: Path,
    *,
    calling_aet: str,
    called_aet: str,
    return_keys: Sequence[str] = STUDY_RETURN_KEYS,
) -> FindOutcome:
    """A Study Root C-FIND at STUDY level (universal match) with dcmtk's findscu.

    Responses are extracted with `-X` into `out_dir` (created; must not hold older responses)
    and read back with pydicom, so tests count datasets rather than parse log text.
    """
    out_dir.mkdir(parents=True, exist_ok=False)
    keys = [arg for key in ("QueryRetrieveLevel=STUDY", *return_keys) for arg in ("-k", key)]
    argv = [str(executable("findscu")), "-v", "-S", *keys, "-X", "-od", str(out_dir)]
    argv += _association_args(host, port, calling_aet, called_aet)
    tool = ToolOutcome.from_completed(run_tool(argv))
    responses = tuple(dcmread(path) for path in sorted(out_dir.glob("rsp*.dcm")))
    return FindOutcome(tool=tool, responses=responses)


# --- one raw A-ASSOCIATE-RQ from a chosen source address -------------------------------------

_VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_A_RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # PS3.8 9.3.6
_MAX_ASSOCIATION_PDU = 64 * 1024  # real A-ASSOCIATE-AC/RJ PDUs are a few hundred bytes


@dataclass(frozen=True, slots=True)
class AssociateAnswer:
    """The first PDU a peer sent back to an A-ASSOCIATE-RQ; result/source/reason for an RJ."""

    pdu_type: int  # 0x02 A-ASSOCIATE-AC, 0x03 A-ASSOCIATE-RJ, 0x07 A-ABORT
    result: int | None = None
    source: int | None = None
    reason: int | None = None

    @property
    def accepted(self) -> bool:
        return self.pdu_type == 0x02


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise PeerError(f"peer closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def raw_associate(
    host: str, port: int, *, calling_aet: str, called_aet: str, source: str = LOOPBACK
) -> AssociateAnswer:
    """Send one A-ASSOCIATE-RQ (Verification) from `source` and decode the answer; release if AC.

    pynetdicom encodes and decodes the PDUs; the socket is ours so the source address can be
    chosen (127.0.0.2 tests address binding) and so a peer that sends A-ASSOCIATE-RJ and closes
    at once is read reliably (pynetdicom's Association occasionally reports neither accepted
    nor rejected in that case).
    """
    primitive = A_ASSOCIATE()
    primitive.application_context_name = _APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_aet
    primitive.called_ae_title = called_aet
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = _VERIFICATION_SOP_CLASS
    context.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    primitive.presentation_context_definition_list = [context]
    request = bytes(A_ASSOCIATE_RQ(primitive).encode())
    address = (require_loopback(host), port)
    with socket.create_connection(address, 10.0, (require_loopback(source), 0)) as sock:
        sock.sendall(request)
        header = _recv_exactly(sock, 6)
        pdu_type, length = header[0], int.from_bytes(header[2:6], "big")
        if length > _MAX_ASSOCIATION_PDU:
            raise PeerError(f"{host}:{port} announced a {length}-byte answer PDU")
        body = _recv_exactly(sock, length)
        if pdu_type == 0x03:
            rejected = A_ASSOCIATE_RJ()
            rejected.decode(header + body)
            return AssociateAnswer(
                pdu_type, rejected.result, rejected.source, rejected.reason_diagnostic
            )
        if pdu_type == 0x02:
            sock.sendall(_A_RELEASE_RQ)
            _recv_exactly(sock, 10)  # A-RELEASE-RP
        return AssociateAnswer(pdu_type)
