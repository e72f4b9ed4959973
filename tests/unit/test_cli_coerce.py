"""The CLI's pydantic-free option coercion (`pacsguard.cli._coerce`) answers as typer's own.

For every option and argument of every subcommand, each sample value is converted by the fast
path and by typer's adapter (the oracle): the same value, or the same error message.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from typer._click import Context
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from pacsguard.cli import SUBCOMMANDS, load_subcommand
from pacsguard.cli._coerce import FastRuntimeParam

NUMBERS = ["0", "1", "5", "-3", "256", "20000", "20001", "0.05", "0.5", "3", "3.0", "1e3",
           " 7", "7 ", "1_000", "abc", "", "nan", "inf", "99999999999999999999",
           0, 3, 2.5]  # fmt: skip
TEXTS = ["x", "104,11112", "127.0.0.1", "", " spaced ", "ü"]


def samples(annotation: Any, tmp_path: Path) -> list[Any]:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        leaf = samples(item, tmp_path)
        return [tuple(leaf[:2]), tuple(leaf[-2:]), (leaf[0],), "single"]
    if annotation in (int, float):
        return NUMBERS
    if annotation is bool:
        return [True, False]
    if annotation is str:
        return TEXTS
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        values = [m.value for m in annotation]
        return [*values, *(str(v).upper() for v in values), "bogus", next(iter(annotation))]
    if annotation is Path:
        existing = tmp_path / "exists.txt"
        existing.write_text("x")
        return [str(existing), str(tmp_path), str(tmp_path / "missing"), "-", existing]
    return []


def outcome(runtime: Any, value: Any, param: Any, ctx: Context) -> tuple[str, Any]:
    try:
        return "value", runtime._coerce_value(value, param=param, ctx=ctx)
    except BadParameter as exc:
        return "error", exc.format_message()


def parameters() -> list[tuple[str, Any]]:
    found = []

    def walk(prefix: str, command: Any) -> None:
        for param in command.params:
            if getattr(param, "type_descriptor", None) is not None:
                found.append((f"{prefix} {param.name}", (command, param)))
        for name, sub in getattr(command, "commands", {}).items():
            walk(f"{prefix} {name}", sub)

    for name in SUBCOMMANDS:
        walk(name, load_subcommand(name))
    return found


PARAMETERS = parameters()


@pytest.mark.parametrize(("where", "found"), PARAMETERS, ids=[w for w, _ in PARAMETERS])
def test_fast_coercion_answers_as_typers_adapter(
    where: str, found: tuple[Any, Any], tmp_path: Path
) -> None:
    command, param = found
    descriptor = param.type_descriptor
    if descriptor.file_annotation is not None:
        pytest.skip("typer opens files itself")
    ctx = Context(command)
    fast = FastRuntimeParam(
        parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
    )
    oracle = build_runtime_param(descriptor)
    for value in samples(descriptor.annotation, tmp_path):
        expected = outcome(oracle, value, param, ctx)
        got = outcome(fast, value, param, ctx)
        assert got == expected, (where, value)
        assert type(got[1]) is type(expected[1]), (where, value)


def test_every_option_gets_the_fast_path_when_its_command_parses() -> None:
    for where, (command, param) in PARAMETERS:
        if param.type_descriptor.file_annotation is None:
            assert param in command.get_params(Context(command)), where
            assert isinstance(param._runtime_param, FastRuntimeParam), where
