"""`pacsguard reload` / SIGHUP: a running archive re-reads its config without a restart.

What is taken over: registered AEs ([[ae]], including C-MOVE destinations), users, roles, JWT
verification and [security] allow_address_auth: everything the gate decides a new association
by. Associations already accepted keep their Principal (its permissions were fixed when it was
accepted) and run to their end. Everything else (listeners, TLS, storage, audit, lockout
limits) is bound to sockets and files opened at start: a change there is reported as needing
a restart and not applied.

A config that does not load, or that `validate_listen` refuses, is refused as a whole: the
archive keeps what it had. Either way the attempt is audited as a security alert, with who
asked and counts of what changed (AE titles and user names, never a hash or secret).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pacsguard.archive.audit.events import (
    AuditEvent,
    AuditSink,
    EventAction,
    EventOutcome,
    EventType,
    Participant,
)
from pacsguard.archive.config import Settings, validate_listen
from pacsguard.errors import ConfigError

#: Sections a reload cannot apply (bound at start), by their Settings attribute.
_RESTART_ONLY = ("profile", "server", "tls", "storage", "audit")


class Reloadable(Protocol):
    """What a running archive offers a reload: its settings and a way to swap them in."""

    @property
    def settings(self) -> Settings: ...

    def prepare_settings(self, settings: Settings) -> Callable[[], None]:
        """Check that `settings` can be applied (ConfigError if not); return the swap."""
        ...


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did, for the operator and the audit line."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    users_added: int
    users_removed: int
    users_changed: int
    restart_needed: tuple[str, ...]

    def summary(self) -> str:
        def names(label: str, titles: tuple[str, ...]) -> str:
            return f"{label} {len(titles)}" + (f" ({', '.join(titles)})" if titles else "")

        text = (
            "config reloaded: AEs "
            + "; ".join(
                [
                    names("added", self.added),
                    names("removed", self.removed),
                    names("changed", self.changed),
                ]
            )
            + f"; users added {self.users_added}, removed {self.users_removed}, "
            f"changed {self.users_changed}"
        )
        if self.restart_needed:
            text += f"; not applied until a restart: changes to {', '.join(self.restart_needed)}"
        return text


def merge(current: Settings, fresh: Settings) -> Settings:
    """`current` with the parts of `fresh` that a reload applies."""
    security = dataclasses.replace(
        current.security, allow_address_auth=fresh.security.allow_address_auth
    )
    return dataclasses.replace(
        current,
        aes=fresh.aes,
        users=fresh.users,
        roles=fresh.roles,
        jwt=fresh.jwt,
        security=security,
    )


def _diff(old: Mapping[str, object], new: Mapping[str, object]) -> tuple[list[str], ...]:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    return added, removed, changed


def compare(current: Settings, fresh: Settings) -> ReloadResult:
    """What changes from `current` to `fresh` (pure)."""
    aes = _diff({a.ae_title: a for a in current.aes}, {a.ae_title: a for a in fresh.aes})
    users = _diff(dict(current.users), dict(fresh.users))
    restart = [name for name in _RESTART_ONLY if getattr(current, name) != getattr(fresh, name)]
    if current.security.lockout != fresh.security.lockout:
        restart.append("security.lockout")
    return ReloadResult(
        added=tuple(aes[0]),
        removed=tuple(aes[1]),
        changed=tuple(aes[2]),
        users_added=len(users[0]),
        users_removed=len(users[1]),
        users_changed=len(users[2]),
        restart_needed=tuple(restart),
    )


def reload_archive(
    archive: Reloadable, load: Callable[[], Settings], audit: AuditSink, requested_by: str
) -> ReloadResult:
    """Load the config again and apply it to `archive`, audited; ConfigError when refused
    (the archive keeps its settings). The audit line is durable before anything changes."""
    current = archive.settings
    me = Participant(ae_title=current.server.ae_title, requestor=False)
    try:
        try:
            fresh = load()
        except OSError as exc:  # e.g. a file the archive's user may not read
            raise ConfigError(f"the config file cannot be read: {exc}") from None
        validate_listen(fresh)
        result = compare(current, fresh)
        swap = archive.prepare_settings(merge(current, fresh))
    except ConfigError as exc:
        audit.emit(
            AuditEvent(
                EventType.SECURITY_ALERT,
                EventAction.EXECUTE,
                EventOutcome.MINOR_FAILURE,
                (me,),
                detail={
                    "result": "config-reload-refused",
                    "requested_by": requested_by,
                    "error": str(exc)[:500],
                },
            )
        )
        raise
    audit.emit(
        AuditEvent(
            EventType.SECURITY_ALERT,
            EventAction.EXECUTE,
            EventOutcome.SUCCESS,
            (me,),
            detail={
                "result": "config-reloaded",
                "requested_by": requested_by,
                "aes_added": ",".join(result.added),
                "aes_removed": ",".join(result.removed),
                "aes_changed": ",".join(result.changed),
                "users_added": result.users_added,
                "users_removed": result.users_removed,
                "users_changed": result.users_changed,
                "restart_needed": ",".join(result.restart_needed),
            },
        )
    )
    swap()
    return result
