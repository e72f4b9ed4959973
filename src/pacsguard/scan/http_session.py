"""The HTTP prober's bounded session: one httpx client per target, and what each request saw.

Every GET has a deadline for headers and body together (slow bodies and drip-fed headers end
there), a body bound (`max_body`, uncompressed answers only, gzip/deflate inflated within the
bound), same-origin redirects only, and a stop after repeated deadline hits (a tarpit). Each
request's status, the first login challenge, the Server header and any anomaly are recorded in
the probe's state, which becomes the target's Observations. Bodies are parsed by the prober and
never logged; httpx is imported inside the calls, so importing this module does not load it.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin, urlsplit

from pacsguard.scan.http_catalog import HttpCatalog, default_catalog
from pacsguard.scan.http_model import (
    ANOMALY_BAD_JSON,
    ANOMALY_BODY_TOO_LARGE,
    ANOMALY_HEADERS_TOO_LARGE,
    ANOMALY_NOT_HTTP,
    ANOMALY_REDIRECT_LOOP,
    ANOMALY_REDIRECT_OFF_TARGET,
    ANOMALY_SLOW_ANSWER,
    CredentialResult,
    HttpEndpoint,
    HttpObservations,
    OrthancFacts,
    QidoEndpoint,
    ViewerSeen,
)
from pacsguard.scan.model import Exposure, Observations, Target, TlsFacts

if TYPE_CHECKING:
    import httpx

HTTP_TRANSPORTS: Final = frozenset({"http", "https"})
#: How much of a page a viewer pattern is searched in.
VIEWER_WINDOW: Final = 64 * 1024
#: Requests that may hit their deadline on one target before the probe stops asking.
MAX_SLOW_ANSWERS: Final = 2
_AUTH_SCHEMES: Final = frozenset({"basic", "digest", "bearer", "negotiate"})
_REALM: Final = re.compile(r'realm\s*=\s*"([^"]{0,200})"', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """What the HTTP prober may do and how long it may take."""

    connect_timeout: float = 3.0
    read_timeout: float = 5.0
    #: Deadline for one request, headers and body together: a slow body ends here.
    request_timeout: float = 10.0
    total_timeout: float = 60.0
    #: Largest body read; a longer one is cut there (and counts as a lower bound). A QIDO-RS
    #: page of 100 studies is about 200 KiB; at most one body per target is held at a time
    #: (plus small cached pages), so a scan holds at most concurrency x max_body of bodies.
    max_body: int = 1024 * 1024
    max_redirects: int = 5
    qido_page_size: int = 100
    qido_max_pages: int = 10
    #: `/patients?limit=` for Orthanc: a full page means "at least this many".
    patients_limit: int = 1000
    #: Try the cited default logins (off unless the user asks for it).
    default_credentials: bool = False
    user_agent: str = "pacsguard-scan"
    catalog: HttpCatalog = field(default_factory=default_catalog)


class Unreachable(Exception):
    """No TCP (or TLS) connection: nothing more to ask this target."""


@dataclass(slots=True)
class Answer:
    status: int
    path: str
    location: str | None
    challenge: str | None
    server: str | None
    body: bytes
    truncated: bool
    #: The Content-Type's media type, lower case, without parameters ("" when absent).
    media_type: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def _decode(body: bytes, encoding: str, limit: int) -> tuple[bytes, bool]:
    """Undo gzip/deflate within `limit` bytes; (b"", True) for anything else or broken data."""
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return b"", True
    try:
        inflater = zlib.decompressobj(wbits=47 if "gzip" in encoding else 15)
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b"", True
    if len(out) > limit or inflater.unconsumed_tail:
        return out[:limit], True
    return out, False


def clean(text: str | None, limit: int = 100) -> str | None:
    """A header value fit for a record: printable, trimmed, bounded."""
    if text is None:
        return None
    kept = "".join(c for c in text if c.isprintable()).strip()
    return kept[:limit] or None


def parse_challenge(value: str | None) -> tuple[str | None, str | None]:
    """(scheme, realm) from a WWW-Authenticate value: ('basic', 'Orthanc Secure Area')."""
    if not value:
        return None, None
    scheme = value.strip().split(" ", 1)[0].lower()
    found = _REALM.search(value)
    return (
        scheme if scheme in _AUTH_SCHEMES else "other",
        clean(found.group(1)) if found else None,
    )


class ProbeState:
    """Mutable record of a probe in progress, so a total timeout still reports what was seen."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.started = time.monotonic()
        self.reachable = False
        self.answered = False
        self.tls = False
        self.tls_facts: TlsFacts | None = None
        self.root_status: int | None = None
        self.server: str | None = None
        self.auth_scheme: str | None = None
        self.auth_realm: str | None = None
        self.orthanc: OrthancFacts | None = None
        self.dicomweb: list[QidoEndpoint] = []
        self.viewers: list[ViewerSeen] = []
        self.credentials_tried = False
        self.credentials: list[CredentialResult] = []
        self.endpoints: list[HttpEndpoint] = []
        self.anomalies: list[str] = []
        self.error: str | None = None

    def observations(self) -> Observations:
        http = HttpObservations(
            scheme=self.target.transport,
            answered=self.answered,
            root_status=self.root_status,
            server=self.server,
            auth_scheme=self.auth_scheme,
            auth_realm=self.auth_realm,
            orthanc=self.orthanc,
            dicomweb=tuple(self.dicomweb),
            viewers=tuple(self.viewers),
            default_credentials_tried=self.credentials_tried,
            default_credentials=tuple(self.credentials),
            endpoints=tuple(self.endpoints),
        )
        return Observations(
            target=self.target,
            reachable=self.reachable,
            dicom=False,
            exposure=web_exposure(http),
            tls=self.tls,
            tls_facts=self.tls_facts,
            http=http,
            anomalies=tuple(dict.fromkeys(self.anomalies)),
            error=self.error,
            duration_s=round(time.monotonic() - self.started, 4),
        )


