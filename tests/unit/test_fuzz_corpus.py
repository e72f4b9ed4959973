"""The committed fuzz corpus (seeds, and every crash found, minimized) replays through its
harness in the normal test suite: a parser change that breaks one fails here, not only under
`./dev fuzz`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.harness import TARGETS, corpus_files, judge, load

CASES = [(name, path) for name in TARGETS for path in corpus_files(name)]


def test_every_harness_has_a_corpus() -> None:
    for name in TARGETS:
        assert len(corpus_files(name)) >= 3, name


def test_the_corpus_stays_small() -> None:
    total = sum(path.stat().st_size for _name, path in CASES)
    assert total < 300 * 1024


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name[:12]}" for n, p in CASES])
def test_corpus_input_passes_its_harness(name: str, path: Path) -> None:
    judge(load(name), path.read_bytes())


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_pass_their_harness(name: str) -> None:
    harness = load(name)
    for data in harness.seeds():
        judge(harness, data)
