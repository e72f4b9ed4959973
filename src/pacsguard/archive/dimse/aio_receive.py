"""Incoming DIMSE messages for the asyncio front end, with large C-STORE data sets on disk.

`MessageAssembler` (pacsguard.dicom.dimse) keeps a message in memory, which suits identifiers but
not a 2 GB instance. Here the command set and identifiers are joined in memory (bounded). A
C-STORE-RQ data set becomes a Part 10 object (File Meta Information in front) that
`ArchiveService.store_instance` takes: in memory up to `IN_MEMORY_OBJECT_BYTES` (most CT and MR
images; with at most `max_associations` of them, memory stays bounded), and past that streamed
fragment by fragment into the archive's staging area (`pacsguard.archive.staging`: an unnamed,
encrypted file in the data folder; never the temp folder, never in clear). Without a staging
area (a receiver built for a test), objects stay in memory whatever their size. Fragments:
PS3.8 E.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pacsguard.archive.dimse.aio_negotiation import AcceptedContext
from pacsguard.archive.staging import StagedObject, StagedWriter, StagingArea
from pacsguard.dicom import uids
from pacsguard.dicom.command import MAX_COMMAND_BYTES, CommandError, CommandField, decode_command
from pacsguard.dicom.dimse import DimseMessage, presentation_data_values
from pacsguard.dicom.stream import encode_file_meta
from pacsguard.dicom.ul import RawPdu
from pacsguard.errors import MalformedPdu

#: A received object larger than this goes to the staging area rather than staying in memory.
IN_MEMORY_OBJECT_BYTES: Final = 2 * 1024 * 1024


@dataclass(slots=True)
class Incoming:
    """One complete DIMSE message: the command, an identifier (`data`), or a C-STORE object as
    Part 10 bytes in memory (`part10`) or staged on disk (`staged`)."""

    message: DimseMessage
    context: AcceptedContext
    data: bytes | None = None
    staged: StagedObject | None = None
    part10: bytes | None = None

    @property
    def stored_object(self) -> StagedObject | bytes | None:
        return self.staged if self.staged is not None else self.part10

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None


class MessageReceiver:
    """Collects P-DATA-TF PDUs into messages; bounds identifiers and stored objects separately."""

    def __init__(
        self,
        contexts: dict[int, AcceptedContext],
        *,
        max_identifier_bytes: int,
        max_store_bytes: int,
        staging: StagingArea | None = None,
    ) -> None:
        self._contexts = contexts
        self._max_identifier = max_identifier_bytes
        self._max_store = max_store_bytes
        self._command = bytearray()
        self._message: DimseMessage | None = None
        self._context: AcceptedContext | None = None
        self._data = bytearray()
        self._staging = staging
        self._file: StagedWriter | None = None
        self._object: bytearray | None = None  # a C-STORE object while it is in memory
        self._size = 0
        self._spill_at = (
            min(IN_MEMORY_OBJECT_BYTES, max_store_bytes) if staging is not None else None
        )

    def close(self) -> None:
        """Drop a half-received message (its staged file included)."""
        if self._file is not None:
            self._file.discard()
            self._file = None
        self._reset()

    def _reset(self) -> None:
        self._command = bytearray()
        self._message = None
        self._context = None
        self._data = bytearray()
        self._object = None
        self._size = 0

    def feed(self, pdu: RawPdu) -> list[Incoming]:
        """Add one P-DATA-TF; return the messages it completed (usually none or one)."""
        done: list[Incoming] = []
        try:
            for context_id, header, fragment in presentation_data_values(pdu.data):
                context = self._contexts.get(context_id)
                if context is None:
                    raise MalformedPdu("P-DATA on a presentation context that was not accepted")
                if self._context is not None and context.context_id != self._context.context_id:
                    raise MalformedPdu("fragments of one message on two presentation contexts")
                self._context = context
                if header & 0x01:
                    finished = self._command_fragment(fragment, header)
                else:
                    finished = self._data_fragment(fragment, header)
                if finished is not None:
                    done.append(finished)
        except BaseException:
            # A bad PDV after a complete message in the same PDU: nobody gets that message, so
            # its temporary file goes now, not never (found by fuzzing)
            for incoming in done:
                incoming.discard()
            raise
        return done

    def _command_fragment(self, fragment: memoryview, header: int) -> Incoming | None:
        if self._message is not None:
            raise MalformedPdu("command fragment after the command set was complete")
        self._command += fragment
        if len(self._command) > MAX_COMMAND_BYTES:
            raise MalformedPdu(f"DIMSE command set exceeds {MAX_COMMAND_BYTES} bytes")
        if not header & 0x02:
            return None
        self._message = self._decode_command()
        if not self._message.command.has_data_set:
            return self._finish()
        if self._message.field == CommandField.C_STORE_RQ:
            self._object = bytearray(self._file_meta())
        return None

    def _data_fragment(self, fragment: memoryview, header: int) -> Incoming | None:
        if self._message is None:
            raise MalformedPdu("data set fragment before the command set")
        self._size += len(fragment)
        if self._object is not None:
            self._object += fragment
            if self._spill_at is not None and self._size > self._spill_at:
                self._spill()
        elif self._file is not None:
            # Past the configured object size: keep reading, but keep nothing more. The staged
            # object still counts the bytes, so that store_instance refuses it with
            # out-of-resources and audits it.
            self._file.write(fragment, keep=self._size <= self._max_store)
        else:
            if self._size > self._max_identifier:
                raise MalformedPdu(f"DIMSE identifier exceeds {self._max_identifier} bytes")
            self._data += fragment
        return self._finish() if header & 0x02 else None

    def _decode_command(self) -> DimseMessage:
        try:
            command = decode_command(self._command)
        except CommandError as exc:
            raise MalformedPdu(f"undecodable DIMSE command set: {exc}") from None
        assert self._context is not None
        return DimseMessage(command, self._context.context_id)

    def _file_meta(self) -> bytes:
        assert self._message is not None and self._context is not None
        command = self._message.command
        try:
            return encode_file_meta(
                sop_class_uid=command.text("AffectedSOPClassUID"),
                sop_instance_uid=command.text("AffectedSOPInstanceUID"),
                transfer_syntax=self._context.transfer_syntax,
                implementation_uid=uids.IMPLEMENTATION_CLASS_UID,
                implementation_version=uids.IMPLEMENTATION_VERSION_NAME,
            )
        except ValueError as exc:
            raise MalformedPdu(f"C-STORE-RQ command unusable: {exc}") from None

    def _spill(self) -> None:
        """Move the object received so far from memory into a staged file."""
        assert self._object is not None and self._staging is not None
        self._file = self._staging.create()
        self._file.write(self._object, keep=self._size <= self._max_store)
        self._object = None

    def _finish(self) -> Incoming:
        message, context = self._message, self._context
        assert message is not None and context is not None
        incoming = Incoming(message, context)
        if self._file is not None:
            incoming.staged = self._file.finish()
            self._file = None
        elif self._object is not None:
            incoming.part10 = bytes(self._object)
        elif message.command.has_data_set:
            incoming.data = bytes(self._data)
        self._reset()
        return incoming
