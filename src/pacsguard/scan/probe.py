"""The DIMSE probe: one target in, Observations out; never raises for a remote's behaviour.

Conversation, in order (each step only if the previous one allows it):
1. A-ASSOCIATE-RQ as `PACSGUARD` -> `ANY-SCP`, proposing Verification, Study Root FIND, Patient
   Root FIND and one storage SOP class (never used: an accepted storage context is the evidence).
2. On "called AE not recognised" (RJ reason 7): the titles the user gave, then the curated
   vendor-default titles, all at once (one more round trip, not one per title; not with
   `--no-vendor-aets`), then with `--guess-aets` the longer list, one by one and spaced out.
3. On an accepted association: C-ECHO, then exposure counting over C-FIND, then A-RELEASE.

TLS (`pacsguard.scan.tls`): when the plaintext request gets no DICOM answer (closed, silent, or
not DICOM), the target is observed for TLS and, if it speaks TLS, the same conversation runs
again inside it. On the DICOM-TLS port 2762 TLS is tried first and plaintext only without it.

`ProbeOptions.total_timeout` bounds the whole conversation, release or abort included: when it
runs out, the connection is dropped at once and what was counted so far is reported as a lower
bound. pydicom and pynetdicom are imported once a port answers, not before (a scan of closed
ports starts and ends without them), and a verification-only probe (no echo, no count) never
loads them: its association PDUs are `pacsguard.dicom.acse`'s.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING, Final

from pacsguard.dicom.connect import ConnectTimeout, Timeouts, open_connection
from pacsguard.errors import MalformedPdu, PduTooLarge, PeerClosed, ProtocolError
from pacsguard.scan.aets import ANY_SCP, SCANNER_CALLING_AE, called_aets_to_try
from pacsguard.scan.model import (
    ANOMALY_AC_WITHOUT_IMPLEMENTATION_UID,
    ANOMALY_FIND_PIXEL_DATA,
    ANOMALY_RJ_PROTOCOL_VERSION,
    AssociationAttempt,
    ClientCertificate,
    CountBudget,
    Exposure,
    LowerBoundReason,
    Observations,
    Outcome,
    Target,
    TlsFacts,
)
from pacsguard.scan.tls import DICOM_TLS_PORT, observe_tls, observing_context

if TYPE_CHECKING:
    from pacsguard.dicom.client import Association
    from pacsguard.dicom.ul import AssociationAccepted, ProposedContext
    from pacsguard.scan.counting import ExposureCounter


@cache
def proposed_contexts() -> tuple[ProposedContext, ...]:
    """Verification, both FIND roots, and one storage SOP class (accepted = evidence, unused)."""
    from pacsguard.dicom import uids
    from pacsguard.dicom.ul import propose

    return propose(
        [
            uids.VERIFICATION,
            uids.STUDY_ROOT_FIND,
            uids.PATIENT_ROOT_FIND,
            uids.SECONDARY_CAPTURE_STORAGE,
        ]
    )


def __getattr__(name: str) -> tuple[ProposedContext, ...]:
    """`PROPOSED`, the former module constant, built on first use (it needs pynetdicom)."""
    if name == "PROPOSED":
        return proposed_contexts()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """What a probe may do and how long it may take."""

    timeouts: Timeouts = field(default_factory=Timeouts)
    total_timeout: float = 30.0
    echo: bool = True
    count: bool = True
    guess_aets: bool = False
    #: After ANY-SCP is refused as an unknown called AE, try the curated vendor-default titles
    #: (`pacsguard.scan.aets`), all at once. Off: only ANY-SCP and the user's titles, as nmap's
    #: dicom-ping does; a host's default title then goes unnoticed.
    vendor_aets: bool = True
    #: Called AE titles the user knows (e.g. an auditor's own archive), tried right after ANY-SCP.
    called_aets: tuple[str, ...] = ()
    #: Pause between guessed (non-curated) called AE titles on one host: guessing is a
    #: brute-force pattern, so it goes slowly and only when asked for.
    guess_interval: float = 0.5
    calling_ae: str = SCANNER_CALLING_AE
    budget: CountBudget = field(default_factory=CountBudget)
    #: Speak DIMSE inside TLS with this context (and observe nothing about the TLS layer).
    tls: ssl.SSLContext | None = None
    #: Without `tls`: look for TLS where plaintext gets no DICOM answer, and on port 2762.
    detect_tls: bool = True


def accepted_services(accepted: AssociationAccepted) -> tuple[str, ...]:
    from pacsguard.dicom import uids

    return tuple(
        uids.SOP_CLASS_NAMES[c.abstract_syntax]
        for c in accepted.contexts
        if c.accepted and c.abstract_syntax in uids.SOP_CLASS_NAMES
    )


def _failure_outcome(exc: BaseException) -> tuple[Outcome, str]:
    """Classify a failed association attempt without leaking remote content."""
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.REFUSED, "connection refused"
    if isinstance(exc, ConnectTimeout):
        return Outcome.TIMEOUT, "no TCP answer within the connect timeout"
    if isinstance(exc, TimeoutError):
        return Outcome.SILENT, "silent-after-connect"
    if isinstance(exc, PduTooLarge):
        return Outcome.PROTOCOL_ERROR, "pdu-too-large"
    if isinstance(exc, MalformedPdu):
        return Outcome.PROTOCOL_ERROR, "not-dicom"
    if isinstance(exc, PeerClosed):
        return Outcome.CLOSED, "closed-without-answer"
    if isinstance(exc, ssl.SSLError):
        return Outcome.PROTOCOL_ERROR, f"tls: {exc.reason or exc.__class__.__name__}"
    if isinstance(exc, OSError) and exc.errno in (
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EADDRNOTAVAIL,
    ):
        return Outcome.UNREACHABLE, "host unreachable"
    if isinstance(exc, OSError):
        return Outcome.CLOSED, f"connection error: {exc.__class__.__name__}"
    return Outcome.PROTOCOL_ERROR, exc.__class__.__name__


class _State:
    """Mutable record of a probe in progress, so a total timeout still reports what was seen."""

    def __init__(self, target: Target, tls: bool) -> None:
        self.target = target
        self.tls = tls
        self.tls_facts: TlsFacts | None = None
        self.started = time.monotonic()
        self.attempts: list[AssociationAttempt] = []
        self.accepted: AssociationAccepted | None = None
        self.accepted_called: list[str] = []
        self.any_called: bool | None = None
        self.calling_checked: bool | None = None
        self.echo_status: int | None = None
        self.exposure: Exposure | None = None
        self.counter: ExposureCounter | None = None
        #: Association attempts in progress, by called AE: (connected, inside TLS), for a total
        #: timeout that ends the probe in the middle of them.
        self.in_flight: dict[str, tuple[bool, bool]] = {}
        self.anomalies: list[str] = []
        self.error: str | None = None

    def observations(self) -> Observations:
        answered = any(a.outcome in (Outcome.ACCEPTED, Outcome.REJECTED) for a in self.attempts)
        reachable = self.tls_facts is not None or any(
            a.outcome not in (Outcome.REFUSED, Outcome.TIMEOUT, Outcome.UNREACHABLE)
            for a in self.attempts
        )
        acc = self.accepted
        target = self.target
        if self.tls and target.transport == "dimse":
            target = replace(target, transport="dimse-tls")
        return Observations(
            target=target,
            reachable=reachable,
            dicom=answered,
            attempts=tuple(self.attempts),
            any_called_ae_accepted=self.any_called,
            calling_ae_checked=self.calling_checked,
            accepted_called_aets=tuple(self.accepted_called),
            accepted_services=accepted_services(acc) if acc else (),
            max_pdu=acc.max_pdu if acc else None,
            implementation_class_uid=acc.implementation_class_uid if acc else None,
            implementation_version_name=acc.implementation_version_name if acc else None,
            echo_status=self.echo_status,
            exposure=self.exposure,
            tls=self.tls,
            tls_facts=self.tls_facts,
            anomalies=tuple(
                dict.fromkeys(
                    [*self.anomalies, ANOMALY_FIND_PIXEL_DATA]
                    if self.exposure is not None and self.exposure.pixel_data_in_answers
                    else self.anomalies
                )
            ),
            error=self.error,
            duration_s=round(time.monotonic() - self.started, 4),
        )


@dataclass(frozen=True, slots=True)
class _Tried:
    """One association request and what came of it, not yet recorded in the probe's state."""

    attempt: AssociationAttempt
    assoc: Association | None = None
    accepted: AssociationAccepted | None = None
    anomalies: tuple[str, ...] = ()


