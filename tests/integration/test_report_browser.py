"""The HTML report of a real lab scan, rendered by headless Chromium (Debian's `chromium`).

The page must render offline (no external assets), show both charts with bars, and carry no
synthetic patient value. The screenshot is kept as a test artifact in `test-artifacts/` (or
$PACSGUARD_TEST_ARTIFACTS) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from pacsguard.cli import main
from pacsguard.lab.profiles import plan_farm
from pacsguard.lab.synth import generate_archive

from .conftest import RunningFarm

ARTIFACTS = Path(
    os.environ.get("PACSGUARD_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary is not None, "Debian's chromium is not installed (./dev test installs it)"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_html_report_of_a_lab_scan_renders_with_charts(
    running_farm: type[RunningFarm], tmp_path: Path
) -> None:
    lab = running_farm(plan_farm(16, base_address="127.78.5.1", port=0, seed=5))
    scan_file = tmp_path / "scan.jsonl"
    targets = [f"{h.address}:{h.port}" for h in lab.plan.hosts]
    main(["scan", *targets, "-o", str(scan_file), "--read-timeout", "2", "--format", "table"])
    page = tmp_path / "report.html"
    assert main(["report", str(scan_file), "--html", str(page)]) == 0

    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert "Executive summary" in dom
    assert dom.count('<svg class="chart"') == 2
    assert dom.count('class="bar"') >= 5  # five severities, then each top finding
    assert "<details" in dom  # per-host details
    sensitive: set[str] = set()
    for spec in lab.plan.hosts:
        sensitive |= generate_archive(spec.seed, spec.patients).sensitive_values()
    for value in sensitive:
        assert value not in dom, "the report leaks a synthetic patient value"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "scan-report.png"
    shot.unlink(missing_ok=True)
    chromium(
        "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri(), profile=tmp_path / "p2"
    )
    assert png_size(shot) == (1200, 1600)
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few kB
