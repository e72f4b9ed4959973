"""The HTTP prober: one web target in, Observations out; never raises for a remote's behaviour.

Conversation, in order, all GET, all to the target's own origin (a redirect elsewhere is noted,
never followed):
0. On https targets, the TLS observation DICOM over TLS uses (`scan.tls`): versions accepted,
   the certificate's facts, whether a client certificate is asked for.
1. `/` (same-origin redirects followed up to a bound): is it HTTP, does it ask for a login
   (scheme and realm), which server says it is.
2. Orthanc's REST API: `/system` (product, version; or a 401 in Orthanc's realm), and when it is
   open `/statistics` (counts) and `/patients?since=0&limit=N` (listable or not; entries counted).
3. Viewer pages from `data/http.json`, each recognised by its cited pattern.
4. QIDO-RS at the known DICOMweb roots: `{root}/studies?limit=&offset=`, paged within a budget,
   counted by Study Instance UID hash (`http_qido`), nothing kept. A 401 in the realm the data
   file names for a root recognises that product's DICOMweb as asking for credentials; a root
   with a media type counts only answers of that type.
5. Only with `default_credentials`: the short cited list of default logins, against a path that
   returns no patient data (`/system` or `/`), reported only when one works.

Every request goes through `http_session`, which bounds it in time (connect, read, and a
whole-request deadline that ends slow bodies and drip-fed headers) and in memory (headers by
h11's buffer limit, bodies by `max_body`). Bodies are parsed here and never logged; httpx is
imported inside the probe so that the CLI starts without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from pacsguard.scan.http_model import (
    CredentialResult,
    OrthancFacts,
    QidoEndpoint,
    ViewerSeen,
)
from pacsguard.scan.http_qido import QidoTally
from pacsguard.scan.http_session import (
    HTTP_TRANSPORTS,
    VIEWER_WINDOW,
    Answer,
    HttpOptions,
    ProbeState,
    Session,
    Unreachable,
    clean,
    origin,
    parse_challenge,
    tls_context,
    web_exposure,
)
from pacsguard.scan.model import Observations, Target

__all__ = ["HTTP_TRANSPORTS", "HttpOptions", "parse_challenge", "probe_http", "web_exposure"]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def _orthanc(conv: Session) -> None:
    options = conv.options
    system = await conv.get("/system", accept="application/json")
    if system is None:
        return
    if system.status == 401:
        challenge = parse_challenge(system.challenge)
        if challenge[1] in options.catalog.orthanc_realms:
            conv.state.orthanc = OrthancFacts(open=False)
        return
    if system.status != 200:
        return
    facts = conv.decode(system)
    if not isinstance(facts, dict) or not isinstance(facts.get("Version"), str):
        return
    if "ApiVersion" not in facts:
        return
    version = clean(facts["Version"], 32)
    aet = facts.get("DicomAet")
    plugins = facts.get("PluginsEnabled")
    orthanc = OrthancFacts(
        open=True,
        version=version,
        api_version=_int(facts.get("ApiVersion")),
        dicom_aet=clean(aet, 16) if isinstance(aet, str) else None,
        dicom_port=_int(facts.get("DicomPort")),
        plugins_enabled=plugins if isinstance(plugins, bool) else None,
    )
    conv.state.orthanc = orthanc
    stats = await conv.get("/statistics", accept="application/json")
    counts: dict[str, int | None] = {}
    if stats is not None and stats.status == 200:
        decoded = conv.decode(stats)
        if isinstance(decoded, dict):
            counts = {
                "patients": _int(decoded.get("CountPatients")),
                "studies": _int(decoded.get("CountStudies")),
                "series": _int(decoded.get("CountSeries")),
                "instances": _int(decoded.get("CountInstances")),
            }
    limit = options.patients_limit
    listing = await conv.get(f"/patients?since=0&limit={limit}", accept="application/json")
    listable: bool | None = None
    listed: int | None = None
    if listing is not None:
        listable = False
        if listing.status == 200:
            decoded = conv.decode(listing)
            if isinstance(decoded, list):
                listable, listed = True, len(decoded)  # identifiers counted, then dropped
            del decoded
    conv.state.orthanc = OrthancFacts(
        open=True,
        version=orthanc.version,
        api_version=orthanc.api_version,
        dicom_aet=orthanc.dicom_aet,
        dicom_port=orthanc.dicom_port,
        plugins_enabled=orthanc.plugins_enabled,
        patients=counts.get("patients"),
        studies=counts.get("studies"),
        series=counts.get("series"),
        instances=counts.get("instances"),
        patients_listable=listable,
        patients_listed=listed,
        patients_listed_lower_bound=listed is not None and listed >= limit,
    )


async def _viewers(conv: Session, root: Answer | None) -> None:
    for rule in conv.options.catalog.viewers:
        if rule.path == "/":
            page = root if root is not None and root.path == "/" else None
        else:
            page = await conv.get(rule.path, accept="text/html")
        if page is None or page.status != 200:
            continue
        text = page.body[:VIEWER_WINDOW].decode("utf-8", "replace")
        if rule.pattern.search(text):
            conv.state.viewers.append(ViewerSeen(rule.id, rule.name, rule.path, rule.source))


async def _qido(conv: Session) -> None:
    options = conv.options
    for root in options.catalog.dicomweb_roots:
        tally = QidoTally(options.qido_page_size, options.qido_max_pages)
        status: int | None = None
        opened = closed = False
        while not tally.done:
            path = f"{root.studies_path()}?limit={tally.page_size}&offset={tally.next_offset}"
            answer = await conv.get(path, accept="application/dicom+json")
            if answer is None:
                if opened:
                    tally.stop("an answer did not come in time", lower_bound=True)
                break
            status = status or answer.status
            if answer.status == 401 and not opened:
                # Refused: recognised only when the challenge names this product's realm.
                realm = parse_challenge(answer.challenge)[1]
                closed = root.realm is not None and realm == root.realm
                break
            if root.content_type is not None and answer.media_type != root.content_type:
                if opened:
                    tally.stop(f"page answered as {answer.media_type!r}", lower_bound=True)
                break  # e.g. another REST API's /studies: not this product's QIDO-RS
            if answer.status == 204:  # PS3.18: no matching studies
                opened = True
                tally.stop(None, lower_bound=False)
                break
            if answer.status != 200:
                if opened:
                    tally.stop(f"page answered {answer.status}", lower_bound=True)
                break
            if answer.truncated:
                if opened or tally.pages == 0:
                    opened = True
                tally.stop(f"answer longer than {options.max_body} bytes", lower_bound=True)
                break
            page = conv.decode(answer)
            if not isinstance(page, list):
                break
            opened = True
            tally.add_page(page)
            del page
        if status is None:
            continue
        conv.state.dicomweb.append(
            QidoEndpoint(
                path=root.path,
                status=status,
                open=opened,
                studies=tally.studies,
                lower_bound=tally.lower_bound,
                pages=tally.pages,
                phi_categories=frozenset(tally.phi),
                note=tally.note,
                product=root.product if opened or closed else None,
                auth_required=closed,
            )
        )


async def _default_credentials(conv: Session) -> None:
    """Try the cited default logins against a path that returns no patient data."""
    state = conv.state
    protected = [e.path for e in state.endpoints if e.status == 401 and e.path in ("/system", "/")]
    if not protected or state.auth_scheme != "basic":
        return
    path = "/system" if "/system" in protected else protected[0]
    state.credentials_tried = True
    for credential in conv.options.catalog.default_credentials:
        answer = await conv.get(
            path, auth=(credential.username, credential.password), read_body=False
        )
        if answer is None:
            return
        if answer.status < 400:
            state.credentials.append(
                CredentialResult(credential.id, credential.username, path, credential.source)
            )
            return


async def _converse(state: ProbeState, options: HttpOptions) -> None:
    import httpx

    target = state.target
    https = target.transport == "https"
    if https:
        # The same TLS observation as DICOM over TLS: versions, certificate, client certificate.
        from pacsguard.dicom.client import Timeouts
        from pacsguard.scan.tls import observe_tls

        timeouts = Timeouts(connect=options.connect_timeout, read=options.read_timeout)
        state.tls_facts = await observe_tls(target.host, target.port, timeouts)
        if state.tls_facts is not None:
            state.reachable = True
    timeout = httpx.Timeout(
        connect=options.connect_timeout,
        read=options.read_timeout,
        write=options.read_timeout,
        pool=options.connect_timeout,
    )
    async with httpx.AsyncClient(
        base_url=origin(target),
        timeout=timeout,
        verify=tls_context() if https else False,
        trust_env=False,  # no proxy from the environment: traffic goes to the target only
        follow_redirects=False,
        headers={"User-Agent": options.user_agent},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    ) as client:
        conv = Session(state, client, options)
        root = await conv.get_following("/")
        if root is None:  # not HTTP, too slow, or too big in its headers: nothing more to ask
            return
        state.tls = https
        if root is not None:
            state.root_status = root.status
        await _orthanc(conv)
        await _viewers(conv, root)
        await _qido(conv)
        if options.default_credentials:
            await _default_credentials(conv)


async def probe_http(target: Target, options: HttpOptions) -> Observations:
    """Probe one web endpoint. Bounded by `options.total_timeout`; never raises."""
    state = ProbeState(target)
    try:
        async with asyncio.timeout(options.total_timeout):
            await _converse(state, options)
    except Unreachable:
        pass
    except TimeoutError:
        state.error = f"total time budget of {options.total_timeout:g}s exhausted"
        state.dicomweb = [q if not q.open else _as_lower_bound(q) for q in state.dicomweb]
    return state.observations()


def _as_lower_bound(q: QidoEndpoint) -> QidoEndpoint:
    return dataclasses.replace(q, lower_bound=True)