async def _request(state: _State, called_ae: str, options: ProbeOptions) -> _Tried:
    target = state.target
    tls = options.tls is not None
    state.in_flight[called_ae] = (False, tls)
    try:
        reader, writer = await open_connection(
            target.host, target.port, timeouts=options.timeouts, tls=options.tls
        )
        state.in_flight[called_ae] = (True, tls)
        from pacsguard.dicom.client import associate
        from pacsguard.dicom.ul import AssociationRejected

        answer, assoc = await associate(
            reader,
            writer,
            calling_ae=options.calling_ae,
            called_ae=called_ae,
            contexts=proposed_contexts(),
            timeouts=options.timeouts,
        )
    except (OSError, TimeoutError, ProtocolError, ssl.SSLError) as exc:
        del state.in_flight[called_ae]
        outcome, reason = _failure_outcome(exc)
        noted = (
            (reason,) if outcome in (Outcome.PROTOCOL_ERROR, Outcome.CLOSED, Outcome.SILENT) else ()
        )
        return _Tried(
            AssociationAttempt(options.calling_ae, called_ae, outcome, reason, tls=tls),
            anomalies=noted,
        )
    del state.in_flight[called_ae]
    if isinstance(answer, AssociationRejected):
        # We speak protocol version 1, the only one: a peer that says otherwise is odd.
        odd = (ANOMALY_RJ_PROTOCOL_VERSION,) if (answer.source, answer.reason) == (2, 2) else ()
        return _Tried(
            AssociationAttempt(
                options.calling_ae, called_ae, Outcome.REJECTED, answer.reason_name, tls=tls
            ),
            anomalies=odd,
        )
    # The implementation class UID is mandatory in an A-ASSOCIATE-AC (PS3.7 D.3.3.2).
    odd = (
        (ANOMALY_AC_WITHOUT_IMPLEMENTATION_UID,) if answer.implementation_class_uid is None else ()
    )
    return _Tried(
        AssociationAttempt(
            options.calling_ae,
            called_ae,
            Outcome.ACCEPTED,
            None,
            accepted_services(answer),
            tls=tls,
        ),
        assoc,
        answer,
        odd,
    )


