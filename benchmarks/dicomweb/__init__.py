"""DICOMweb (PS3.18) benchmark: pacsguard's HTTPS front end against Orthanc 1.10 with Debian's
orthanc-dicomweb plugin (issue 10, deliverable 8). `python -m benchmarks dicomweb`."""

from benchmarks.dicomweb.report import markdown
from benchmarks.dicomweb.run import PARTS, run

__all__ = ["PARTS", "markdown", "run"]
