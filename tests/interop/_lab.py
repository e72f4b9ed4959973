"""The synthetic lab archive on disk, as every peer is loaded with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pacsguard.lab.synth import Counts, SyntheticArchive, generate_archive, write_files

from ._clients import FindOutcome
from ._errors import PeerStartError


@dataclass(frozen=True, slots=True)
class LabData:
    """A synthetic archive and its Part 10 files on disk, as every peer is loaded with it."""

    archive: SyntheticArchive
    directory: Path
    files: tuple[Path, ...]

    @property
    def counts(self) -> Counts:
        return self.archive.counts


def write_lab_data(directory: Path, *, seed: int, patients: int) -> LabData:
    """Generate the archive for `seed` and write one Part 10 file per instance into `directory`."""
    archive = generate_archive(seed, patients)
    return LabData(archive, directory, tuple(write_files(archive, directory)))


def verify_study_count(outcome: FindOutcome, expected: int, what: str) -> None:
    """Raise PeerStartError unless the C-FIND succeeded with exactly `expected` study responses."""
    outcome.tool.raise_for_failure(what)
    if len(outcome.responses) != expected:
        raise PeerStartError(f"{what}: {len(outcome.responses)} studies, expected {expected}")