def _record(state: _State, tried: _Tried) -> None:
    state.attempts.append(tried.attempt)
    state.anomalies.extend(tried.anomalies)
    if tried.accepted is not None:
        state.accepted_called.append(tried.attempt.called_ae)
        if state.accepted is None:  # the first accepted title is the one the probe goes on with
            state.accepted = tried.accepted


async def _attempt(
    state: _State, called_ae: str, options: ProbeOptions
) -> tuple[AssociationAttempt, Association | None]:
    tried = await _request(state, called_ae, options)
    _record(state, tried)
    return tried.attempt, tried.assoc


#: Rejections that say "not now" rather than "not you" (PS3.8 Table 9-21, source 3): a title
#: refused so while the vendor titles were tried together is tried again on its own.
_TRANSIENT: Final = frozenset({"temporary-congestion", "local-limit-exceeded"})
#: Pauses before asking again after a "not now" (a server still counting the association it
#: just rejected, as pynetdicom with `maximum_associations=1` does, needs a moment).
_TRANSIENT_PAUSES: Final = (0.1, 0.25, 0.5, 1.0)


async def _attempt_patiently(
    state: _State, called_ae: str, options: ProbeOptions
) -> tuple[AssociationAttempt, Association | None]:
    """`_attempt`, asked again a few times, a little later each time, while the answer is
    "not now"."""
    attempt, assoc = await _attempt(state, called_ae, options)
    for pause in _TRANSIENT_PAUSES:
        if attempt.outcome is not Outcome.REJECTED or attempt.reason not in _TRANSIENT:
            break
        await asyncio.sleep(pause)
        attempt, assoc = await _attempt(state, called_ae, options)
    return attempt, assoc


