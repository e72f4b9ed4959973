"""Option values for the CLI's plain types, converted without pydantic.

typer (0.29) converts every option value with a pydantic TypeAdapter it builds on first use:
importing pydantic and building some thirty adapters is about 100 ms, a third of the start-up of
`pacsguard scan` (issue 11: a scan of one closed port must take under 0.3 s). Our options are
plain `str`, `int`, `float`, `bool`, `Path`, enums and lists of those; for a value that is
unambiguously valid, `FastRuntimeParam` returns what typer's adapter would (typer's own path
and choice helpers do the work, as its adapters call them). Anything else (a malformed number,
a value out of range, an unknown choice, a type we do not know) goes to typer's own adapter, so
every error message, and every value we are not sure of, stays typer's own.
`tests/unit/test_cli_coerce.py` checks the fast answers against typer's adapters, value by value,
for every option of every subcommand.

This leans on typer internals (`_TyperParameter._runtime_param`, `RuntimeParam`), pinned in
constraints.txt; when they are not there, `install` changes nothing and typer works as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, get_args, get_origin

try:  # typer internals (0.29): without them, `install` leaves typer to work as it does
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path, routes_to_path
except ImportError:  # pragma: no cover - another typer than constraints.txt pins
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from collections.abc import Iterable

    from typer._click import Command, Context, Parameter
    from typer.core import _TyperParameter

_INT: Final = re.compile(r"-?[0-9]{1,18}")
_FLOAT: Final = re.compile(r"-?[0-9]{1,15}(\.[0-9]{0,15})?")


class _Unsure(Exception):
    """The fast path cannot vouch for this value: typer's adapter decides."""


def _number(annotation: type[Any], value: Any, info: Any) -> Any:
    if isinstance(value, bool) or info.clamp:
        raise _Unsure
    if isinstance(value, str):
        if annotation is int and _INT.fullmatch(value):
            number: Any = int(value)
        elif annotation is float and _FLOAT.fullmatch(value):
            number = float(value)
        else:
            raise _Unsure
    elif isinstance(value, int) or (annotation is float and isinstance(value, float)):
        number = annotation(value)
    else:
        raise _Unsure
    if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
        raise _Unsure  # typer words the range error
    return number


def _leaf(annotation: Any, value: Any, param: _TyperParameter, ctx: Context) -> Any:
    info = param.type_descriptor.parameter_info
    if info.parser is not None or getattr(info, "click_type", None) is not None:
        raise _Unsure
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Unsure
    if annotation is int or annotation is float:
        return _number(annotation, value, info)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Unsure
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        try:
            return coerce_cli_choice(
                value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx
            )
        except ValueError:
            raise _Unsure from None
    if annotation is Path and routes_to_path(annotation, info):
        if info.path_type is not None or not isinstance(value, str | Path):
            raise _Unsure
        try:
            return coerce_cli_path(Path(value), info, path_type=Path, param=param, ctx=ctx)
        except Exception:
            raise _Unsure from None
    raise _Unsure


if AVAILABLE or TYPE_CHECKING:

    @dataclass(frozen=True)
    class FastRuntimeParam(RuntimeParam):
        """typer's runtime coercion for one parameter, without pydantic for plain valid values."""

        def _coerce_value(self, value: Any, param: _TyperParameter, ctx: Context) -> Any:
            try:
                annotation: Any = self.annotation
                if get_origin(annotation) is list:
                    (item_type,) = get_args(annotation)
                    items = value if isinstance(value, list | tuple) else [value]
                    return [_leaf(item_type, item, param, ctx) for item in items]
                return _leaf(annotation, value, param, ctx)
            except _Unsure:
                pass
            typer_own = build_runtime_param(param.type_descriptor)
            if getattr(param, "_runtime_param", None) is self:
                param._runtime_param = typer_own  # decide once per parameter
            return typer_own._coerce_value(value, param=param, ctx=ctx)


def install_on(params: Iterable[Parameter]) -> None:
    """Give each typer parameter in `params` the fast coercion, unless it has its own already."""
    if not AVAILABLE:
        return
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", ...) is not None:
            continue
        if descriptor.file_annotation is not None:
            continue  # typer opens files itself
        param._runtime_param = FastRuntimeParam(  # type: ignore[attr-defined]
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
        )


def install(command: Command) -> None:
    """Fast coercion for every parameter `command` (and its subcommands) parses, including the
    help option click adds while parsing."""
    if not AVAILABLE:
        return
    own = command.get_params

    def get_params(ctx: Context) -> list[Parameter]:
        params = own(ctx)
        install_on(params)
        return params

    command.get_params = get_params  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        install(sub)
