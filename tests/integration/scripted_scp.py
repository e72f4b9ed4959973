"""A scripted DICOM SCP on a loopback port: real sockets, real PDUs, answers the test chooses.

For the scanner's hard cases that no well-behaved server produces on demand: duplicate answers,
failure and cancel statuses, answers that never end, PDUs that trickle or announce gigabytes,
a peer that never answers A-RELEASE. Association negotiation is the lab acceptor's (profile
`open`); after that the test's `Behaviour` owns the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_FIND
from pynetdicom.pdu import A_ASSOCIATE_RQ

from pacsguard.dicom import uids
from pacsguard.dicom.command import CommandField
from pacsguard.dicom.dimse import (
    DimseMessage,
    MessageAssembler,
    decode_dataset,
    encode_dataset,
    encode_message,
)
from pacsguard.dicom.ul import MAX_ASSOCIATION_PDU, P_DATA_TF, RELEASE_RQ, read_pdu
from pacsguard.lab.acceptor import Accepted, AcceptedContext, encode_accept, negotiate
from pacsguard.lab.profiles import LAB, HostSpec, Profile

LOOPBACK = "127.0.0.1"
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_SPEC = HostSpec(0, LOOPBACK, 0, Profile.OPEN, LAB, seed=0, patients=0)


@dataclass
class Peer:
    """The server side of one accepted association."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    contexts: dict[int, AcceptedContext]
    #: C-FIND identifiers received, in order (query level and keys only).
    queries: list[Dataset] = field(default_factory=list)
    #: The requestor asked for an orderly release (rather than aborting or vanishing).
    released: bool = False

    async def receive(self) -> DimseMessage | None:
        """The next DIMSE message; None on A-RELEASE-RQ (answered) or when the peer left."""
        assembler = MessageAssembler()
        while True:
            try:
                pdu = await read_pdu(self.reader, 1024 * 1024)
            except Exception:
                return None
            if pdu.pdu_type == RELEASE_RQ:
                self.released = True
                self.writer.write(RELEASE_RP)
                await self.writer.drain()
                return None
            if pdu.pdu_type != P_DATA_TF:
                return None
            message = assembler.feed(pdu)
            if message is not None:
                return message

    def context(self, message: DimseMessage) -> AcceptedContext:
        return self.contexts[message.context_id]

    async def answer_echo(self, message: DimseMessage) -> None:
        rsp = C_ECHO()
        rsp.MessageIDBeingRespondedTo = message.command.integer("MessageID")
        rsp.AffectedSOPClassUID = uids.VERIFICATION
        rsp.Status = 0
        self.writer.write(encode_message(rsp, message.context_id, 16384, request=False))
        await self.writer.drain()

    def identifier(self, message: DimseMessage) -> Dataset:
        ds = decode_dataset(BytesIO(message.data or b""), self.context(message).transfer_syntax)
        assert ds is not None
        return ds

    def find_response(
        self, message: DimseMessage, status: int, identifier: Dataset | None = None
    ) -> bytes:
        context = self.context(message)
        rsp = C_FIND()
        rsp.MessageIDBeingRespondedTo = message.command.integer("MessageID")
        rsp.AffectedSOPClassUID = context.abstract_syntax
        rsp.Status = status
        if identifier is not None:
            rsp.Identifier = encode_dataset(identifier, context.transfer_syntax)
        return encode_message(rsp, message.context_id, 16384, request=False)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


#: What the server does once the association is accepted.
Behaviour = Callable[[Peer], Awaitable[None]]
#: Answers to one C-FIND: (status, identifier) pairs, the final status last.
FindAnswers = Callable[[Dataset], list[tuple[int, Dataset | None]]]


def answering(find: FindAnswers) -> Behaviour:
    """A well-behaved conversation whose C-FIND answers come from `find`."""

    async def behave(peer: Peer) -> None:
        while (message := await peer.receive()) is not None:
            if message.field == CommandField.C_ECHO_RQ:
                await peer.answer_echo(message)
            elif message.field == CommandField.C_FIND_RQ:
                query = peer.identifier(message)
                peer.queries.append(query)
                for status, ds in find(query):
                    await peer.send(peer.find_response(message, status, ds))

    return behave


@dataclass
class ScriptedScp:
    port: int
    peers: list[Peer]


def _refusing(rq: A_ASSOCIATE_RQ, answer: Accepted, refuse: Collection[str]) -> Accepted:
    """The same answer with the contexts for `refuse` (abstract syntaxes) not supported."""
    contexts = {i: c for i, c in answer.contexts.items() if c.abstract_syntax not in refuse}
    results = [
        (i, 0, contexts[i].transfer_syntax)
        if i in contexts
        else (i, 3, uids.IMPLICIT_VR_LITTLE_ENDIAN)
        for i in (int(item.context_id) for item in rq.presentation_context)
    ]
    pdu = encode_accept(LAB, rq.called_ae_title.strip(), rq.calling_ae_title.strip(), results)
    return Accepted(pdu, contexts, answer.peer_max_pdu)


@contextlib.asynccontextmanager
async def scripted_scp(
    behaviour: Behaviour, *, refuse: Collection[str] = ()
) -> AsyncIterator[ScriptedScp]:
    """Serve `behaviour` on an ephemeral loopback port of the running event loop; `refuse`
    names abstract syntaxes (e.g. Study Root FIND) whose contexts are not accepted."""
    peers: list[Peer] = []
    tasks: set[asyncio.Task[None]] = set()

    async def conversation(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            rq_pdu = await read_pdu(reader, MAX_ASSOCIATION_PDU)
            rq = A_ASSOCIATE_RQ()
            rq.decode(rq_pdu.data)
            answer = negotiate(_SPEC, rq)
            assert isinstance(answer, Accepted)
            if refuse:
                answer = _refusing(rq, answer, refuse)
            writer.write(answer.pdu)
            await writer.drain()
            peer = Peer(reader, writer, answer.contexts)
            peers.append(peer)
            await behaviour(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(conversation(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(on_connect, LOOPBACK, 0)
    try:
        yield ScriptedScp(server.sockets[0].getsockname()[1], peers)
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
