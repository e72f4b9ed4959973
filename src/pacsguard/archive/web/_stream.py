"""A streamed HTTP answer that ends with an audit line, whatever happens to the client.

Starlette's StreamingResponse leaves an abandoned generator to the garbage collector when the
client goes away, so nothing could be relied on to audit the end of a retrieve. Here the
response drives its producer itself: it watches for the client's disconnect (uvicorn's `send`
returns silently once the client is gone, so the watch is what stops the reading), stops at
the next chunk, and always runs `finish` (shielded from cancellation) with whether the answer
was sent whole. uvicorn's `send` waits while the socket's buffer is full, so one chunk at a
time is in memory, never a study.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


class DrivenStream(Response):
    """`produce()` yields the body; `finish(complete)` runs once, after the last chunk."""

    def __init__(
        self,
        produce: Callable[[], AsyncGenerator[bytes, None]],
        finish: Callable[[bool], Awaitable[None]],
        *,
        media_type: str,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # As StreamingResponse does: no `body`, so no Content-Length (the body is chunked).
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._produce = produce
        self._finish = finish

    async def abandon(self) -> None:
        """Not sent after all (another answer goes instead): `finish(False)` runs."""
        with anyio.CancelScope(shield=True):
            await self._finish(False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = anyio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                    return

        complete = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(watch)
                await send(
                    {
                        "type": "http.response.start",
                        "status": self.status_code,
                        "headers": self.raw_headers,
                    }
                )
                async with aclosing(self._produce()) as chunks:
                    async for chunk in chunks:
                        if gone.is_set():
                            break
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    else:
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        complete = not gone.is_set()
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(complete)
