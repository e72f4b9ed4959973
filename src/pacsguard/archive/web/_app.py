"""The DICOMweb ASGI app: routes, authentication, error answers, CORS, capabilities.

Every route goes through `_guarded`: authenticate (`_auth.authenticate`; 401 with
``WWW-Authenticate: Bearer`` otherwise), validate the UIDs of the path (they become index keys:
400 unless digits and dots), run the handler, and turn domain errors into HTTP answers at this
edge only: WebError as it says, Denied 403 (the service has audited it), QueryError 400,
AuditLogError 503 (nothing happens that cannot be audited). The request's authentication
line is durable before its answer goes out (it syncs while the handler runs, `_answer`).
Refused requests are audited
(`WebContext.refused`). OPTIONS on any resource answers its ``Allow`` header; OPTIONS or GET
on ``/`` answers the capabilities (PS3.18 8.9) as WADL or JSON. CORS (Starlette's middleware)
only for the configured origins; none by default.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pacsguard.archive.audit.events import EventType
from pacsguard.archive.model import InstanceRecord, QueryError
from pacsguard.archive.security.principal import Action, Principal
from pacsguard.archive.service import Denied, Retrieval
from pacsguard.archive.web import _qido, _stow, _wado
from pacsguard.archive.web._auth import HttpCredential, authenticate
from pacsguard.archive.web._context import WebContext
from pacsguard.archive.web._errors import WebError
from pacsguard.archive.web._media import parse_accept, wants, wants_multipart
from pacsguard.archive.web._server import MAX_HEAD_BYTES
from pacsguard.archive.web._stream import DrivenStream
from pacsguard.dicom.levels import Level
from pacsguard.errors import AuditLogError, AuthenticationError

log = logging.getLogger(__name__)

Handler = Callable[[Request, Principal], Awaitable[Response]]
_UID_PARAMS: Final = {"study": "study UID", "series": "series UID", "instance": "instance UID"}
_WADL: Final = "application/vnd.sun.wadl+xml"


def _context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _guarded(
    handler: Handler, event: EventType, methods: list[str]
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint of a route: OPTIONS answers Allow, unless the handler takes OPTIONS."""
    allow = None if "OPTIONS" in methods else ", ".join([*methods, "OPTIONS"])

    async def endpoint(request: Request) -> Response:
        chosen = EventType.STORE if request.method == "POST" else event
        return await _answer(request, handler, chosen, allow)

    return endpoint


async def _answer(
    request: Request, handler: Handler, event: EventType, allow: str | None
) -> Response:
    ctx = _context(request)
    address = _address(request)
    head = sum(len(name) + len(value) + 4 for name, value in request.headers.raw)
    if head > MAX_HEAD_BYTES:
        await ctx.refused(address, event, "431 request headers too large")
        return WebError(431, f"request headers larger than {MAX_HEAD_BYTES} bytes").response()
    port = request.client.port if request.client is not None else 0
    credential = HttpCredential(request.headers.get("authorization"), address, port)
    try:
        principal, line = await ctx.authenticating(
            partial(authenticate, ctx.gate, ctx.audit, credential)
        )
    except AuditLogError:
        return WebError(503, "the audit log cannot be written; try again later").response()
    except AuthenticationError:  # audited (its line written), counted for lockout by the gate
        return WebError(
            401,
            "authentication required: send Authorization: Bearer <token> (a JWT of the "
            "configured issuer or an API token from `pacsguard token issue`)",
            headers={"WWW-Authenticate": 'Bearer realm="pacsguard"'},
        ).response()
    # The authentication line syncs while the request is served; it is durable before the
    # answer goes out (with the operation's line, when there is one).
    durable = asyncio.ensure_future(ctx.authenticating(line))
    try:
        answer = await _serve(request, handler, event, allow, ctx, address, principal)
    except BaseException:
        durable.add_done_callback(_retrieved)  # the failure is the answer
        raise
    try:
        await durable
    except AuditLogError:
        if isinstance(answer, DrivenStream):
            await answer.abandon()
        return WebError(503, "the audit log cannot be written; try again later").response()
    return answer


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def _serve(
    request: Request,
    handler: Handler,
    event: EventType,
    allow: str | None,
    ctx: WebContext,
    address: str,
    principal: Principal,
) -> Response:
    """The answer to an authenticated request (domain errors turned into HTTP answers)."""
    try:
        for name, what in _UID_PARAMS.items():
            if name in request.path_params:
                _qido.check_uid(request.path_params[name], what)
        if request.method == "OPTIONS" and allow is not None:
            return Response(status_code=200, headers={"Allow": allow})
        return await handler(request, principal)
    except WebError as exc:
        if exc.audit:
            await ctx.refused(
                address, event, f"{exc.status} {exc.message[:120]}", principal.username
            )
        return exc.response()
    except Denied:
        return WebError(403, f"user may not {_ACTION[event].value} here").response()
    except QueryError as exc:
        # exc.reason, not the message: the message quotes the query value (patient data)
        await ctx.refused(address, event, f"400 {exc.reason[:120]}", principal.username)
        return WebError(400, f"query cannot be run: {exc}").response()
    except ClientDisconnect:
        await ctx.refused(address, event, "client went away mid-request", principal.username)
        return WebError(400, "request body incomplete").response()
    except AuditLogError:
        return WebError(503, "the audit log cannot be written; try again later").response()


