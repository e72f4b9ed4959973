"""The curated called-AE titles go out together, and real pynetdicom servers are judged as if
they had been tried one by one: the one title a server answers to is found, also when the
server allows a single association at a time (it refuses the others as "local limit exceeded",
and those titles are tried again on their own), and a server that checks the calling AE as
well is reported so."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacsguard.dicom.connect import Timeouts
from pacsguard.scan.aets import ANY_SCP, called_aets_to_try
from pacsguard.scan.model import Observations, Outcome, Target
from pacsguard.scan.probe import ProbeOptions, probe_dimse

LOOPBACK = "127.0.0.1"
OPTIONS = ProbeOptions(
    timeouts=Timeouts(connect=10.0, read=10.0), total_timeout=60.0, echo=False, count=False
)
CURATED = called_aets_to_try(guess=False)


@contextmanager
def pynetdicom_server(title: str, **settings: Any) -> Iterator[int]:
    """A pynetdicom Verification SCP that answers only to `title`, on an ephemeral port."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = int(probe.getsockname()[1])
    ae = AE(ae_title=title)
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    for name, value in settings.items():
        setattr(ae, name, value)
    server = ae.start_server((LOOPBACK, port), block=False)
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()


def probe(port: int, options: ProbeOptions = OPTIONS) -> Observations:
    return asyncio.run(probe_dimse(Target(LOOPBACK, port), options))


def test_the_last_curated_title_is_found_with_one_attempt_per_title() -> None:
    with pynetdicom_server(CURATED[-1]) as port:
        obs = probe(port)
    assert obs.dicom and obs.any_called_ae_accepted is False
    assert obs.accepted_called_aets == (CURATED[-1],)
    assert obs.calling_ae_checked is False
    assert [a.called_ae for a in obs.attempts] == [ANY_SCP, *CURATED]
    assert [a.outcome for a in obs.attempts] == [Outcome.REJECTED] * len(CURATED) + [
        Outcome.ACCEPTED
    ]
    assert obs.accepted_services == ("verification",)


def test_a_server_with_one_association_at_a_time_is_judged_as_title_by_title() -> None:
    with pynetdicom_server(CURATED[-1], maximum_associations=1) as port:
        obs = probe(port)
    assert obs.accepted_called_aets == (CURATED[-1],)
    assert obs.any_called_ae_accepted is False and obs.calling_ae_checked is False
    assert obs.attempts[-1].called_ae == CURATED[-1]
    assert obs.attempts[-1].outcome is Outcome.ACCEPTED
    # The titles refused as "not now" were asked again on their own; none was taken as a yes.
    assert {a.called_ae for a in obs.attempts if a.reason == "local-limit-exceeded"} <= set(CURATED)
    assert [a.called_ae for a in obs.attempts if a.outcome is Outcome.ACCEPTED] == [CURATED[-1]]


def test_a_title_the_user_knows_goes_first_and_alone() -> None:
    known = ProbeOptions(
        timeouts=OPTIONS.timeouts, total_timeout=60.0, echo=False, count=False,
        called_aets=("OURARCHIVE",),
    )  # fmt: skip
    with pynetdicom_server("OURARCHIVE") as port:
        obs = probe(port, known)
    assert [a.called_ae for a in obs.attempts] == [ANY_SCP, "OURARCHIVE"]
    assert obs.accepted_called_aets == ("OURARCHIVE",)


def test_a_server_that_checks_the_calling_ae_too_is_reported_so() -> None:
    with pynetdicom_server(CURATED[3], require_calling_aet=["SOMEONE-ELSE"]) as port:
        obs = probe(port)
    assert obs.accepted_called_aets == ()
    assert obs.any_called_ae_accepted is False
    assert obs.calling_ae_checked is True
    answered = {a.called_ae: a.reason for a in obs.attempts}
    assert answered[CURATED[3]] == "calling-ae-title-not-recognized"


def test_without_vendor_titles_only_any_scp_is_asked_as_nmap_does() -> None:
    plain = ProbeOptions(
        timeouts=OPTIONS.timeouts, total_timeout=60.0, echo=False, count=False,
        vendor_aets=False,
    )  # fmt: skip
    with pynetdicom_server(CURATED[0]) as port:
        obs = probe(port, plain)
    assert [a.called_ae for a in obs.attempts] == [ANY_SCP]
    assert obs.dicom and obs.any_called_ae_accepted is False
    assert obs.accepted_called_aets == ()
