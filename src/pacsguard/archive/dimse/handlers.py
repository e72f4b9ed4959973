"""DIMSE event handlers: translate C-ECHO/STORE/FIND/GET/MOVE into ArchiveService calls.

Domain outcomes become DICOM statuses here and only here (PS3.4 / PS3.7 Annex C):
0x0124 refused: not authorized; 0xA900 identifier does not match SOP class; 0xC000 unable to
process; 0xA801 move destination unknown; 0xFE00 cancelled.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import build_context

from pacsguard.archive.dimse.server import SecureAssociationServer
from pacsguard.archive.model import InstanceRecord, QueryRequest
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import NOT_AUTHORIZED, ArchiveService, Denied
from pacsguard.dicom.levels import Level, QueryRoot

log = logging.getLogger(__name__)

IDENTIFIER_MISMATCH: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC000
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
CANCELLED: Final = 0xFE00
PENDING: Final = 0xFF00

_LEVELS: Final = {
    "PATIENT": Level.PATIENT,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.IMAGE,
}
_UNIQUE_KEY: Final = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
_NOT_MATCH_KEYS: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})

#: Resolves a C-MOVE destination AE title to (host, port) when it is registered for moves.
DestinationLookup = Callable[[str], tuple[str, int] | None]


class BadIdentifier(ValueError):
    """The identifier cannot be used as a query or retrieve key."""


def _root_of(sop_class_uid: str) -> QueryRoot:
    # Patient Root Q/R models are 1.2.840.10008.5.1.4.1.2.1.x, Study Root ...2.2.x (PS3.4 C.6).
    return (
        QueryRoot.PATIENT
        if sop_class_uid.startswith("1.2.840.10008.5.1.4.1.2.1.")
        else (QueryRoot.STUDY)
    )


def query_from_identifier(identifier: Dataset, root: QueryRoot) -> QueryRequest:
    """A QueryRequest from a C-FIND identifier; BadIdentifier when unusable."""
    level_text = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    level = _LEVELS.get(level_text)
    if level is None:
        raise BadIdentifier("missing or unknown QueryRetrieveLevel")
    if root is QueryRoot.STUDY and level is Level.PATIENT:
        raise BadIdentifier("Study Root has no PATIENT level")
    keys: dict[str, str] = {}
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _NOT_MATCH_KEYS or elem.VR == "SQ":
            continue
        value = elem.value
        if value is None:
            keys[keyword] = ""
        elif isinstance(value, list | tuple) or (hasattr(value, "__iter__") and elem.VM > 1):
            keys[keyword] = "\\".join(str(v) for v in value)
        else:
            keys[keyword] = str(value)
    return QueryRequest(root=root, level=level, keys=keys)


def retrieve_keys(identifier: Dataset) -> tuple[Level, list[str]]:
    """(level, unique key values) of a C-GET / C-MOVE identifier."""
    level = _LEVELS.get(str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper())
    if level is None:
        raise BadIdentifier("missing or unknown QueryRetrieveLevel")
    raw = identifier.get(_UNIQUE_KEY[level])
    if raw is None:
        raise BadIdentifier(f"{_UNIQUE_KEY[level]} is required at {level.name} level")
    values = [str(v).strip() for v in (raw if isinstance(raw, list | tuple) else [raw])]
    values = [v for p in values for v in p.split("\\") if v]
    if not values:
        raise BadIdentifier(f"{_UNIQUE_KEY[level]} is empty")
    return level, values


def _response(request: QueryRequest, result: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = request.level.name
    for keyword, value in result.items():
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, KeyError):
            continue
    return ds


class Handlers:
    """Bound to one SecureAssociationServer; every call resolves the association's Principal."""

    def __init__(self, service: ArchiveService, destinations: DestinationLookup) -> None:
        self._service = service
        self._destinations = destinations

    def events(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_RELEASED, self.on_end),
            (evt.EVT_ABORTED, self.on_end),
            (evt.EVT_CONN_CLOSE, self.on_end),
        ]

    @staticmethod
    def _principal(event: evt.Event) -> Principal | None:
        server = getattr(event.assoc, "_server", None)
        if not isinstance(server, SecureAssociationServer):
            return None
        return server.principal_of(event.assoc)

    def on_end(self, event: evt.Event) -> None:
        server = getattr(event.assoc, "_server", None)
        if isinstance(server, SecureAssociationServer):
            server.forget(event.assoc)

    def on_echo(self, event: evt.Event) -> int:
        principal = self._principal(event)
        if principal is None:
            return NOT_AUTHORIZED
        try:
            self._service.require(principal, Action.ECHO)
        except Denied as exc:
            return exc.status
        return 0x0000

    def on_store(self, event: evt.Event) -> int:
        principal = self._principal(event)
        if principal is None:
            return NOT_AUTHORIZED
        request = cast(C_STORE, event.request)
        try:
            result = self._service.store_file(
                principal,
                Path(event.dataset_path),
                affected_sop_class_uid=str(request.AffectedSOPClassUID or "") or None,
                affected_sop_instance_uid=str(request.AffectedSOPInstanceUID or "") or None,
            )
        except Denied as exc:
            return exc.status
        return result.status

    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        principal = self._principal(event)
        if principal is None:
            yield NOT_AUTHORIZED, None
            return
        root = _root_of(str(event.request.AffectedSOPClassUID))
        try:
            request = query_from_identifier(event.identifier, root)
        except BadIdentifier:
            yield IDENTIFIER_MISMATCH, None
            return
        except Exception:
            yield UNABLE_TO_PROCESS, None
            return
        try:
            results = self._service.query(principal, request)
            for result in results:
                if event.is_cancelled:
                    results.close()
                    yield CANCELLED, None
                    return
                yield PENDING, _response(request, result)
        except Denied as exc:
            yield exc.status, None
        except ValueError:
            yield IDENTIFIER_MISMATCH, None
        except Exception:
            log.exception("C-FIND failed")
            yield UNABLE_TO_PROCESS, None

    def _records(
        self, event: evt.Event, action: Action
    ) -> tuple[Principal, list[InstanceRecord]] | int:
        principal = self._principal(event)
        if principal is None:
            return NOT_AUTHORIZED
        try:
            level, uids = retrieve_keys(event.identifier)
            return principal, self._service.instances_to_retrieve(principal, action, level, uids)
        except BadIdentifier:
            return IDENTIFIER_MISMATCH
        except Denied as exc:
            return exc.status

    def _datasets(
        self,
        event: evt.Event,
        principal: Principal,
        records: list[InstanceRecord],
        dest: str | None,
    ) -> Iterator[tuple[int, Dataset | None] | Dataset]:
        sent = failed = 0
        try:
            for record in records:
                if event.is_cancelled:
                    yield CANCELLED, None
                    return
                try:
                    ds = self._read(record)
                except Exception:
                    failed += 1
                    log.warning("stored instance could not be read for retrieve")
                    yield UNABLE_TO_PROCESS, None
                    continue
                sent += 1
                yield PENDING, ds
        finally:
            self._service.audit_retrieve(
                principal, records, destination=dest, sent=sent, failed=failed
            )

    def _read(self, record: InstanceRecord) -> Dataset:
        """Decode a stored instance. Blob streams may be decrypting and not seekable, which
        pydicom needs: spool through a temporary file (in memory while small)."""
        with (
            self._service.open_instance(record) as stream,
            tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024) as spool,
        ):
            shutil.copyfileobj(stream, spool, 1024 * 1024)
            spool.seek(0)
            return dcmread(spool)

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        found = self._records(event, Action.GET)
        if isinstance(found, int):
            # pynetdicom's C-GET flow takes a count first; failing here makes it answer with a
            # failure status (0xC413 unable to process). The denial itself is in the audit log.
            raise RetrieveRefused(found)
        principal, records = found
        yield len(records)
        yield from self._datasets(event, principal, records, None)

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        principal = self._principal(event)
        destination_ae = str(event.move_destination or "").strip()
        address = self._destinations(destination_ae) if principal is not None else None
        if address is None:
            yield None, None  # pynetdicom answers 0xA801 move destination unknown
            return
        found = self._records(event, Action.MOVE)
        if isinstance(found, int):
            raise RetrieveRefused(found)  # pynetdicom answers 0xC514; the audit log says why
        principal, records = found
        contexts = []
        for sop_class, ts in sorted({(r.sop_class_uid, r.transfer_syntax_uid) for r in records}):
            syntaxes = [t for t in (ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian) if t]
            contexts.append(build_context(sop_class, list(dict.fromkeys(syntaxes))))
        yield address[0], address[1], {"contexts": contexts[:128]}
        yield len(records)
        yield from self._datasets(event, principal, records, destination_ae)


class RetrieveRefused(Exception):
    """A C-GET / C-MOVE that policy or its identifier refused (status for the record)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"retrieve refused with status 0x{status:04X}")
        self.status = status