_ACTION: Final = {
    EventType.QUERY: Action.FIND,
    EventType.RETRIEVE: Action.GET,
    EventType.STORE: Action.STORE,
    EventType.APPLICATION_START: Action.ECHO,
}


# -- QIDO-RS ---------------------------------------------------------------------------------
def _search(level: Level) -> Handler:
    async def handler(request: Request, principal: Principal) -> Response:
        ranges = parse_accept(request.headers.get("accept"))
        if not (wants(ranges, _wado.DICOM_JSON) or wants(ranges, "application/json")):
            raise WebError(406, "search results are offered as application/dicom+json only")
        path = {
            key: request.path_params[name]
            for name, key in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID"))
            if name in request.path_params
        }
        search = _qido.parse_search(level, path, request.query_params)
        ctx = _context(request)
        matches, more = await ctx.blocking(
            partial(_qido.run_search, ctx.service, principal, search)
        )
        warnings = list(search.warnings)
        if more and search.request.limit > ctx.settings().server.find_result_cap:
            # the page was cut by the archive's cap, not by the client's limit
            warnings.append(
                "The number of results exceeded the maximum supported by the server. "
                "Additional results can be requested."
            )
        headers = _qido.warning_header(warnings)
        return Response(
            json.dumps(matches, separators=(",", ":")),
            status_code=200,
            media_type=_wado.DICOM_JSON,
            headers=headers,
        )

    return handler


# -- WADO-RS ---------------------------------------------------------------------------------
async def _retrieval(request: Request, principal: Principal) -> Retrieval:
    params = request.path_params
    return await _wado.locate(
        _context(request), principal, params["study"], params.get("series"), params.get("instance")
    )


async def _retrieve(request: Request, principal: Principal) -> Response:
    accept = wants_multipart(parse_accept(request.headers.get("accept")), _wado.DICOM)
    if accept is None:
        raise WebError(
            406,
            'instances are offered as multipart/related; type="application/dicom" only '
            "(metadata: append /metadata; rendered images are not offered)",
        )
    retrieval = await _retrieval(request, principal)
    syntaxes = _wado.syntaxes_for(accept)
    ctx = _context(request)
    await _wado.check_deliverable(ctx, retrieval, syntaxes)
    return _wado.instances_response(ctx, retrieval, syntaxes)


async def _metadata(request: Request, principal: Principal) -> Response:
    _wado.json_accepted(parse_accept(request.headers.get("accept")))
    retrieval = await _retrieval(request, principal)
    base = _base(request)

    def url(record: InstanceRecord) -> str:
        return (
            f"{base}/studies/{record.study_instance_uid}/series/{record.series_instance_uid}"
            f"/instances/{record.sop_instance_uid}"
        )

    return _wado.metadata_response(_context(request), retrieval, url)


