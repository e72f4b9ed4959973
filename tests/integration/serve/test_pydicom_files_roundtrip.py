"""Every DICOM file pydicom ships for its tests (with `pydicom-data`) through a real C-STORE into
a running archive and back out by C-GET, with pynetdicom as the client on both legs: the data
set that comes back is byte-identical to the one in the file, or the file is an exception whose
reason is in `exception_for` / `REFUSED` below.

pynetdicom sends each file's data set as it is on disk (STORE_SEND_CHUNKED_DATASET); files that
share a SOP Instance UID (the same image in several transfer syntaxes) each go to an archive of
their own, since the archive rightly refuses a second, different object under one UID."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.events import Event
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from pacsguard.archive.app import RunningArchive, start_archive
from pacsguard.archive.config import load_settings
from pacsguard.archive.dimse.contexts import TRANSFER_SYNTAXES

from .conftest import free_port, make_data_dir

#: pydicom warns about many of these files' oddities. `serve` prints such warnings and goes on;
#: the archive here runs in this process, where the suite's `-W error` would turn each warning
#: into an exception inside the archive's pydicom path (and a refusal `serve` never gives).
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

STORAGE: Final = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
SYNTAXES: Final = {str(ts) for ts in TRANSFER_SYNTAXES}
_NO_UIDS: Final = (0xC000, "a data set of one to three elements: no SOP, series or study UIDs")
_OTHER_UID: Final = (
    0xA900,
    "its File Meta names another SOP Instance UID than its data set; pynetdicom sends the File "
    "Meta's as Affected SOP Instance UID, and PS3.4 B.2.3 wants the two equal",
)
_NO_STUDY: Final = (0xC000, "no Study or Series Instance UID: nothing to file it under")
#: Files the archive refuses on C-STORE, with the status and why that is right.
REFUSED: Final[dict[str, tuple[int, str]]] = {
    "bad_sequence.dcm": (0xC000, "its SOP Instance, study and series UIDs are hex digests"),
    "UN_sequence.dcm": _NO_UIDS,
    "no_meta_group_length.dcm": _NO_UIDS,
    "priv_SQ.dcm": _NO_UIDS,
    "badVR.dcm": _OTHER_UID,
    "rtdose.dcm": _OTHER_UID,
    "rtdose_1frame.dcm": _OTHER_UID,
    "rtdose_expb.dcm": _OTHER_UID,
    "rtdose_expb_1frame.dcm": _OTHER_UID,
    "rtplan.dcm": _OTHER_UID,
    "rtplan_truncated.dcm": _OTHER_UID,
    "JPEGLSNearLossless_08.dcm": _NO_STUDY,
    "JPEGLSNearLossless_16.dcm": _NO_STUDY,
    "SC_rgb_jls_lossy_line.dcm": _NO_STUDY,
    "SC_rgb_jls_lossy_sample.dcm": _NO_STUDY,
}


NOT_STORAGE: Final = "not a storage SOP class (e.g. a DICOMDIR): the archive refuses the context"
NOT_ACCEPTED: Final = "a transfer syntax the archive does not accept (contexts.TRANSFER_SYNTAXES)"


def _files() -> list[Path]:
    return sorted((Path(p) for p in get_testdata_files() if Path(p).is_file()), key=str)


def _meta(path: Path) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_file_meta_info(path)
        except Exception:
            return None


def exception_for(path: Path) -> str | None:
    """Why `path` cannot make the round trip at all, or None when it must."""
    if path.read_bytes()[128:132] != b"DICM":
        return "not a Part 10 file (no preamble and File Meta): C-STORE needs its UIDs"
    meta = _meta(path)
    if meta is None:
        return "File Meta Information pydicom cannot read"
    missing = [
        k
        for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        if not meta.get(k)
    ]
    if missing:
        return f"File Meta without {', '.join(missing)}: pynetdicom cannot send it as stored"
    if str(meta.MediaStorageSOPClassUID) not in STORAGE:
        return NOT_STORAGE
    if str(meta.TransferSyntaxUID) not in SYNTAXES:
        return NOT_ACCEPTED
    return None


def _rounds() -> list[tuple[Path, int]]:
    """(file, archive number): files that share a SOP Instance UID go to different archives."""
    seen: collections.Counter[str] = collections.Counter()
    cases = []
    for path in _files():
        meta = _meta(path)
        uid = str(meta.get("MediaStorageSOPInstanceUID", "")) if meta is not None else ""
        cases.append((path, seen[uid]))
        seen[uid] += 1
    return cases


CASES: Final = _rounds()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, RunningArchive]]:
    """Archive number -> a running archive (started on first use), plaintext on loopback."""
    running: dict[int, RunningArchive] = {}

    class Lazy(dict[int, RunningArchive]):
        def __missing__(self, key: int) -> RunningArchive:
            directory = make_data_dir(tmp_path_factory.mktemp(f"archive{key}"))
            settings = load_settings(
                directory / "pacsguard.toml",
                env={},
                overrides={
                    "server.dimse_port": free_port(),
                    "server.plaintext_port": free_port(),
                },
            )
            archive = start_archive(settings)
            running[key] = self[key] = archive
            return archive

    yield Lazy()
    for archive in running.values():
        archive.stop()


def _client(sop_class: str, syntax: str) -> AE:
    ae = AE(ae_title="TESTER")
    ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


@pytest.mark.parametrize(("path", "number"), CASES, ids=[p.name for p, _ in CASES])
def test_c_store_then_c_get_is_byte_identical(
    path: Path, number: int, archives: dict[int, RunningArchive], monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = exception_for(path)
    endpoint = next(e for e in archives[number].endpoints if not e.tls)
    if reason in (NOT_STORAGE, NOT_ACCEPTED):
        meta = _meta(path)
        assert meta is not None
        sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        assoc = _client(sop_class, syntax).associate(
            endpoint.host, endpoint.port, ae_title="PACSGUARD"
        )
        assert assoc.is_established
        accepted = [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
        assoc.release()
        assert sop_class not in accepted  # the archive refuses the context, as listed
        return
    if reason is not None:
        pytest.skip(reason)  # listed: see exception_for
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    meta, offset = split_dataset(path)
    sent = path.read_bytes()[offset:]
    sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)

    assoc = _client(sop_class, syntax).associate(endpoint.host, endpoint.port, ae_title="PACSGUARD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status is not None
    if path.name in REFUSED:
        assert int(status.Status) == REFUSED[path.name][0]
        return
    assert int(status.Status) == 0x0000

    received: list[bytes] = []

    def on_store(event: Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = _client(sop_class, syntax)
    assoc = ae.associate(
        endpoint.host,
        endpoint.port,
        ae_title="PACSGUARD",
        ext_neg=[build_role(UID(sop_class), scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.SOPInstanceUID = str(meta.MediaStorageSOPInstanceUID)
    try:
        statuses = [
            int(s.Status)
            for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)
            if s
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    assert len(received) == 1
    assert received[0] == sent
