"""A-ASSOCIATE handling: the acceptor side (`aio_negotiation.decode_request`, `peer_facts`,
`accept`, on `pacsguard.dicom.acse_accept`) and the scanner side (`ul.decode_associate_answer`),
with pynetdicom's PDU classes and negotiation as oracle (`benchmarks.acse_setup`, the archive's
path until issue 9): a request we decode, pynetdicom decodes to the same facts; our
A-ASSOCIATE-AC is byte for byte pynetdicom's, reads back with our own scanner-side reader, and
accepts only what was proposed and what we support.

Input: one PDU; its length field is set to the input's length (read_pdu frames PDUs, so the
parsers only ever see PDUs whose length fits). Type 0x01 goes to the acceptor, others to the
scanner's reader of answers."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from benchmarks.acse_setup import pynetdicom_accept, pynetdicom_decode, pynetdicom_facts
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    SCP_SCU_RoleSelectionNegotiation,
    UserIdentityNegotiation,
)

from pacsguard.archive.dimse.aio_negotiation import accept, decode_request, peer_facts
from pacsguard.archive.dimse.contexts import TRANSFER_SYNTAXES
from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.dicom import uids
from pacsguard.dicom.ul import (
    ASSOCIATE_RQ,
    AssociationAccepted,
    ProposedContext,
    RawPdu,
    decode_associate_answer,
    encode_associate_rq,
    propose,
)
from pacsguard.errors import MalformedPdu, PeerClosed
from tests.fuzz.harness import Defect, Harness

PRINCIPAL: Final = Principal("TESTER", "127.0.0.1", AuthMethod.ADDRESS, None, frozenset(Action))
PROPOSED: Final = (
    *propose([uids.VERIFICATION, "1.2.840.10008.5.1.4.1.1.2"]),
    ProposedContext(5, uids.STUDY_ROOT_FIND),
)
_SUPPORTED_SYNTAXES: Final = frozenset(str(s) for s in TRANSFER_SYNTAXES)


def _acceptor(data: bytes) -> None:
    try:
        rq = decode_request(data)
    except MalformedPdu:
        return
    facts = peer_facts(rq, "127.0.0.1", 11112, None)
    if len(facts.calling_ae) > 16 or len(facts.called_ae) > 16:
        raise Defect("an AE title longer than 16 characters")
    try:
        theirs = pynetdicom_decode(data)
    except MalformedPdu:
        raise Defect("a request pynetdicom refuses decodes with ours") from None
    if pynetdicom_facts(theirs) != rq:
        raise Defect("our decoder and pynetdicom's read different facts")
    accepted = accept(rq, PRINCIPAL, 16384)
    reference, reference_contexts, reference_max = pynetdicom_accept(theirs, PRINCIPAL, 16384)
    if accepted.pdu != reference:
        raise Defect("our A-ASSOCIATE-AC differs from pynetdicom's")
    if accepted.contexts != reference_contexts or accepted.peer_max_pdu != reference_max:
        raise Defect("our negotiation and pynetdicom's accept different contexts")
    proposed = {c.context_id: c for c in rq.contexts}  # what the requestor proposed, by id
    for cid, context in accepted.contexts.items():
        offer = proposed.get(cid)
        if offer is None:
            raise Defect(f"context {cid} accepted but never proposed")
        if context.abstract_syntax != offer.abstract_syntax:
            raise Defect(f"context {cid} accepted for another abstract syntax")
        if context.transfer_syntax not in offer.transfer_syntaxes:
            raise Defect(f"context {cid} accepted with a transfer syntax never proposed")
        if context.transfer_syntax not in _SUPPORTED_SYNTAXES:
            raise Defect(f"context {cid} accepted with an unsupported transfer syntax")
    ours = decode_associate_answer(
        RawPdu(0x02, accepted.pdu),
        [ProposedContext(cid, pc.abstract_syntax) for cid, pc in proposed.items()],
    )
    if not isinstance(ours, AssociationAccepted):
        raise Defect("our own reader sees no acceptance in our A-ASSOCIATE-AC")
    if {c.context_id for c in ours.contexts if c.accepted} != set(accepted.contexts):
        raise Defect("our reader and our acceptor disagree on the accepted contexts")


def _answer(data: bytes) -> None:
    try:
        answer = decode_associate_answer(RawPdu(data[0], data), PROPOSED)
    except (MalformedPdu, PeerClosed):
        return
    if isinstance(answer, AssociationAccepted):
        ids = {p.context_id for p in PROPOSED}
        if any(c.context_id not in ids for c in answer.contexts):
            raise Defect("a context result for a context never proposed")
        name = answer.implementation_version_name
        if name is not None and (len(name) > 16 or not name.isprintable() or not name.isascii()):
            raise Defect("an implementation version name that is not short printable ASCII")


def check(data: bytes) -> None:
    if len(data) < 6:
        return
    data = data[:2] + struct.pack(">I", len(data) - 6) + data[6:]
    if data[0] == ASSOCIATE_RQ:
        _acceptor(data)
    else:
        _answer(data)


def seeds() -> Iterator[bytes]:
    rq = A_ASSOCIATE()
    yield encode_associate_rq("TESTER", "PACSGUARD", PROPOSED, 16384)
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    rq = A_ASSOCIATE_RQ()
    rq.decode(encode_associate_rq("TESTER", "PACSGUARD", PROPOSED, 16384))
    primitive = rq.to_primitive()
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 2
    identity.primary_field = b"tester"
    identity.secondary_field = b"not-a-secret"
    identity.positive_response_requested = True
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    role.scu_role, role.scp_role = True, True
    primitive.user_information = [*primitive.user_information, identity, role]
    yield bytes(A_ASSOCIATE_RQ(primitive).encode())
    identity.user_identity_type = 5  # a positive response in the answer
    request = bytes(A_ASSOCIATE_RQ(primitive).encode())
    yield request
    yield accept(decode_request(request), PRINCIPAL, 16384).pdu
    reject = A_ASSOCIATE()
    reject.result, reject.result_source, reject.diagnostic = 1, 1, 7
    yield bytes(A_ASSOCIATE_RJ(reject).encode())
    yield bytes.fromhex("07000000000400000200")


HARNESS = Harness(
    name="associate",
    check=check,
    seeds=seeds,
)
