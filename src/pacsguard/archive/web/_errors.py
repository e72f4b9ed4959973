"""HTTP answers for refused requests (PS3.18 8.6): a status code and a readable text body.

`WebError` is raised inside a handler and turned into its response by the app; the status
codes are those PS3.18 names for each case (400 bad request, 401/403, 404, 406 not
acceptable, 409 conflict, 413 payload too large, 415 unsupported media type, 503).
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse


class WebError(Exception):
    """A request the web front end refuses: `status`, a message for the client, and the
    reason for the audit line (`audit` False for what is not worth one: a missing study)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        audit: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.audit = audit
        self.headers = headers or {}

    def response(self) -> PlainTextResponse:
        return PlainTextResponse(
            f"{self.status}: {self.message}\n", status_code=self.status, headers=self.headers
        )
