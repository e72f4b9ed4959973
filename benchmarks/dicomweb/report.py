"""The DICOMweb benchmark's Markdown table."""

from __future__ import annotations

from typing import Any

_HOW = """\
Both servers run on this machine, on loopback, loaded with the same synthetic data in the
same run; clients are httpx (HTTP/1.1 keep-alive), `concurrency` threads with one connection
each, on the same machine (they share its CPUs with the servers). **pacsguard** runs its
default secure profile: HTTPS (TLS 1.2+/1.3 with its first-run certificate) and an API token
checked on every request, every request audited in its hash-chained log, patient data
encrypted at rest. **Orthanc 1.10.1** (Debian) with Debian's orthanc-dicomweb 1.7 plugin runs
its defaults: plain HTTP, no authentication on loopback, no audit, no encryption at rest
(SyncStorageArea on). The comparison is therefore pacsguard *with* TLS, authentication, audit
and encryption against Orthanc *without* them.

Rates: QIDO-RS in requests/s, WADO-RS in MB/s (10^6 bytes of multipart body per second, whole
series retrieved), STOW-RS in instances/s (one instance per request, 200 only once durable).
Ratio = pacsguard / Orthanc, the median of per-pair ratios over interleaved pairs (the order
alternates), with the range; p50/p99 latencies are pooled over all pairs.
"""


def markdown(result: dict[str, Any]) -> str:
    p = result["parameters"]
    load = result["load_average"]
    lines = [
        "# DICOMweb: pacsguard against Orthanc 1.10 + orthanc-dicomweb",
        "",
        f"Measured {result.get('measured_at', '?')} on {p['cpus']} CPUs; load average (1, 5, "
        f"15 min) {load['before']} before, {load['after']} after: a shared, noisy machine.",
        "",
        _HOW,
        f"Data: {p['studies']:,} studies of one small image each (QIDO), {p['series']} series "
        f"of {p['instances_per_series']} 512x512 16-bit images ({p['series_mb']} MB each, "
        f"WADO; each run retrieves every series twice), STOW runs of {p['stow_per_run']} fresh "
        f"instances of {p['stow_instance_bytes']:,} bytes; {p['queries_per_shape']} queries "
        f"per shape per run; {p['pairs']} pairs; seed {p['seed']}.",
        "",
        "| operation | conc. | unit | pacsguard | Orthanc | ratio (range) "
        "| pacsguard p50/p99 ms | Orthanc p50/p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ours, theirs = row["pacsguard"], row["Orthanc"]
        lo, hi = row["ratio_range"]
        lines.append(
            f"| {row['operation']} | {row['concurrency']} | {row['unit']} "
            f"| {ours['rate_median']:g} | {theirs['rate_median']:g} "
            f"| **{row['ratio_median']:.2f}x** ({lo:.2f}-{hi:.2f}) "
            f"| {ours['p50_ms']:g} / {ours['p99_ms']:g} | {theirs['p50_ms']:g} / "
            f"{theirs['p99_ms']:g} |"
        )
    lines += [
        "",
        "| server | bulk STOW load (instances/s, 100 per request, 2 clients) "
        "| RSS after load MiB | peak RSS (VmHWM) MiB |",
        "|---|---|---|---|",
    ]
    for name, loaded in result["load"].items():
        rss = result["rss"].get(name, {})
        lines.append(
            f"| {name} | {loaded['index_instances_per_s']:g} | {loaded['rss_after_load_mib']:g} "
            f"| {rss.get('peak_rss_mib', '?')} |"
        )
    lines += [
        "",
        "Queries answered with another number of studies than the data holds "
        f"(per shape, out of {p['queries_per_shape']}): {result['query_check']}.",
    ]
    for note in result.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"
