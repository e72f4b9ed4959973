"""WADO-RS streams: a client that goes away mid-study stops the reading, and the retrieve's
audit line says how far it got (sent / in flight / not started), whatever the client did."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace

from pacsguard.archive.security.principal import Action, AuthMethod, Principal
from pacsguard.lab.synth import build_dataset, generate_archive

from .conftest import WebArchive

LOADER = Principal("LOADER", "127.0.0.1", AuthMethod.ADDRESS, None, frozenset(Action))


def test_a_client_leaving_mid_study_ends_the_retrieve_and_its_audit(web: WebArchive) -> None:
    patient = generate_archive(seed=5, patients=1).patients[0]
    study = patient.studies[0]
    series = study.series[0]
    template = series.instances[0]
    count = 40
    for n in range(count):  # 40 instances of 1 MiB pixel data: 40 MiB, far above socket buffers
        instance = replace(
            template, sop_instance_uid=f"{template.sop_instance_uid}.{n + 1}", instance_number=n + 1
        )
        buffer = io.BytesIO()
        build_dataset(patient, study, series, instance, rows=512, columns=1024).save_as(
            buffer, enforce_file_format=True
        )
        result = web.archive.service.store_instance(LOADER, buffer.getvalue())
        assert result.status == 0, result
    with (
        web.client("reader") as client,
        client.stream("GET", f"/studies/{study.study_instance_uid}") as answer,
    ):
        assert answer.status_code == 200
        received = 0
        for chunk in answer.iter_raw(65536):
            received += len(chunk)
            if received > 2 * 1024 * 1024:
                break
    deadline = time.monotonic() + 20
    ends: list[dict[str, object]] = []
    while not ends and time.monotonic() < deadline:
        lines = [json.loads(line) for line in web.audit_lines()]
        ends = [
            e
            for e in lines
            if e["event"] == "retrieve" and e["participants"][0].get("user") == "reader"
        ]
        time.sleep(0.1)
    assert ends, "the retrieve's end is audited"
    detail = ends[0]["detail"]
    assert isinstance(detail, dict)
    assert detail["sent"] + detail["in_flight"] + detail["not_started"] + detail["failed"] == count
    assert detail["not_started"] > 0, detail  # it stopped reading when the client left
    assert ends[0]["outcome"] == 4  # minor failure: not everything was sent