async def _pixels(request: Request, principal: Principal) -> Response:
    """Frames or bulk data of one instance, read from their byte ranges (`_wado`)."""
    ranges = parse_accept(request.headers.get("accept"))
    params = request.path_params
    numbers: list[int] = []
    tag = 0
    if "frames" in params:
        numbers = _wado.parse_frames(params["frames"])
    else:
        tag_text = params["tag"]
        if len(tag_text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag_text):
            raise WebError(400, "bulk data is addressed by an 8-hex-digit tag")
        tag = int(tag_text, 16)
    ctx = _context(request)
    retrieval = await _retrieval(request, principal)
    record = retrieval.records[0]  # an instance path names one
    try:
        layout = await ctx.blocking(partial(_wado.read_layout, retrieval, record))
        if numbers:
            _wado.check_frames(layout, numbers)
        answer = _wado.pixel_answer(ranges, layout, pixel=bool(numbers) or tag == layout.pixel_tag)
        limit = ctx.service.limits.max_decompressed_bytes
        _wado.check_decoding(layout, answer, limit, len(numbers) if numbers else None)
        source = (
            retrieval.frames(record, layout, numbers, decode=answer.decode)
            if numbers
            else _wado.bulk_source(retrieval, record, layout, tag, answer.decode)
        )
    except BaseException:
        retrieval.tally.begin()
        retrieval.tally.end(sent=False)
        await _wado.finish(ctx, retrieval)
        raise
    # Bulk data is one part, unless it is compressed frames as stored: a part per frame.
    per_frame = bool(numbers) or (layout.encapsulated and not answer.decode)
    return _wado.pixel_response(ctx, retrieval, source, answer.part_type, one_part=not per_frame)


# -- STOW-RS ---------------------------------------------------------------------------------
async def _store(request: Request, principal: Principal) -> Response:
    ctx = _context(request)
    settings = ctx.settings().dicomweb
    ranges = parse_accept(request.headers.get("accept"))
    if not (wants(ranges, _wado.DICOM_JSON) or wants(ranges, "application/json")):
        raise WebError(406, "the STOW-RS answer is offered as application/dicom+json only")
    boundary = _stow.check_request_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > settings.max_body_bytes):
        raise WebError(
            413, f"request body larger than the {settings.max_body_bytes} bytes accepted"
        )
    # Authorized before the body is read: a user without `store` does not get to upload.
    await ctx.blocking(partial(ctx.service.require, principal, Action.STORE))
    parts = await _stow.receive_parts(
        ctx.service,
        boundary,
        request.stream().__aiter__(),
        max_bytes=settings.max_body_bytes,
        chunk_timeout_s=settings.body_timeout_s,
        blocking=ctx.blocking,
    )
    study = request.path_params.get("study")
    outcomes = await ctx.blocking(partial(_stow.store_parts, ctx.service, principal, parts, study))
    status, body = _stow.stow_answer(outcomes, _base(request))
    return Response(
        json.dumps(body, separators=(",", ":")), status_code=status, media_type=_wado.DICOM_JSON
    )


# -- capabilities ----------------------------------------------------------------------------
#: (path, methods, what) of every resource, for the capabilities answer.
RESOURCES: Final = (
    ("/studies", ("GET", "POST"), "QIDO-RS studies; STOW-RS"),
    ("/series", ("GET",), "QIDO-RS series"),
    ("/instances", ("GET",), "QIDO-RS instances"),
    ("/studies/{study}", ("GET", "POST"), "WADO-RS study; STOW-RS into this study"),
    ("/studies/{study}/metadata", ("GET",), "WADO-RS study metadata"),
    ("/studies/{study}/series", ("GET",), "QIDO-RS series of a study"),
    ("/studies/{study}/instances", ("GET",), "QIDO-RS instances of a study"),
    ("/studies/{study}/series/{series}", ("GET",), "WADO-RS series"),
    ("/studies/{study}/series/{series}/metadata", ("GET",), "WADO-RS series metadata"),
    ("/studies/{study}/series/{series}/instances", ("GET",), "QIDO-RS instances of a series"),
    ("/studies/{study}/series/{series}/instances/{instance}", ("GET",), "WADO-RS instance"),
    (
        "/studies/{study}/series/{series}/instances/{instance}/metadata",
        ("GET",),
        "WADO-RS instance metadata",
    ),
    (
        "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
        ("GET",),
        "WADO-RS frames (uncompressed, or compressed as stored)",
    ),
    (
        "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
        ("GET",),
        "WADO-RS bulk data",
    ),
)


