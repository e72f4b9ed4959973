"""Errors raised by pacsguard.

One root type; every error says what the user can do about it::

    PacsguardError
    ├── UsageError              bad command-line or configuration input
    │   ├── TargetError         a target string that cannot be parsed or resolved
    │   ├── ScopeError          a scope too large or outside what the user confirmed
    │   ├── ConfigError         a setting that is missing, malformed or unsafe: names the key
    │   │                       and says what to set
    │   ├── ClusterError        the Dask cluster of `scan --cluster` is unreachable, or a shard
    │   │                       failed; says how to resume
    │   └── ResumeError         `scan --resume` cannot continue that run as asked: says why
    ├── ProtocolError           a remote peer broke the DICOM upper-layer protocol
    │   ├── PduTooLarge         announced PDU length above our bound
    │   ├── MalformedPdu        bytes that do not decode as the PDU they claim to be
    │   └── PeerClosed          the peer closed or aborted mid-conversation
    ├── LabError                the synthetic lab cannot be built or served
    ├── AuthenticationError     a peer did not prove who it claims to be (the gate turns it
    │                           into an A-ASSOCIATE-RJ; the peer never sees the reason)
    ├── PolicyDenied            an authenticated principal may not perform an action
    └── AuditLogError           the audit log cannot be opened, appended to or read

Probes never let a `ProtocolError` escape: they turn it into an Observation. The CLI turns
`UsageError` into exit code 2. The front ends translate `AuthenticationError` and `PolicyDenied`
into protocol answers (A-ASSOCIATE-RJ, status 0x0124, HTTP 401/403) at the edge only.
"""

from __future__ import annotations


class PacsguardError(Exception):
    """Root of every error pacsguard raises on purpose."""


class UsageError(PacsguardError):
    """The user asked for something we cannot do as stated."""


class TargetError(UsageError):
    """A target specification could not be parsed or resolved."""


class ScopeError(UsageError):
    """The scope is larger than allowed without explicit confirmation."""


class ConfigError(UsageError):
    """A configuration value is missing, malformed or unsafe; the message names the key."""


class ClusterError(UsageError):
    """A sharded scan's cluster cannot be used, or a shard failed; says how to resume."""


class ResumeError(UsageError):
    """A run cannot be resumed as asked (unknown id, other targets, changed output)."""


class ProtocolError(PacsguardError):
    """A remote peer violated the DICOM upper-layer protocol (PS3.8)."""


class PduTooLarge(ProtocolError):
    """The peer announced a PDU longer than the bound we accept."""

    def __init__(self, pdu_type: int, length: int, bound: int) -> None:
        super().__init__(
            f"peer announced a PDU of type 0x{pdu_type:02x} with {length} bytes; "
            f"the bound is {bound} bytes"
        )
        self.pdu_type = pdu_type
        self.length = length
        self.bound = bound


class MalformedPdu(ProtocolError):
    """Bytes that are not a valid DICOM PDU."""


class PeerClosed(ProtocolError):
    """The peer closed the connection or sent A-ABORT before the conversation ended."""


class LabError(PacsguardError):
    """The synthetic lab could not be generated or served."""


class AuthenticationError(PacsguardError):
    """A peer's credentials were missing, wrong, or not acceptable for its registered AE.

    `reason` is for the audit trail only; never send it to the peer.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PolicyDenied(PacsguardError):
    """An authenticated principal asked for an action its permissions do not include."""

    def __init__(self, ae_title: str, action: str, reason: str) -> None:
        super().__init__(f"{ae_title} may not {action}: {reason}")
        self.ae_title = ae_title
        self.action = action
        self.reason = reason


class AuditLogError(PacsguardError):
    """The audit log cannot be opened, appended to or read as a hash chain."""
