"""The three operations, timed from the client side over HTTP/1.1 keep-alive (httpx).

Each measurement opens `concurrency` clients and warms each with one small query (so TCP and
TLS handshakes are outside the timing), then runs its requests split evenly between them, one
thread per client. A request's latency runs from sending it to having read its whole body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
from tests.integration.web._multipart import related_body

from benchmarks.dicomweb.data import Series
from benchmarks.dicomweb.servers import Server

Request = Callable[[httpx.Client], int]  # sends one request, returns the bytes received
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@dataclass(frozen=True, slots=True)
class Timed:
    seconds: float
    latencies: list[float]
    received: int

    @property
    def count(self) -> int:
        return len(self.latencies)


def qido(params: dict[str, str]) -> Request:
    def send(client: httpx.Client) -> int:
        answer = client.get("/studies", params=params, headers={"Accept": DICOM_JSON})
        if answer.status_code not in (200, 204):
            raise RuntimeError(f"QIDO {params}: {answer.status_code} {answer.text[:300]}")
        return len(answer.content)

    return send


def qido_count(client: httpx.Client, params: dict[str, str]) -> int:
    """Studies a server returns for `params` (204 or an empty body: none)."""
    answer = client.get("/studies", params=params, headers={"Accept": DICOM_JSON})
    if answer.status_code == 204 or not answer.content.strip():
        return 0
    answer.raise_for_status()
    return len(answer.json())


def wado_series(series: Series) -> Request:
    path = f"/studies/{series.study_uid}/series/{series.series_uid}"

    def send(client: httpx.Client) -> int:
        received = 0
        with client.stream("GET", path, headers={"Accept": MULTIPART_DICOM}) as answer:
            if answer.status_code != 200:
                answer.read()
                raise RuntimeError(f"WADO {path}: {answer.status_code} {answer.text[:300]}")
            for chunk in answer.iter_raw(1 << 20):
                received += len(chunk)
        if received < series.nbytes:
            raise RuntimeError(f"WADO {path}: {received} bytes, the series has {series.nbytes}")
        return received

    return send


def stow(files: Sequence[bytes]) -> Request:
    body, content_type = related_body(files)

    def send(client: httpx.Client) -> int:
        answer = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        if answer.status_code != 200:
            raise RuntimeError(f"STOW: {answer.status_code} {answer.text[:300]}")
        return len(answer.content)

    return send


def warm(client: httpx.Client) -> None:
    client.get("/studies", params={"limit": "1"}, headers={"Accept": DICOM_JSON})


def run(server: Server, requests: Sequence[Request], concurrency: int) -> Timed:
    clients = [server.client() for _ in range(concurrency)]
    try:
        for client in clients:
            warm(client)

        def lane(i: int) -> tuple[list[float], int]:
            latencies, received = [], 0
            for request in requests[i::concurrency]:
                started = time.perf_counter()
                received += request(clients[i])
                latencies.append(time.perf_counter() - started)
            return latencies, received

        started = time.perf_counter()
        if concurrency == 1:
            results = [lane(0)]
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(lane, range(concurrency)))
        seconds = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    return Timed(seconds, [x for lat, _ in results for x in lat], sum(r for _, r in results))