def web_exposure(http: HttpObservations) -> Exposure | None:
    """What a web target gives away, in the scanner's one exposure shape: Orthanc's /statistics
    when its REST API is open (exact), else the largest open QIDO-RS count (studies only);
    identifying categories from QIDO-RS entries either way."""
    qido = [q for q in http.dicomweb if q.open]
    phi = frozenset(c for q in qido for c in q.phi_categories)
    orthanc = http.orthanc
    if orthanc is not None and orthanc.open and orthanc.studies is not None:
        return Exposure(
            patients=orthanc.patients or 0,
            studies=orthanc.studies,
            series=orthanc.series or 0,
            instances=orthanc.instances or 0,
            phi_categories=phi,
            method="orthanc-rest",
            queries=1,
        )
    if not qido:
        return None
    best = max(qido, key=lambda q: q.studies)
    return Exposure(
        studies=best.studies,
        lower_bound=best.lower_bound,
        phi_categories=phi,
        method="qido-rs",
        queries=sum(q.pages for q in qido),
        notes=tuple(f"{q.path}: {q.note}" for q in qido if q.note),
    )


def origin(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.transport}://{host}:{target.port}"


def tls_context() -> ssl.SSLContext:
    """A scanner observes certificates, it does not trust them: no verification (so no CA
    store is loaded either)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Session:
    def __init__(self, state: ProbeState, client: httpx.AsyncClient, options: HttpOptions) -> None:
        self.state = state
        self.client = client
        self.options = options
        self.origin = origin(state.target)
        #: Small anonymous answers by path, so a page is asked for once (e.g. the root's
        #: redirect target and a viewer page). Dropped with the conversation.
        self.cache: dict[str, Answer] = {}

    async def get(
        self,
        path: str,
        *,
        accept: str | None = None,
        auth: tuple[str, str] | None = None,
        read_body: bool = True,
    ) -> Answer | None:
        """One bounded GET; None when the peer gave no HTTP answer (the reason is recorded)."""
        import httpx

        state, options = self.state, self.options
        if auth is None and read_body and path in self.cache:
            return self.cache[path]
        if state.anomalies.count(ANOMALY_SLOW_ANSWER) >= MAX_SLOW_ANSWERS:
            return None  # a tarpit: asking more only spends the budget
        # Uncompressed answers only: a body's size is then what is read (no decompression bomb).
        headers = {"Accept-Encoding": "identity"}
        if accept:
            headers["Accept"] = accept
        try:
            async with asyncio.timeout(options.request_timeout):
                async with self.client.stream(
                    "GET", path, headers=headers, auth=auth or httpx.USE_CLIENT_DEFAULT
                ) as response:
                    state.reachable = state.answered = True
                    body, truncated = b"", False
                    if read_body:
                        chunks: list[bytes] = []
                        size = 0
                        async for chunk in response.aiter_raw():
                            chunks.append(chunk)
                            size += len(chunk)
                            if size > options.max_body:
                                truncated = True
                                state.anomalies.append(ANOMALY_BODY_TOO_LARGE)
                                break
                        body = b"".join(chunks)[: options.max_body]
                        encoding = response.headers.get("content-encoding", "identity").lower()
                        if encoding not in ("identity", ""):
                            body, truncated = _decode(body, encoding, options.max_body)
                            if truncated:
                                state.anomalies.append(ANOMALY_BODY_TOO_LARGE)
                    answer = Answer(
                        status=response.status_code,
                        path=path,
                        location=response.headers.get("location"),
                        challenge=response.headers.get("www-authenticate"),
                        server=response.headers.get("server"),
                        body=body,
                        truncated=truncated,
                        media_type=response.headers.get("content-type", "")
                        .split(";", 1)[0]
                        .strip()
                        .lower(),
                    )
        except TimeoutError:
            state.reachable = True
            state.anomalies.append(ANOMALY_SLOW_ANSWER)
            state.endpoints.append(HttpEndpoint(path, None))
            return None
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not state.reachable:
                timeout = isinstance(exc, httpx.ConnectTimeout)
                state.error = (
                    "no TCP answer within the connect timeout"
                    if timeout
                    else ("connection refused or TLS handshake failed")
                )
                raise Unreachable from None
            state.endpoints.append(HttpEndpoint(path, None))
            return None
        except httpx.TimeoutException:
            state.reachable = True
            state.anomalies.append(ANOMALY_SLOW_ANSWER)
            state.endpoints.append(HttpEndpoint(path, None))
            return None
        except httpx.RemoteProtocolError as exc:
            state.reachable = True
            message = str(exc).lower()
            if "location" in message:  # httpx refuses a Location that is not a URL
                state.anomalies.append(ANOMALY_REDIRECT_OFF_TARGET)
            elif "too long" in message or "too large" in message:
                state.anomalies.append(ANOMALY_HEADERS_TOO_LARGE)
            else:
                state.anomalies.append(ANOMALY_NOT_HTTP)
            state.endpoints.append(HttpEndpoint(path, None))
            return None
        except (httpx.HTTPError, httpx.InvalidURL, OSError, ssl.SSLError) as exc:
            if not state.reachable:
                state.error = f"connection error: {exc.__class__.__name__}"
                raise Unreachable from None
            state.endpoints.append(HttpEndpoint(path, None))
            return None
        scheme, realm = parse_challenge(answer.challenge) if answer.status == 401 else (None, None)
        state.endpoints.append(HttpEndpoint(path, answer.status, scheme))
        if scheme and state.auth_scheme is None:
            state.auth_scheme, state.auth_realm = scheme, realm
        if answer.server and state.server is None:
            state.server = clean(answer.server)
        if auth is None and read_body and len(answer.body) <= VIEWER_WINDOW:
            self.cache[path] = answer
        return answer

    def same_origin_path(self, location: str, base_path: str) -> str | None:
        """The path a redirect points to when it stays on the target, else None (also for a
        Location that is not a URL at all)."""
        try:
            parts = urlsplit(urljoin(self.origin + base_path, location.strip()))
            here = urlsplit(self.origin)
            same = (parts.scheme, parts.hostname, parts.port) == (
                here.scheme,
                here.hostname,
                here.port,
            )
        except ValueError:  # e.g. "http://[::1" or a port past 65535
            return None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not same or not path.isascii() or not path.isprintable():
            return None
        return path

    async def get_following(self, path: str) -> Answer | None:
        """GET with same-origin redirects followed, loops and excess ended."""
        seen = {path}
        answer = await self.get(path)
        for _ in range(self.options.max_redirects):
            if answer is None or answer.status not in (301, 302, 303, 307, 308):
                return answer
            if not answer.location:
                return answer
            next_path = self.same_origin_path(answer.location, answer.path)
            if next_path is None:
                self.state.anomalies.append(ANOMALY_REDIRECT_OFF_TARGET)
                return answer
            if next_path in seen:
                self.state.anomalies.append(ANOMALY_REDIRECT_LOOP)
                return answer
            seen.add(next_path)
            answer = await self.get(next_path)
        if answer is not None and answer.status in (301, 302, 303, 307, 308):
            self.state.anomalies.append(ANOMALY_REDIRECT_LOOP)
        return answer

    def decode(self, answer: Answer) -> Any:
        """JSON of a complete answer, or None (recorded) when it is not JSON."""
        if answer.truncated:
            return None
        try:
            return answer.json()
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            self.state.anomalies.append(ANOMALY_BAD_JSON)
            return None
