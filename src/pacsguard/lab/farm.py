"""The lab farm: simulated PACS hosts on loopback addresses, all in one asyncio event loop.

One listening socket per host (127.x.y.z; Linux routes all of 127.0.0.0/8 to `lo`), no thread
per host, so a thousand hosts fit on two cores. Each connection is served by the host's profile:
a real association (`session`) or a deliberate protocol violation (`hostile`). Whatever a peer
sends, the farm only counts it as a peer error and keeps serving the next one.

    plan = plan_farm(200, seed=7)
    async with Farm(plan) as farm:
        write_truth(path, farm.plan)   # ports as bound
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from types import TracebackType
from typing import Final

from pacsguard.dicom.client import close_writer, set_nodelay
from pacsguard.errors import LabError, ProtocolError
from pacsguard.lab.certificates import LabCA
from pacsguard.lab.hostile import BEHAVIOURS
from pacsguard.lab.profiles import (
    DEFAULT_MIX,
    FarmPlan,
    HostSpec,
    Profile,
    plan_farm,
    require_loopback,
)
from pacsguard.lab.session import FarmStats, HostState, Limits, serve_association
from pacsguard.lab.tls import profile_contexts

__all__ = [
    "DEFAULT_MIX",
    "Farm",
    "FarmPlan",
    "FarmStats",
    "HostSpec",
    "Limits",
    "Profile",
    "plan_farm",
]

_LOG = logging.getLogger(__name__)
#: File descriptors needed beyond one per listening host, for connections and the rest.
_SPARE_DESCRIPTORS: Final = 256
_BACKLOG: Final = 128


class Farm:
    """Serve every host of a plan until stopped; use as `async with Farm(plan) as farm`."""

    def __init__(self, plan: FarmPlan, *, limits: Limits | None = None) -> None:
        for spec in plan.hosts:
            require_loopback(spec.address)  # absolute: the lab never binds anything else
        self._plan = plan
        self._limits = limits or Limits()
        self._states = {spec.index: HostState(spec) for spec in plan.hosts}
        self._servers: list[asyncio.Server] = []
        self._ports: dict[int, int] = {}
        self._active: set[asyncio.Task[None]] = set()
        self._tls: dict[Profile, ssl.SSLContext] = {}
        self._ca: LabCA | None = None
        self.stats = FarmStats()

    @property
    def plan(self) -> FarmPlan:
        """The plan with the ports actually bound (port 0 in the plan means ephemeral)."""
        return self._plan.with_ports(self._ports)

    @property
    def running(self) -> bool:
        return bool(self._servers)

    @property
    def ca(self) -> LabCA | None:
        """The lab CA behind the TLS hosts' certificates (None until a TLS host starts): it
        also issues client certificates for the `tls-mutual` profile."""
        return self._ca

    def state(self, index: int) -> HostState:
        """A host's live state (e.g. how many instances it has been sent)."""
        return self._states[index]

    async def start(self) -> None:
        """Bind every host; on any failure close what was bound and raise LabError."""
        if self._servers:
            raise LabError("the farm is already running")
        hosts = len(self._plan.hosts)
        ensure_descriptors(hosts + _SPARE_DESCRIPTORS, hosts + self._limits.max_connections + 64)
        tls_profiles = {spec.profile for spec in self._plan.hosts if spec.profile.tls is not None}
        if tls_profiles:
            self._ca = self._ca or LabCA()
            self._tls = dict(profile_contexts(sorted(tls_profiles), self._ca))
        try:
            for spec in self._plan.hosts:
                await self._bind(spec)
        except BaseException:
            await self.stop()
            raise

    async def _bind(self, spec: HostSpec) -> None:
        callback = functools.partial(self._on_connect, self._states[spec.index])
        tls = self._tls.get(spec.profile)
        try:
            server = await asyncio.start_server(
                callback,
                host=spec.address,
                port=spec.port,
                reuse_address=True,
                backlog=_BACKLOG,
                ssl=tls,
                ssl_handshake_timeout=self._limits.association_timeout if tls else None,
            )
        except OSError as exc:
            raise LabError(
                f"cannot listen on {spec.endpoint}: {exc.strerror or exc}; "
                "is another farm or service using it?"
            ) from None
        self._servers.append(server)
        self._ports[spec.index] = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, cut open connections, and wait for their handlers to finish."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        tasks = list(self._active)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def __aenter__(self) -> Farm:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_connect(
        self, state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        self.stats.connections += 1
        state.connections += 1
        try:
            if len(self._active) > self._limits.max_connections:
                self.stats.refused_over_limit += 1
                writer.close()
                return
            await self._serve(state, reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels these tasks, and nothing awaits their result. Ending normally
            # keeps Python 3.11's StreamReaderProtocol from logging the cancelled task as an error.
            writer.close()
        finally:
            if task is not None:
                self._active.discard(task)

    async def _serve(
        self, state: HostState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve one connection by the host's profile; count, never propagate, peer failures."""
        try:
            set_nodelay(writer)
            behaviour = BEHAVIOURS.get(state.spec.profile)
            if behaviour is not None:
                await behaviour(state, reader, writer, self._limits)
            else:
                await serve_association(state, reader, writer, self._limits, self.stats)
        except (ProtocolError, TimeoutError, OSError, asyncio.IncompleteReadError):
            self.stats.peer_errors += 1
        except Exception:
            self.stats.internal_errors += 1
            _LOG.exception("lab host %s failed serving a connection", state.spec.endpoint)
        finally:
            await close_writer(writer)


def ensure_descriptors(minimum: int, wanted: int) -> None:
    """Raise the soft open-files limit towards `wanted`; LabError if it stays below `minimum`.

    One descriptor per listening host is the minimum; each open connection needs one more.
    """
    try:
        import resource  # Unix only
    except ImportError:  # pragma: no cover - Windows has no such limit to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < minimum:
        raise LabError(
            f"the farm needs at least {minimum} open files but the limit is {soft} "
            f"(hard {hard}); raise it with `ulimit -n` or serve fewer hosts"
        )
