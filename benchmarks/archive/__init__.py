"""pacsguard's archive against Orthanc and dcmtk's storescp, side by side in one run.

Every peer runs on this machine on loopback, started fresh by this module; read the ratios,
not the absolute numbers (other work on the machine moves both sides alike).

1. Ingest: dcmtk `storescu +sd` (one association per run) sends a set of instances to each
   target, each run into an empty store, median of `repeats` runs. Targets: pacsguard over
   loopback plaintext (address-bound AE) and over TLS (user identity), both with the secure
   defaults (fsync'd blobs, SQLite index with synchronous=FULL, hash-chained audit log with
   fsync, encryption at rest); Orthanc from Debian (SQLite index, "SyncStorageArea": true, no
   plugins, any AE may store); storescp writing files (no fsync), and storescp with an fsync
   per file when a C compiler is available (an LD_PRELOAD shim fsyncs each file it writes at
   fclose: dcmtk 3.6.7's storescp has no fsync option). Each target is checked to hold every
   instance afterwards (pacsguard `fsck`, Orthanc `/statistics`, storescp's file count).
2. C-FIND: one index of N studies (one small instance each) in pacsguard and in Orthanc, then
   the same study-level queries to both over one persistent association each (the project's
   asyncio client, so that no process start-up or client polling is measured), alternating
   targets query by query; latency is from sending C-FIND-RQ to the final response. Every
   answer is checked against the generated ground truth.
3. Peak RSS of `pacsguard serve` (and of Orthanc) while receiving one large study by storescu.
"""

from __future__ import annotations

from benchmarks.archive.report import markdown, merge
from benchmarks.archive.run import INGEST_SETS, PARTS, run

__all__ = ["INGEST_SETS", "PARTS", "markdown", "merge", "run"]
