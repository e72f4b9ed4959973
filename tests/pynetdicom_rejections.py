"""A requestor-side race in pynetdicom 3.0, worked around for the tests' pynetdicom clients.

`ACSE._negotiate_as_requestor` sends the A-ASSOCIATE-RQ, waits for the socket to be ready and
then checks `socket._is_connected` before it reads the answer. When the acceptor answers with
an A-ASSOCIATE-RJ within that gap (the archive now rejects in well under a millisecond), the
DUL thread has already taken the RJ, queued its primitive and closed the socket (PS3.8 action
AE-4), so the check fails and pynetdicom reports an abort it sent itself ("Aborting
Association") although the rejection sits unread in its queue: about 1 in 150 rejections on
this loaded machine, seen as `is_rejected` False in tests that assert a rejection.

`install` wraps `AE.associate`: an association that ended that way, with an A-ASSOCIATE
rejection primitive still in the DUL's queue, is reported as the rejection it was. Nothing
else changes; the archive's own bytes are what the peer read.
"""

from __future__ import annotations

import functools
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE


def _unread_rejection(assoc: Association) -> A_ASSOCIATE | None:
    if assoc.is_established or assoc.is_rejected or not assoc.is_aborted:
        return None
    queued = list(assoc.dul.to_user_queue.queue)
    for primitive in queued:
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive
    return None


def install() -> None:
    if getattr(AE.associate, "_reads_unread_rejections", False):
        return
    original = AE.associate

    @functools.wraps(original)
    def associate(self: AE, *args: Any, **kwargs: Any) -> Association:
        assoc = original(self, *args, **kwargs)
        rejection = _unread_rejection(assoc)
        if rejection is not None:
            assoc.acceptor.primitive = rejection
            assoc.is_aborted = False
            assoc.is_rejected = True
        return assoc

    associate._reads_unread_rejections = True  # type: ignore[attr-defined]
    AE.associate = associate  # type: ignore[method-assign]
