"""After an A-ASSOCIATE-RJ the scanner closes its side at once (PS3.8 9.2, action AE-4).

The peer here is a real socket server on an ephemeral loopback port that answers every request
with A-ASSOCIATE-RJ "called AE title not recognised" (permanent, service user) and then keeps
its side open, so that only the requestor's close can end each connection. Timeouts are
generous: the assertions are about what happened, not how fast.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from pacsguard.dicom.client import Timeouts, request_association
from pacsguard.dicom.ul import (
    MAX_ASSOCIATION_PDU,
    AssociationAccepted,
    AssociationRejected,
    read_pdu,
)
from pacsguard.scan.aets import ANY_SCP, called_aets_to_try
from pacsguard.scan.model import Observations, Outcome, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse, proposed_contexts

LOOPBACK = "127.0.0.1"
#: A-ASSOCIATE-RJ: result 1 (permanent), source 1 (service user), reason 7 (called AE title
#: not recognised), PS3.8 9.3.4.
REJECT_CALLED_AE = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, 7)
GENEROUS = 10.0


@dataclass
class RejectingPeer:
    port: int = 0
    connections: int = 0
    #: Connections the requestor closed (EOF seen) after being rejected.
    closed_by_requestor: int = 0
    done: list[asyncio.Event] = field(default_factory=list)


@asynccontextmanager
async def rejecting_peer() -> AsyncIterator[RejectingPeer]:
    peer = RejectingPeer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.connections += 1
        finished = asyncio.Event()
        peer.done.append(finished)
        try:
            await read_pdu(reader, MAX_ASSOCIATION_PDU)
            writer.write(REJECT_CALLED_AE)
            await writer.drain()
            if await reader.read() == b"":  # our side stays open: only the requestor ends it
                peer.closed_by_requestor += 1
        finally:
            finished.set()
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    peer.port = server.sockets[0].getsockname()[1]
    try:
        yield peer
    finally:
        server.close()
        await server.wait_closed()


async def _all_finished(peer: RejectingPeer) -> None:
    async with asyncio.timeout(GENEROUS):
        for event in peer.done:
            await event.wait()


def test_the_requestor_closes_a_rejected_connection() -> None:
    async def scenario() -> tuple[AssociationAccepted | AssociationRejected, RejectingPeer]:
        async with rejecting_peer() as peer:
            answer, assoc = await request_association(
                LOOPBACK,
                peer.port,
                calling_ae="PACSGUARD",
                called_ae=ANY_SCP,
                contexts=proposed_contexts(),
                timeouts=Timeouts(connect=GENEROUS, read=GENEROUS),
            )
            assert assoc is None
            await _all_finished(peer)
            return answer, peer

    answer, peer = asyncio.run(scenario())
    assert isinstance(answer, AssociationRejected)
    assert answer.reason_name == "called-ae-title-not-recognized"
    assert (peer.connections, peer.closed_by_requestor) == (1, 1)


def test_a_called_ae_checking_host_gets_one_closed_connection_per_title_tried() -> None:
    """ANY-SCP, then each curated vendor title, one after another; every connection is closed
    by the scanner and the verdicts are those of a host that checks the called AE."""

    async def scenario() -> tuple[Observations, RejectingPeer]:
        async with rejecting_peer() as peer:
            options = ProbeOptions(
                timeouts=Timeouts(connect=GENEROUS, read=GENEROUS),
                total_timeout=60.0,
                echo=False,
                count=False,
            )
            obs = await probe_dimse(Target(LOOPBACK, peer.port), options)
            await _all_finished(peer)
            return obs, peer

    obs, peer = asyncio.run(scenario())
    titles = (ANY_SCP, *called_aets_to_try(guess=False))
    assert [a.called_ae for a in obs.attempts] == list(titles)
    assert {a.outcome for a in obs.attempts} == {Outcome.REJECTED}
    assert obs.dicom and obs.any_called_ae_accepted is False
    assert not obs.tls  # a DICOM answer: no TLS attempt
    assert (peer.connections, peer.closed_by_requestor) == (len(titles), len(titles))
