"""`python -m benchmarks.dicomweb.pixels`: what WADO-RS metadata, frames and bulk data cost on
a large instance, and what decompression costs, against `pacsguard serve` over HTTPS.

1. One synthetic multi-frame instance (16-bit, 512x512, `--frames` frames: 200 MiB at 400),
   stored by STOW-RS. For metadata, one frame, the pixel data's bulk data, the instance as
   stored and converted to Implicit VR Little Endian: the wall time and the server process's
   peak RSS growth (its VmHWM reset through /proc/PID/clear_refs before each request, minus
   its VmRSS then), the median over `--rounds` requests. With `--baseline PACSGUARD` the same
   for another installation's `pacsguard` (e.g. main's venv: the code before this change).
2. Series of synthetic 512x512 images per compressed syntax (JPEG baseline RGB by dcmtk's
   dcmcjpeg; JPEG lossless 16-bit by dcmcjpeg; JPEG 2000 lossless 16-bit by pydicom's
   encoder), retrieved as a series decompressed (the PS3.18 default, Explicit VR Little
   Endian) and as stored (`transfer-syntax=*`) in `--pairs` interleaved pairs: ms per
   instance, and the ratio decompressed/as stored (median of per-pair ratios, range); beside
   it, pydicom's own `Dataset.decompress` in this process (the library's floor).

Results: benchmarks/results/dicomweb-pixels.{json,md}. The load average is reported before and
after: the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from tests.compressed import compressed_file, uncompressed

from benchmarks.archive.peers import Processes
from benchmarks.dicomweb.servers import Server, start_pacsguard, vm_kib

RESULTS = Path(__file__).resolve().parents[1] / "results"
DICOM = "application/dicom"
OCTETS = 'multipart/related; type="application/octet-stream"'


def _post(server: Server, files: list[bytes]) -> None:
    boundary = "pixelsbenchmarkboundary"
    body = bytearray()
    for data in files:
        body += f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    with server.client(timeout=600) as client:
        answer = client.post(
            "/studies",
            content=bytes(body),
            headers={
                "Content-Type": f'multipart/related; type="{DICOM}"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
    if answer.status_code != 200:
        raise RuntimeError(f"{server.name}: STOW-RS answered {answer.status_code}: {answer.text}")


def big_instance(frames: int) -> tuple[bytes, str]:
    """(Part 10 bytes, instance URL path) of a 16-bit 512x512 multi-frame instance."""
    ds = uncompressed(rows=512, columns=512, frames=1, rgb=False, bits=16)
    rng = np.random.default_rng(2026)
    frame = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
    ds.NumberOfFrames = frames
    ds.PixelData = frame * frames
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    path = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    return out.getvalue(), path


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def timed_request(server: Server, path: str, accept: str) -> tuple[float, float, int]:
    """(seconds, peak RSS growth in MiB, body bytes) of one GET, the body read and dropped."""
    pid = server.pid
    _reset_peak(pid)
    before = vm_kib(pid, "VmRSS")
    received = 0
    with server.client(timeout=600) as client:
        started = time.perf_counter()
        with client.stream("GET", path, headers={"Accept": accept}) as answer:
            if answer.status_code != 200:
                raise RuntimeError(f"{server.name} {path}: {answer.status_code}")
            for chunk in answer.iter_raw(1 << 20):
                received += len(chunk)
        seconds = time.perf_counter() - started
    return seconds, (vm_kib(pid, "VmHWM") - before) / 1024, received


#: (label, path suffix, Accept) of the big-instance requests.
BIG_REQUESTS = (
    ("metadata", "/metadata", "application/dicom+json"),
    ("middle frame", "/frames/{middle}", OCTETS),
    (
        "pixel data bulk data",
        "/bulkdata/7FE00010",
        'multipart/related; type="application/octet-stream"',
    ),
    ("instance as stored", "", f'multipart/related; type="{DICOM}"; transfer-syntax=*'),
    (
        "instance as Implicit VR LE",
        "",
        f'multipart/related; type="{DICOM}"; transfer-syntax=1.2.840.10008.1.2',
    ),
)


def big(server: Server, path: str, frames: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_before_mib": round(vm_kib(server.pid, "VmRSS") / 1024, 1)}
    for label, suffix, accept in BIG_REQUESTS:
        url = path + suffix.format(middle=frames // 2)
        runs = [timed_request(server, url, accept) for _ in range(rounds)]
        out[label] = {
            "seconds_median": round(statistics.median(r[0] for r in runs), 4),
            "seconds_range": [round(min(r[0] for r in runs), 4), round(max(r[0] for r in runs), 4)],
            "peak_rss_growth_mib_median": round(statistics.median(r[1] for r in runs), 1),
            "peak_rss_growth_mib_max": round(max(r[1] for r in runs), 1),
            "body_bytes": runs[0][2],
        }
        print(server.name, label, out[label], flush=True)
    return out


#: (label, tests.compressed kind, instances per series).
SERIES = (
    ("JPEG baseline, 8-bit RGB 512x512", "jpeg-baseline"),
    ("JPEG lossless SV1, 16-bit (12 stored) 512x512", "jpeg-lossless"),
    ("JPEG 2000 lossless, 8-bit RGB 512x512", "jpeg2000"),
)


def compressed_series(kind: str, count: int, work: Path) -> tuple[list[bytes], str]:
    """`count` single-frame instances of `kind` in one series: (files, series URL path)."""
    folder = work / kind
    folder.mkdir()
    files = [compressed_file(kind, folder, rows=512, columns=512, frames=1) for _ in range(count)]
    first = dcmread(files[0], stop_before_pixels=True)
    datasets = []
    for n, path in enumerate(files):  # one series: the first one's study and series UIDs
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
        ds.InstanceNumber = n + 1
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        datasets.append(out.getvalue())
    return datasets, f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"


def pydicom_floor(files: list[bytes]) -> float:
    """Median seconds of pydicom's own `decompress` per instance, in this process."""
    times = []
    for data in files:
        ds = dcmread(io.BytesIO(data))
        started = time.perf_counter()
        ds.decompress(generate_instance_uid=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def transcoding(server: Server, work: Path, count: int, pairs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, kind in SERIES:
        files, path = compressed_series(kind, count, work)
        _post(server, files)
        decompressed = f'multipart/related; type="{DICOM}"'
        stored = decompressed + "; transfer-syntax=*"
        ratios, plain, raw = [], [], []
        for pair in range(pairs):
            order = [("d", decompressed), ("s", stored)]
            if pair % 2:
                order.reverse()
            got = {name: timed_request(server, path, accept) for name, accept in order}
            plain.append(got["d"][0] / count)
            raw.append(got["s"][0] / count)
            ratios.append(got["d"][0] / got["s"][0])
        out[label] = {
            "instances": count,
            "compressed_bytes_mean": sum(len(f) for f in files) // count,
            "ms_per_instance_decompressed_median": round(1000 * statistics.median(plain), 2),
            "ms_per_instance_as_stored_median": round(1000 * statistics.median(raw), 2),
            "ratio_decompressed_over_stored_median": round(statistics.median(ratios), 2),
            "ratio_range": [round(min(ratios), 2), round(max(ratios), 2)],
            "pydicom_decompress_ms_median": round(1000 * pydicom_floor(files), 2),
        }
        print(server.name, label, out[label], flush=True)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# WADO-RS pixel data: metadata, frames, bulk data, decompression",
        "",
        f"Load average before {result['load_before']}, after {result['load_after']} "
        f"({os.cpu_count()} CPUs, shared). `pacsguard serve` over HTTPS with an API token, "
        "loopback; peak RSS growth = the server's VmHWM (reset before each request) minus its "
        f"VmRSS then; medians over {result['rounds']} requests.",
        "",
        f"## One {result['big_instance_mib']} MiB instance (16-bit 512x512, "
        f"{result['frames']} frames)",
        "",
        "| server | request | time s (median, range) | peak RSS growth MiB (median, max) |",
        "|---|---|---|---|",
    ]
    for name, measured in result["big"].items():
        for label, _, _ in BIG_REQUESTS:
            m = measured[label]
            lines.append(
                f"| {name} | {label} | {m['seconds_median']} ({m['seconds_range'][0]}-"
                f"{m['seconds_range'][1]}) | {m['peak_rss_growth_mib_median']} "
                f"({m['peak_rss_growth_mib_max']}) |"
            )
    lines += [
        "",
        f"## Decompression (WADO-RS series, {result['pairs']} interleaved pairs)",
        "",
        "| series | ms/instance decompressed | ms/instance as stored | ratio (range) "
        "| pydicom decompress ms |",
        "|---|---|---|---|---|",
    ]
    for label, m in result["transcoding"].items():
        lines.append(
            f"| {label} ({m['instances']} instances, {m['compressed_bytes_mean']} B each) "
            f"| {m['ms_per_instance_decompressed_median']} "
            f"| {m['ms_per_instance_as_stored_median']} "
            f"| {m['ratio_decompressed_over_stored_median']} ({m['ratio_range'][0]}-"
            f"{m['ratio_range'][1]}) | {m['pydicom_decompress_ms_median']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dicomweb.pixels")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--series-instances", type=int, default=20)
    parser.add_argument(
        "--baseline", help="another installation's pacsguard executable (e.g. main's venv)"
    )
    args = parser.parse_args()
    result: dict[str, Any] = {
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "frames": args.frames,
        "rounds": args.rounds,
        "pairs": args.pairs,
        "big": {},
    }
    data, path = big_instance(args.frames)
    result["big_instance_mib"] = round(len(data) / 2**20, 1)
    processes = Processes()
    with tempfile.TemporaryDirectory(prefix="pacsguard-pixels-") as tmp:
        work = Path(tmp)
        try:
            servers = [("pacsguard", None)]
            if args.baseline:
                servers.append(("pacsguard-baseline", args.baseline))
            for name, executable in servers:
                server = start_pacsguard(work, processes, pacsguard=executable, name=name)
                _post(server, [data])
                result["big"][name] = big(server, path, args.frames, args.rounds)
                if executable is None:
                    result["transcoding"] = transcoding(
                        server, work, args.series_instances, args.pairs
                    )
                processes.stop(server.proc)  # type: ignore[arg-type]
        finally:
            processes.stop_all()
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dicomweb-pixels.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "dicomweb-pixels.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