def _settles(state: _State, attempt: AssociationAttempt, assoc: Association | None) -> bool:
    """Whether this answer ends the search for a called AE (and records the AE policy it shows)."""
    if assoc is not None:
        state.calling_checked = False
        return True
    if attempt.outcome is Outcome.REJECTED and attempt.reason == "calling-ae-title-not-recognized":
        state.calling_checked = True  # the called title was right; the calling AE is listed
        return True
    return attempt.outcome is not Outcome.REJECTED  # it stopped answering: stop knocking


async def _attempt_together(
    state: _State, titles: tuple[str, ...], options: ProbeOptions
) -> tuple[bool, Association | None]:
    """Request an association for each title at once: one round trip for the whole list.

    Answers are judged in list order, as if the titles had been tried one after another, with
    one difference: an acceptance anywhere in the list wins over a calling-AE refusal of an
    earlier title (the host does let a stranger in). A title that got no answer, or a
    "not now" rejection (congestion, association limit), is tried again on its own, in order,
    so that a server with a connection limit is judged as one tried title by title. Other
    accepted associations are released. Returns (settled, the association to go on with).
    """
    tasks = [asyncio.ensure_future(_request(state, t, options)) for t in titles]
    try:
        tried = list(await asyncio.gather(*tasks))
    except BaseException:  # cancelled (time budget): record and drop what already answered
        for task in tasks:
            task.cancel()
        done = [t.result() for t in tasks if t.done() and not t.cancelled() and not t.exception()]
        for t in done:
            _record(state, t)
            if t.assoc is not None:
                await t.assoc.abort()
        raise
    for t in tried:
        _record(state, t)
    chosen = next((t.assoc for t in tried if t.assoc is not None), None)
    others = [t.assoc for t in tried if t.assoc is not None and t.assoc is not chosen]
    if others:
        await asyncio.gather(*(a.release() for a in others))
    if chosen is not None:
        state.calling_checked = False
        return True, chosen
    retry = False
    for t in tried:
        if t.attempt.outcome is not Outcome.REJECTED or t.attempt.reason in _TRANSIENT:
            retry = True  # from here on, one at a time
        if retry:
            attempt, assoc = await _attempt_patiently(state, t.attempt.called_ae, options)
        else:
            attempt, assoc = t.attempt, None
        if _settles(state, attempt, assoc):
            return True, assoc
    return False, None


async def _negotiate(state: _State, options: ProbeOptions) -> Association | None:
    """Find a called AE that works and learn the AE policy on the way.

    ANY-SCP first; on "called AE not recognised", the titles the user gave, one by one, then the
    curated vendor titles all at once (`_attempt_together`), then, only with `--guess-aets`,
    the longer list one by one, `guess_interval` apart.
    """
    first, assoc = await _attempt(state, ANY_SCP, options)
    if assoc is not None:
        state.any_called = True
        state.calling_checked = False
        return assoc
    if first.outcome is not Outcome.REJECTED:
        return None
    if first.reason == "calling-ae-title-not-recognized":
        state.calling_checked = True
        return None
    if first.reason != "called-ae-title-not-recognized":
        return None
    state.any_called = False
    known = tuple(dict.fromkeys(options.called_aets))
    for title in known:
        attempt, assoc = await _attempt(state, title, options)
        if _settles(state, attempt, assoc):
            return assoc
    vendor = called_aets_to_try(guess=False)
    curated = tuple(t for t in vendor if t not in known) if options.vendor_aets else ()
    if curated:
        settled, assoc = await _attempt_together(state, curated, options)
        if settled:
            return assoc
    done = {*known, *vendor}
    for title in called_aets_to_try(guess=options.guess_aets):
        if title in done:
            continue
        if options.guess_interval > 0:
            await asyncio.sleep(options.guess_interval)
        attempt, assoc = await _attempt(state, title, options)
        if _settles(state, attempt, assoc):
            return assoc
    return None


