"""pacsguard: find exposed PACS without keeping patient data; run one that is secure by default."""

from __future__ import annotations

from pacsguard.errors import PacsguardError, ScopeError, TargetError, UsageError

__version__ = "0.1.0"

__all__ = [
    "PacsguardError",
    "ScopeError",
    "TargetError",
    "UsageError",
    "__version__",
]
