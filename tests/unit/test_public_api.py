from __future__ import annotations

import pacsguard


def test_exported_names_are_what_we_mean() -> None:
    assert set(pacsguard.__all__) == {
        "PacsguardError",
        "ScopeError",
        "TargetError",
        "UsageError",
        "__version__",
    }
    for name in pacsguard.__all__:
        assert hasattr(pacsguard, name)