async def _converse(state: _State, options: ProbeOptions) -> None:
    assoc = await _negotiate(state, options)
    if assoc is None:
        return
    from pacsguard.dicom import uids

    clean = False  # stays False when cancelled (time budget): abort, do not wait for a release
    try:
        echo_ctx = assoc.accepted.accepted_context(uids.VERIFICATION)
        if options.echo and echo_ctx is not None:
            state.echo_status = await assoc.echo(echo_ctx)
        can_query = any(
            assoc.accepted.accepted_context(uid) is not None
            for uid in (uids.STUDY_ROOT_FIND, uids.PATIENT_ROOT_FIND)
        )
        if options.count and can_query:
            from pacsguard.scan.counting import ExposureCounter  # pydicom: only to count

            state.counter = ExposureCounter(options.budget)
            clean = await state.counter.count(assoc, assoc.accepted)
        else:
            clean = True
    except (TimeoutError, ProtocolError, OSError) as exc:
        state.error = f"conversation cut short: {_failure_outcome(exc)[1]}"
    finally:
        if clean:
            await assoc.release()
        else:
            await assoc.abort()


#: Plaintext outcomes that may hide a TLS server: it closes, waits, or answers with an alert.
_NO_DICOM_ANSWER: Final = frozenset({Outcome.CLOSED, Outcome.SILENT, Outcome.PROTOCOL_ERROR})


def _maybe_tls(state: _State) -> bool:
    return bool(state.attempts) and all(
        a.outcome in _NO_DICOM_ANSWER and a.reason != "pdu-too-large" for a in state.attempts
    )


async def _converse_detecting_tls(state: _State, options: ProbeOptions) -> None:
    """The conversation in plaintext or inside TLS, whichever the target speaks."""
    tls_first = state.target.port == DICOM_TLS_PORT
    if not tls_first:
        await _converse(state, options)
        if not _maybe_tls(state):
            return
    target = state.target
    facts = await observe_tls(target.host, target.port, options.timeouts)
    if facts is None:
        if tls_first:
            await _converse(state, options)
        return
    state.tls, state.tls_facts = True, facts
    state.anomalies.clear()  # a TLS server's answer to plaintext is not an anomaly
    if facts.client_certificate is ClientCertificate.REQUIRED:
        return  # without a certificate it will not let us speak DICOM at all
    await _converse(state, replace(options, tls=observing_context()))


async def probe_dimse(target: Target, options: ProbeOptions) -> Observations:
    """Probe one DICOM endpoint; never raises.

    `options.total_timeout` is a hard bound on the whole probe, release included: on expiry the
    connection is dropped without waiting for the peer (see `connect.close_within_deadline`).
    """
    state = _State(target, tls=options.tls is not None)
    timed_out = False
    try:
        async with asyncio.timeout(options.total_timeout):
            if options.tls is None and options.detect_tls:
                await _converse_detecting_tls(state, options)
            else:
                await _converse(state, options)
    except TimeoutError:
        timed_out = True
        state.error = f"total time budget of {options.total_timeout:g}s exhausted"
        for called_ae, (connected, tls) in state.in_flight.items():  # cut short mid-request
            if connected:
                outcome, reason = Outcome.SILENT, "silent-after-connect"
                state.anomalies.append(reason)
            elif tls:  # TCP and the TLS handshake are one step here
                outcome, reason = Outcome.TIMEOUT, "no TLS connection within the total time budget"
            else:
                outcome, reason = Outcome.TIMEOUT, "no TCP answer within the total time budget"
            state.attempts.append(
                AssociationAttempt(options.calling_ae, called_ae, outcome, reason, tls=tls)
            )
    counter = state.counter
    if counter is not None:
        cut = LowerBoundReason.TIME_BUDGET if timed_out and not counter.finished else None
        state.exposure = counter.exposure(cut_short=cut)
    elif timed_out and state.accepted is not None and options.count:
        state.exposure = Exposure(
            lower_bound=True,
            lower_bound_reasons=(LowerBoundReason.TIME_BUDGET,),
            notes=("time budget exhausted before counting",),
        )
    return state.observations()
