from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from pacsguard.lab.farm import Farm
from pacsguard.lab.profiles import FarmPlan


class RunningFarm:
    """A lab farm served from its own event loop in a background thread."""

    def __init__(self, plan: FarmPlan) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.farm = Farm(plan)
        self._run(self.farm.start())
        self.plan = self.farm.plan

    def _run(self, coro: object) -> object:
        future: Future[object] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(timeout=60)

    def close(self) -> None:
        self._run(self.farm.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def running_farm() -> Iterator[type[RunningFarm]]:
    started: list[RunningFarm] = []

    class _Factory(RunningFarm):
        def __init__(self, plan: FarmPlan) -> None:
            super().__init__(plan)
            started.append(self)

    yield _Factory
    for farm in started:
        farm.close()


from .full_disk import small_tmpfs  # noqa: E402, F401  (a fixture for archive/ and serve/)
