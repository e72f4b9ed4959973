"""A real full filesystem for tests: a small tmpfs the test mounts (root only) and fills.

Mounting needs CAP_SYS_ADMIN; without it the fixture skips with the reason (it never fakes a
full disk). `fill` writes a filler file until the kernel answers ENOSPC; deleting it gives the
space back.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "1m"


def _mount(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (a real full filesystem, never a mock)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")


@pytest.fixture
def small_tmpfs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted tmpfs (1 MiB, or the size given by indirect parametrization),
    unmounted at teardown."""
    where = tmp_path / "small-fs"
    where.mkdir()
    _mount(where, str(getattr(request, "param", SIZE)))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem is full; returns it (delete it to free)."""
    filler = directory / "filler"
    chunk = b"\xa5" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            try:
                written = os.write(fd, chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]  # fill the last partial chunk too
                if len(chunk) < 512:
                    break
                continue
            if written < len(chunk):
                chunk = chunk[: max(len(chunk) // 2, 1)]
    finally:
        os.close(fd)
    probe = directory / "probe"
    with pytest.raises(OSError, match="No space"):  # really full: not even one more page
        probe.write_bytes(b"x" * 8192)
    probe.unlink(missing_ok=True)
    return filler
