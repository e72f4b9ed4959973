from __future__ import annotations

from pathlib import Path

import pytest

from pacsguard.errors import ScopeError, TargetError
from pacsguard.scan.model import Target
from pacsguard.scan.targets import build_scope, parse_ports, parse_target


def test_ports_lists_and_ranges() -> None:
    assert parse_ports("104, 11112,4240-4242,104") == (104, 11112, 4240, 4241, 4242)


@pytest.mark.parametrize("bad", ["", "0", "70000", "a,b", "5-1", "1-"])
def test_bad_ports_are_refused_with_a_hint(bad: str) -> None:
    with pytest.raises(TargetError, match="port"):
        parse_ports(bad)


def test_target_forms() -> None:
    assert parse_target("127.0.0.5").network.num_addresses == 1
    assert parse_target("127.0.0.0/30").network.num_addresses == 4
    spec = parse_target("127.0.0.9:4242")
    assert spec.port == 4242
    v6 = parse_target("[::1]:104")
    assert v6.port == 104
    assert str(v6.network.network_address) == "::1"
    assert str(parse_target("localhost").network.network_address) in {"127.0.0.1", "::1"}


@pytest.mark.parametrize(
    "bad", ["127.0.0.0/33", "no-such-host.invalid", "127.0.0.1:http", "[::1", "224.0.0.1"]
)
def test_bad_targets_get_clear_errors(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_target(bad)


def test_scope_expands_lazily_with_exclusions_and_ports() -> None:
    scope = build_scope(
        ["127.0.0.0/29", "127.0.1.1:4242"], ports=(104, 11112), excludes=["127.0.0.2/31"]
    )
    targets = list(scope)
    hosts = {t.host for t in targets}
    # network and broadcast addresses of a /29 are skipped, .2 and .3 are excluded
    assert hosts == {"127.0.0.1", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.1.1"}
    assert Target("127.0.1.1", 4242) in targets
    assert Target("127.0.1.1", 104) not in targets
    assert sum(t.host == "127.0.0.4" for t in targets) == 2


def test_scope_larger_than_a_slash16_needs_confirmation() -> None:
    # The typo'd /8 that should have been a /28: refused without touching anything.
    with pytest.raises(ScopeError, match="allow-large-scope"):
        build_scope(["127.0.0.0/8"])
    scope = build_scope(["127.0.0.0/8"], allow_large=True)
    assert scope.address_count == 2**24
    first = next(iter(scope))
    assert first.host == "127.0.0.1"


def test_target_and_exclude_files(tmp_path: Path) -> None:
    targets = tmp_path / "targets.txt"
    targets.write_text("# lab hosts\n127.0.3.1 127.0.3.2\n127.0.3.3:104  # with port\n")
    excludes = tmp_path / "excludes.txt"
    excludes.write_text("127.0.3.2\n")
    scope = build_scope([], ports=(11112,), target_files=[targets], exclude_files=[excludes])
    assert [str(t) for t in scope] == ["127.0.3.1:11112", "127.0.3.3:104"]


def test_no_targets_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no targets"):
        build_scope([])
    with pytest.raises(TargetError, match="cannot read"):
        build_scope([], target_files=[tmp_path / "missing.txt"])
