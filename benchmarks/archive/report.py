"""Targets and the Markdown report of the archive benchmark."""

from __future__ import annotations

import statistics
from typing import Any

METHOD_NOTES = (
    "pacsguard runs with the defaults `pacsguard init` writes: AES-GCM encryption at rest, "
    "SQLCipher index in WAL mode with synchronous=FULL, hash-chained audit log; "
    "`serve --no-self-check`. Each C-STORE acknowledgement waits for, in this order: (1) the "
    "blob's fsync and its directory's fsync, run at the same time; (2) the index commit "
    "(one WAL sync, shared by the rows of concurrent stores: group commit) and the audit "
    "line's fsync (shared by concurrent lines), also at the same time. Two device waits in a "
    "row per acknowledgement (four syncs, of which concurrent stores share the last two). "
    "With [server] workers > 1, WAL checkpoints run in a background thread, never inside a "
    "commit a store waits for.",
    "'2 workers' row: the same data folder with `[server] workers = 2` (a supervisor that "
    "accepts each connection and passes it to the less busy of two worker processes, and "
    "holds the audit log, lockout counts and association slots for both). A worker's "
    "acknowledgement waits for the same syncs; its audit line travels to the supervisor over "
    "a Unix socket twice (written, then synced), the first time inside the index "
    "transaction, and SQLite writers of both workers queue on one lock file.",
    "Judged row: 'pacsguard (plaintext, user identity)', storescu with PS3.7 username + "
    "password (one Argon2id verification per association) on the loopback plaintext "
    "listener, against Orthanc over plaintext. The TLS row adds TLS; the address-AE row "
    "leaves out the login.",
    "pynetdicom rows: a default pynetdicom 3 client (Nagle's algorithm on, as pynetdicom "
    "leaves it), one association, the first 200 instances of the small set, compared with "
    "the same client against Orthanc. pacsguard re-arms TCP_QUICKACK on its sockets, so a "
    "Nagle client does not wait for a delayed ACK.",
    "Each ingest run starts after os.sync(), so that no target pays for the unsynced writes "
    "of the one before it (storescp writes without fsync).",
    "Orthanc: Debian's 1.10 with the interop harness's open profile (SQLite index, "
    '"SyncStorageArea": true, "Plugins": [], any AE may store and find).',
    "storescp + fsync per file: dcmtk 3.6.7's storescp has no fsync option, so an LD_PRELOAD "
    "shim fsyncs every file storescp opened for writing when it closes it (file only, not its "
    "directory).",
    "Targets: 'storescp' means storescp with its defaults (no fsync); the fsync row is given "
    "for comparison. Peak RSS is compared with 200 MB = 200,000,000 bytes.",
    "Diagnostic rows (no target): pacsguard and Orthanc with their data on tmpfs (/dev/shm), "
    "where syncs cost nothing and no storage device is involved. The ratio between the two "
    "is what processing alone gives; the difference to the rows on disk is what each "
    "server's storage work costs per instance.",
)


#: The row the ingest targets are judged on (storescu with PS3.7 user identity, as a new user).
JUDGED_ROW = "pacsguard (plaintext, user identity)"


