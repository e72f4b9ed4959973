"""What the DIMSE front end offers: transfer syntaxes, contexts per permission, its settings.

Listeners (see `aio`): the TLS port (2762 by default) and, only on loopback, an optional
plaintext port for peers that cannot do TLS (dcmtk's movescu/getscu in Debian's build). Both
share the gate, the archive service and these rules.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import AllStoragePresentationContexts

from pacsguard.archive.security.principal import Action, Principal
from pacsguard.dicom import uids

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
#: Query/retrieve identifiers are decoded and encoded by `pacsguard.dicom.dimse`, which handles
#: Implicit and Explicit VR Little Endian only: a C-FIND/C-MOVE/C-GET context proposed with
#: nothing else (Big Endian, Deflate...) is rejected in negotiation with result 4, "transfer
#: syntaxes not supported" (PS3.8 9.3.3.2), rather than accepted and decoded as garbage.
QUERY_RETRIEVE_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

_FIND = {str(uids.PATIENT_ROOT_FIND), str(uids.STUDY_ROOT_FIND)}
_MOVE = {str(uids.PATIENT_ROOT_MOVE), str(uids.STUDY_ROOT_MOVE)}
_GET = {str(uids.PATIENT_ROOT_GET), str(uids.STUDY_ROOT_GET)}
_STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


def context_allowed(principal: Principal, abstract_syntax: str) -> bool:
    """Whether to offer a presentation context to this principal (deny by default)."""
    if abstract_syntax == uids.VERIFICATION:
        return principal.may(Action.ECHO)
    if abstract_syntax in _FIND:
        return principal.may(Action.FIND)
    if abstract_syntax in _MOVE:
        return principal.may(Action.MOVE)
    if abstract_syntax in _GET:
        return principal.may(Action.GET)
    if abstract_syntax in _STORAGE:
        # C-GET delivers over the same association with storage contexts in the SCP role.
        return principal.may(Action.STORE) or principal.may(Action.GET)
    return False


@dataclass(frozen=True, slots=True)
class FrontEndSettings:
    ae_title: str
    max_associations: int = 32
    #: Connections not yet associated, over all sources / from one source address.
    max_connections: int = 64
    max_pending_per_source: int = 8
    #: Associations one calling AE / one user may hold at once.
    max_associations_per_ae: int = 16
    max_associations_per_user: int = 16
    #: From connect to a complete A-ASSOCIATE-RQ, TLS handshake included.
    pre_association_timeout: float = 5.0
    max_pdu: int = 262144
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    handshake_timeout: float = 10.0