async def _capabilities(request: Request, principal: Principal) -> Response:
    ranges = parse_accept(request.headers.get("accept"))
    if wants(ranges, _WADL) and not any(r.type == "application/json" for r in ranges):
        return Response(_wadl(_base(request)), media_type=_WADL)
    if wants(ranges, "application/json"):
        return JSONResponse(
            {
                "service": "pacsguard DICOMweb (PS3.18)",
                "resources": [
                    {"path": path, "methods": list(methods), "description": what}
                    for path, methods, what in RESOURCES
                ],
                "authentication": "Authorization: Bearer <JWT or API token>",
                "fuzzymatching": False,
                "transcoding": True,
            }
        )
    raise WebError(406, f"capabilities are offered as {_WADL} or application/json")


def _wadl(base: str) -> str:
    from xml.sax.saxutils import quoteattr

    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<application xmlns="http://wadl.dev.java.net/2009/02">',
        f"  <resources base={quoteattr(base)}>",
    ]
    for path, methods, what in RESOURCES:
        lines.append(f"    <resource path={quoteattr(path.lstrip('/'))}>")
        lines.append(f"      <doc>{what}</doc>")
        lines.extend(f'      <method name="{m}"/>' for m in methods)
        lines.append("    </resource>")
    lines += ["  </resources>", "</application>", ""]
    return "\n".join(lines)


def _route(path: str, methods: list[str], handlers: dict[str, Handler], event: EventType) -> Route:
    async def dispatch(request: Request, principal: Principal) -> Response:
        return await handlers[request.method if request.method != "HEAD" else "GET"](
            request, principal
        )

    return Route(path, _guarded(dispatch, event, methods), methods=[*methods, "OPTIONS"], name=path)


def build_app(ctx: WebContext) -> Starlette:
    """The DICOMweb app over one running archive."""
    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    q, r = EventType.QUERY, EventType.RETRIEVE
    routes = [
        _route(
            "/",
            ["GET", "OPTIONS"],
            {"GET": _capabilities, "OPTIONS": _capabilities},
            EventType.APPLICATION_START,
        ),
        _route("/studies", ["GET", "POST"], {"GET": _search(Level.STUDY), "POST": _store}, q),
        _route("/series", ["GET"], {"GET": _search(Level.SERIES)}, q),
        _route("/instances", ["GET"], {"GET": _search(Level.IMAGE)}, q),
        _route(study, ["GET", "POST"], {"GET": _retrieve, "POST": _store}, r),
        _route(study + "/metadata", ["GET"], {"GET": _metadata}, r),
        _route(study + "/series", ["GET"], {"GET": _search(Level.SERIES)}, q),
        _route(study + "/instances", ["GET"], {"GET": _search(Level.IMAGE)}, q),
        _route(series, ["GET"], {"GET": _retrieve}, r),
        _route(series + "/metadata", ["GET"], {"GET": _metadata}, r),
        _route(series + "/instances", ["GET"], {"GET": _search(Level.IMAGE)}, q),
        _route(instance, ["GET"], {"GET": _retrieve}, r),
        _route(instance + "/metadata", ["GET"], {"GET": _metadata}, r),
        _route(instance + "/frames/{frames}", ["GET"], {"GET": _pixels}, r),
        _route(instance + "/bulkdata/{tag}", ["GET"], {"GET": _pixels}, r),
    ]
    middleware = []
    origins = list(ctx.settings().dicomweb.cors_origins)
    if origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Accept"],
                expose_headers=["Warning", "Content-Type"],
            )
        )
    app = Starlette(routes=routes, middleware=middleware)
    app.state.ctx = ctx
    return app