def evaluate(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The project's targets, met or not, from the measured numbers. An ingest target is met
    when the median of the per-round ratios (pacsguard over Orthanc, >= 7 interleaved pairs)
    is at least 1.0."""
    verdicts = []
    for one in result["ingest"]:
        rows = {r["target"]: r for r in one["rows"]}
        ours = rows.get(JUDGED_ROW)
        if ours is None:
            continue
        paired = ours.get("vs_orthanc_run_by_run") or {}
        verdicts.append(
            {
                "target": f"ingest {one['set']}: pacsguard (storescu, user identity) >= 1.0x "
                "Orthanc, median of per-pair ratios",
                "measured": paired.get("median"),
                "run_by_run": paired,
                "met": paired.get("median", 0) >= 1.0 and paired.get("pairs", 0) >= 7,
            }
        )
    if result.get("find"):
        ratio = result["find"]["p50_ratio_pacsguard_over_orthanc"]
        verdicts.append({"target": "C-FIND p50 <= Orthanc", "measured": ratio, "met": ratio <= 1.0})
    if result.get("rss"):
        hwm = result["rss"]["rows"][0]["vm_hwm_mib"]
        verdicts.append(
            {
                "target": "pacsguard peak RSS (VmHWM) < 200 MB",
                "measured": f"{hwm} MiB",
                "met": hwm * 2**20 < 200e6,
            }
        )
    return verdicts


def merge(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """`later`'s parts over `earlier`'s (a partial run merged into the full results): each
    part keeps the time it was measured and the load average around it."""
    merged = dict(earlier)
    when = dict(earlier.get("measured_at_by_part") or {})
    load = dict(earlier.get("load_average_by_part") or {})
    for part in ("ingest", "syncs", "find", "rss"):
        when.setdefault(part, earlier.get("measured_at"))
        load.setdefault(part, earlier["machine"]["load_average_before"])
        if later.get(part):
            merged[part] = later[part]
            when[part] = later["measured_at"]
            load[part] = later["machine"]["load_average_before"]
    merged["measured_at_by_part"] = when
    merged["load_average_by_part"] = load
    merged["measured_at"] = later["measured_at"]
    merged["machine"] = later["machine"]
    merged["versions"] = later["versions"]
    merged["repeats"] = later.get("repeats", earlier.get("repeats"))
    merged["notes"] = list(dict.fromkeys([*later["notes"], *earlier["notes"]]))
    merged["targets"] = evaluate(merged)
    return merged


def _syncs_markdown(syncs: dict[str, Any] | None) -> list[str]:
    if not syncs or not syncs["rows"]:
        return []
    lines = [
        f"## Waits for the disk ({syncs['instances']} small instances, strace -f -c on the "
        "server; not timed)",
        "",
        "| server | fsync-family calls | per acknowledged instance |",
        "|---|---|---:|",
    ]
    for r in syncs["rows"]:
        calls = ", ".join(f"{name} {n}" for name, n in sorted(r["calls"].items()))
        lines.append(f"| {r['target']} | {calls or 'none'} | {r['per_instance']} |")
    return [*lines, ""]


def _spread(paired: dict[str, float] | None) -> str:
    if not paired:
        return "-"
    return f"{paired['median']} ({paired['min']}-{paired['max']})"


def _before_after(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per earlier-version row (`--compare-with`): how much faster this version
    ingests than that one, median and range of the per-round ratios."""
    by_name = {r["target"]: r for r in rows}
    parts = []
    for row in rows:
        name = row["target"]
        if not name.startswith("pacsguard at "):
            continue
        revision, _, kind = name.removeprefix("pacsguard at ").partition(" ")
        now = by_name.get(f"pacsguard {kind}")
        if now is None:
            continue
        ratios = [
            before / after for before, after in zip(row["runs_s"], now["runs_s"], strict=True)
        ]
        median = statistics.median(ratios)
        parts.append(
            f"{kind}: {median:.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) as fast as at {revision}"
        )
    if not parts:
        return []
    return [f"This version against the earlier one, run by run: {'; '.join(parts)}.", ""]


def _storage_split(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence from the tmpfs rows: processing alone, and what storage costs each server."""
    rate = {r["target"]: float(r["instances_per_s"]) for r in rows}
    pairs = (
        ("pacsguard", "pacsguard (plaintext, address AE)", "pacsguard (plaintext, data on tmpfs)"),
        ("Orthanc", "Orthanc 1.10 (SyncStorageArea)", "Orthanc 1.10 (storage on tmpfs)"),
    )
    if not all(disk in rate and ram in rate for _, disk, ram in pairs):
        return []
    parts = [
        f"{name} {1000 / rate[disk]:.2f} ms on disk, {1000 / rate[ram]:.2f} ms on tmpfs "
        f"({1000 / rate[disk] - 1000 / rate[ram]:.2f} ms of storage work)"
        for name, disk, ram in pairs
    ]
    ours, theirs = rate[pairs[0][2]], rate[pairs[1][2]]
    return [
        f"Per instance: {'; '.join(parts)}. On tmpfs pacsguard runs at {ours / theirs:.2f}x "
        "Orthanc.",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    machine, versions = result["machine"], result["versions"]
    lines = [
        "# Archive benchmark: pacsguard vs Orthanc and storescp",
        "",
        f"One machine ({machine['cpus']} CPUs, load average {machine['load_average_before'][0]} "
        f"before, {machine['load_average_after'][0]} after), all peers on loopback; "
        f"{versions['dcmtk']}, {versions['orthanc']}, pynetdicom {versions['pynetdicom']}. "
        "Compare ratios, not absolutes.",
        "",
        *(
            [
                "Parts measured at different times (UTC, load average before): "
                + "; ".join(
                    f"{part} {result['measured_at_by_part'][part]} "
                    f"({result['load_average_by_part'][part][0]})"
                    for part in result["measured_at_by_part"]
                ),
                "",
            ]
            if result.get("measured_at_by_part")
            else []
        ),
        "## Ingest (storescu +sd, one association per sender, empty store each run)",
        "",
        f"Each round sends the set once to every target, in an order rotated per round; "
        f"{result.get('repeats', '?')} rounds. 'vs Orthanc' is the median of the per-round "
        "ratios (Orthanc's time / the target's time) with their range; C-STORE latency is as "
        "each client saw it, request sent to response received, over every store of every round.",
        "",
    ]
    for one in result["ingest"]:
        senders = one.get("senders", 1)
        lines += [
            f"{one['instances']} instances of {one['matrix']}x{one['matrix']} 16-bit "
            f"({one['bytes'] / 2**20:.1f} MiB), "
            + ("one storescu:" if senders == 1 else f"{senders} storescu at once:"),
            "",
            "| target | runs (s) | instances/s | vs Orthanc run by run (median, range) | "
            "C-STORE p50 ms | p99 ms | vs storescp | vs storescp+fsync | all held |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in one["rows"]:
            latency = r.get("store_latency_ms", {})
            name = r["target"]
            if r.get("instances", one["instances"]) != one["instances"]:
                name += f" (first {r['instances']} instances)"
            lines.append(
                f"| {name} | {', '.join(f'{s:.2f}' for s in r['runs_s'])} | "
                f"{r['instances_per_s']} | {_spread(r.get('vs_orthanc_run_by_run'))} | "
                f"{latency.get('p50', '-')} | {latency.get('p99', '-')} | "
                f"{r.get('vs_storescp', '-')} | {r.get('vs_storescp_fsync', '-')} | "
                f"{'yes' if r['verified'] else 'NO'} |"
            )
        lines.append("")
        lines += _storage_split(one["rows"])
        lines += _before_after(one["rows"])
    lines += _syncs_markdown(result.get("syncs"))
    lines += _find_markdown(result.get("find"))
    lines += _rss_markdown(result.get("rss"))
    lines += ["## Targets", ""]
    for v in result["targets"]:
        lines.append(
            f"- {'met' if v['met'] else '**not met**'}: {v['target']} (measured {v['measured']}"
            + (f"; run by run {_spread(v['run_by_run'])}" if v.get("run_by_run") else "")
            + ")"
        )
    if result["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in result["notes"]]
    lines.append("")
    return "\n".join(lines)


def _find_markdown(find: dict[str, Any] | None) -> list[str]:
    if not find:
        return []
    kinds = ", ".join(f"{k}: {v}" for k, v in find["queries_per_kind"].items())
    lines = [
        f"## C-FIND, study level ({find['studies']:,} studies, {find['patients']:,} patients)",
        "",
        f"{find['queries']} queries ({kinds}; "
        f"matches per query {find['matches_per_query']['min']}-{find['matches_per_query']['max']}, "
        f"median {find['matches_per_query']['median']}); {find['client']}.",
        "",
        "| target | p50 ms | p99 ms | mean ms | answers = ground truth | "
        + " | ".join(f"p50 {k}" for k in find["targets"]["pacsguard"]["p50_ms_by_kind"])
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(find["targets"]["pacsguard"]["p50_ms_by_kind"]),
    ]
    for name, t in find["targets"].items():
        lines.append(
            f"| {name} | {t['p50_ms']} | {t['p99_ms']} | {t['mean_ms']} | "
            f"{t['answers_matching_ground_truth']}/{find['queries']} | "
            + " | ".join(str(v) for v in t["p50_ms_by_kind"].values())
            + " |"
        )
    return [
        *lines,
        "",
        f"pacsguard / Orthanc: p50 {find['p50_ratio_pacsguard_over_orthanc']}x, "
        f"p99 {find['p99_ratio_pacsguard_over_orthanc']}x.",
        "",
    ]


def _rss_markdown(rss: dict[str, Any] | None) -> list[str]:
    if not rss:
        return []
    lines = [
        f"## Peak RSS receiving one study of {rss['instances']} instances "
        f"({rss['bytes'] / 2**30:.2f} GiB) by storescu",
        "",
        "| process | seconds | MiB/s | RSS before MiB | max sampled RSS MiB | VmHWM MiB | held |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rss["rows"]:
        lines.append(
            f"| {r['target']} | {r['seconds']} | {r['mib_per_s']} | {r['rss_before_mib']} | "
            f"{r['rss_max_sampled_mib']} | {r['vm_hwm_mib']} | {r['held']}/{r['expected']} |"
        )
    return [*lines, ""]
