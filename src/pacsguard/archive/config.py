"""The archive's settings: one immutable tree, loaded once and passed to constructors.

Loading order, later wins: built-in defaults -> TOML file -> environment ``PACSGUARD_*`` -> CLI
overrides (a dict of dotted keys). Every scalar key ``[section] key`` (and ``[section.sub] key``)
has an environment variable ``PACSGUARD_SECTION_KEY`` (``PACSGUARD_SECTION_SUB_KEY``), e.g.::

    PACSGUARD_PROFILE=secure                 profile
    PACSGUARD_SERVER_HOST=0.0.0.0            [server] host
    PACSGUARD_SERVER_DIMSE_PORT=2762         [server] dimse_port
    PACSGUARD_SERVER_PLAINTEXT_PORT=11112    [server] plaintext_port  (empty: off)
    PACSGUARD_TLS_REQUIRE_CLIENT_CERT=true   [tls] require_client_cert
    PACSGUARD_STORAGE_DATA_DIR=/srv/pacs     [storage] data_dir
    PACSGUARD_AUDIT_SYSLOG_HOST=siem.local   [audit.syslog] host
    PACSGUARD_SECURITY_LOCKOUT_MAX_FAILURES=5  [security.lockout] max_failures
    PACSGUARD_CONFIG=/srv/pacs/pacsguard.toml  the TOML file itself

Lists and tables (``[[ae]]``, ``[users.NAME]``, ``[roles]``) come from the file only. Relative
paths in the file are relative to the file's folder; paths not given follow ``storage.data_dir``.
Unknown keys are errors (a mistyped security key must not be silently ignored).
"""

from __future__ import annotations

import ipaddress
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from pacsguard.archive.security.principal import Action, AuthMethod
from pacsguard.errors import ConfigError

DEFAULT_DATA_DIR: Final = Path("pacsguard-data")
CONFIG_FILE_NAME: Final = "pacsguard.toml"
ENV_PREFIX: Final = "PACSGUARD_"
CONFIG_ENV: Final = "PACSGUARD_CONFIG"

Profile = Literal["secure", "lab"]
TlsVersion = Literal["1.2", "1.3"]
JwtAlgorithm = Literal["HS256", "RS256"]


def port_range() -> dict[str, Any]:
    return {"min": 1, "max": 65535}


@dataclass(frozen=True, slots=True)
class DataLayout:
    """Where `pacsguard init` puts things inside a data dir, and where defaults point."""

    data_dir: Path

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.tls_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.tls_dir / "server.key"

    @property
    def at_rest_key(self) -> Path:
        return self.data_dir / "keys" / "at-rest.key"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def index_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'index.sqlite3'}"

    @property
    def audit_log(self) -> Path:
        return self.data_dir / "audit" / "audit.jsonl"


_DEFAULT = DataLayout(DEFAULT_DATA_DIR)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    ae_title: str = field(default="PACSGUARD", metadata={"check": "ae_title"})
    host: str = "127.0.0.1"
    #: DICOM TLS port (PS3.15 B.9 assigns 2762 to DICOM over TLS).
    dimse_port: int = field(default=2762, metadata=port_range())
    #: Optional plaintext listener; off unless set, and only ever on a loopback host.
    plaintext_port: int | None = field(default=None, metadata=port_range())
    plaintext_host: str = "127.0.0.1"
    max_associations: int = field(default=16, metadata={"min": 1, "max": 1024})
    #: Associations one calling AE title / one user may hold at once; unset: half of
    #: max_associations (at least 1), so that no single peer can take every slot.
    max_associations_per_ae: int | None = field(default=None, metadata={"min": 1, "max": 1024})
    max_associations_per_user: int | None = field(default=None, metadata={"min": 1, "max": 1024})
    #: Connections not yet associated (TLS handshake, A-ASSOCIATE-RQ, gate) from one source
    #: address; more are closed at once. 8 refused one of 8 storescu started together now and
    #: then (a router or modality sending in parallel); 32 still keeps a flood of idle
    #: connections from one host from keeping others out.
    max_pending_per_source: int = field(default=32, metadata={"min": 1, "max": 1024})
    #: Seconds from connect to a complete A-ASSOCIATE-RQ, TLS handshake included.
    pre_association_timeout_s: float = field(default=5.0, metadata={"min": 0.5, "max": 600})
    max_pdu: int = field(default=1_048_576, metadata={"min": 4096, "max": 64 * 1024 * 1024})
    acse_timeout_s: float = field(default=30.0, metadata={"min": 1, "max": 3600})
    dimse_timeout_s: float = field(default=60.0, metadata={"min": 1, "max": 3600})
    network_timeout_s: float = field(default=60.0, metadata={"min": 1, "max": 3600})
    handshake_timeout_s: float = field(default=10.0, metadata={"min": 1, "max": 600})
    #: Most C-FIND / QIDO-RS matches returned for one query.
    find_result_cap: int = field(default=1000, metadata={"min": 1, "max": 1_000_000})
    #: Largest decompressed pixel data produced for a client (WADO-RS, C-GET, C-MOVE) that
    #: cannot take an instance's compressed transfer syntax; larger: 406 / failed sub-operation.
    max_decompressed_bytes: int = field(
        default=1024**3, metadata={"min": 1024 * 1024, "max": 2**32 - 2}
    )
    #: Worker processes that serve the listeners (archive.workers); 1: the supervisor-less
    #: single process. Above 1, a supervisor holds the audit log, lockout counts and
    #: association slots for all of them.
    workers: int = field(default=1, metadata={"min": 1, "max": 64})


@dataclass(frozen=True, slots=True)
class TlsSettings:
    enabled: bool = True
    cert_file: Path = _DEFAULT.server_cert
    key_file: Path = _DEFAULT.server_key
    #: CA that signs client certificates (and, by default, our server certificate).
    ca_file: Path = _DEFAULT.ca_cert
    require_client_cert: bool = False
    min_version: TlsVersion = "1.2"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    data_dir: Path = DEFAULT_DATA_DIR
    index_url: str = _DEFAULT.index_url
    blob_dir: Path = _DEFAULT.blob_dir
    encrypt_at_rest: bool = True
    #: 32 raw bytes, an AES-256-GCM key; mode 0600.
    key_file: Path = _DEFAULT.at_rest_key


@dataclass(frozen=True, slots=True)
class SyslogSettings:
    """RFC 5424 export to a collector, over TLS (RFC 5425) unless told otherwise."""

    host: str | None = None
    port: int = field(default=6514, metadata=port_range())
    tls: bool = True
    ca_file: Path | None = None
    app_name: str = "pacsguard"

    @property
    def enabled(self) -> bool:
        return self.host is not None


@dataclass(frozen=True, slots=True)
class AuditSettings:
    log_path: Path = _DEFAULT.audit_log
    #: fsync every appended line (durable); false trades durability for speed.
    fsync: bool = True
    syslog: SyslogSettings = field(default_factory=SyslogSettings)


@dataclass(frozen=True, slots=True)
class LockoutSettings:
    """Refuse a source address for `lockout_s` after `max_failures` within `window_s`."""

    max_failures: int = field(default=5, metadata={"min": 1, "max": 10_000})
    window_s: float = field(default=300.0, metadata={"min": 1, "max": 86_400 * 7})
    lockout_s: float = field(default=900.0, metadata={"min": 1, "max": 86_400 * 7})


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    lockout: LockoutSettings = field(default_factory=LockoutSettings)
    #: Accept AEs registered with auth = "address" (source address only). Off: deny.
    allow_address_auth: bool = False
    #: A-ASSOCIATE-RJ tells which check failed (called AE, calling AE, lockout): for
    #: commissioning a device. Off: one uniform rejection; the audit log keeps the reason.
    detailed_rejections: bool = False
    #: Seconds after its last use that a verified passcode is remembered (keyed HMAC, memory
    #: only); 0: never.
    credential_cache_s: float = field(default=120.0, metadata={"min": 0, "max": 3600})


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """Verification of PS3.7 user identity type 5 (JWT) and HTTP bearer tokens.

    DIMSE (type 5) tokens are checked with the one static key (`algorithm`, `secret_file` or
    `public_key_file`). HTTP bearer JWTs are checked against the issuer's JWKS (`jwks_file` or
    `jwks_url`, RS256/ES256 only); their `roles_claim` values are mapped to permissions by the
    `[jwt.scopes]` table.
    """

    issuer: str | None = None
    audience: str | None = None
    algorithm: JwtAlgorithm = "HS256"
    secret_file: Path | None = None
    public_key_file: Path | None = None
    leeway_s: float = field(default=30.0, metadata={"min": 0, "max": 600})
    #: The issuer's JSON Web Key Set: a local file, or an https:// URL fetched and cached.
    jwks_file: Path | None = None
    jwks_url: str | None = None
    #: CA file that the JWKS URL's certificate must chain to; the system's CAs when unset.
    jwks_ca_file: Path | None = None
    #: Seconds the fetched key set is used before it is fetched again.
    jwks_refresh_s: float = field(default=300.0, metadata={"min": 1, "max": 86_400})
    #: Seconds after the last successful fetch during which the cached keys keep verifying
    #: while the issuer cannot be reached; past it, bearer JWTs are refused.
    jwks_max_age_s: float = field(default=86_400.0, metadata={"min": 1, "max": 86_400 * 30})
    #: At most one fetch per this many seconds, whatever asks for it (an unknown kid, expiry,
    #: a failed fetch): random kids from an attacker cannot make us hammer the issuer.
    jwks_cooldown_s: float = field(default=30.0, metadata={"min": 0.1, "max": 3600})
    #: The claim that names the user (a string).
    username_claim: str = "sub"
    #: The claim holding the token's scopes or roles: a space-separated string (OAuth2
    #: `scope`, RFC 9068) or a list of strings (e.g. a `roles` claim).
    roles_claim: str = "scope"
    #: [jwt.scopes]: scope or role value -> archive permissions. Values not listed grant
    #: nothing. File only (no environment variable).
    scopes: Mapping[str, frozenset[Action]] = field(
        default_factory=lambda: types.MappingProxyType({}), metadata={"table": True}
    )

    @property
    def jwks_configured(self) -> bool:
        return self.jwks_file is not None or self.jwks_url is not None


@dataclass(frozen=True, slots=True)
class DicomWebSettings:
    """The DICOMweb (PS3.18) front end: HTTPS on [server] host, same certificate as DIMSE."""

    enabled: bool = False
    port: int = field(default=8443, metadata=port_range())
    #: Largest STOW-RS request body, in bytes; enforced while the body streams in.
    max_body_bytes: int = field(default=1024**3, metadata={"min": 1024, "max": 64 * 1024**3})
    #: Browser origins (scheme://host[:port]) allowed to call us (CORS); none by default.
    cors_origins: tuple[str, ...] = field(default=(), metadata={"check": "origins"})
    #: HTTP connections served at once; more are answered 503.
    max_connections: int = field(default=64, metadata={"min": 1, "max": 10_000})
    #: Seconds a client has to send a request's headers (slow clients are cut off) and, while
    #: a body streams, between two of its chunks.
    header_timeout_s: float = field(default=10.0, metadata={"min": 0.5, "max": 600})
    body_timeout_s: float = field(default=60.0, metadata={"min": 1, "max": 3600})


@dataclass(frozen=True, slots=True)
class RegisteredAE:
    """A peer we know: how it proves itself, where it may come from, what it may do."""

    ae_title: str
    auth: AuthMethod
    permissions: frozenset[Action] = frozenset()
    username: str | None = None
    cert_sha256: str | None = None
    #: An IP address or network; when set, the peer must connect from it whatever the auth.
    address: str | None = None
    #: Where we connect to when this AE is a C-MOVE destination.
    port: int | None = None
    move_destination: bool = False
    #: C-MOVE sub-associations to this AE run over TLS: we verify its certificate (against
    #: `move_ca_file`, else tls.ca_file) and present ours. Required off this machine.
    move_tls: bool = False
    move_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class UserAccount:
    username: str
    password_hash: str | None = None  # Argon2id PHC string; never the secret itself
    roles: tuple[str, ...] = ()


def default_roles() -> Mapping[str, frozenset[Action]]:
    return types.MappingProxyType(
        {
            "admin": frozenset(Action),
            "modality": frozenset({Action.ECHO, Action.STORE}),
            "viewer": frozenset({Action.ECHO, Action.FIND, Action.MOVE, Action.GET}),
        }
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the archive needs, validated. Build with `load_settings`."""

    profile: Profile = "secure"
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    dicomweb: DicomWebSettings = field(default_factory=DicomWebSettings)
    aes: tuple[RegisteredAE, ...] = ()
    users: Mapping[str, UserAccount] = field(default_factory=lambda: types.MappingProxyType({}))
    roles: Mapping[str, frozenset[Action]] = field(default_factory=default_roles)

    @property
    def per_ae_cap(self) -> int:
        """Associations one calling AE may hold at once."""
        server = self.server
        return server.max_associations_per_ae or max(1, server.max_associations // 2)

    @property
    def per_user_cap(self) -> int:
        """Associations one user may hold at once, over all its AEs."""
        server = self.server
        return server.max_associations_per_user or max(1, server.max_associations // 2)

    def ae(self, ae_title: str) -> RegisteredAE | None:
        """The registered AE with this title (exact match after stripping spaces)."""
        wanted = ae_title.strip()
        return next((ae for ae in self.aes if ae.ae_title == wanted), None)

    def move_destination(self, ae_title: str) -> RegisteredAE | None:
        """A registered AE that C-MOVE may send to, or None (unknown destinations are refused)."""
        ae = self.ae(ae_title)
        return ae if ae is not None and ae.move_destination else None

    def move_address(self, ae_title: str) -> tuple[str, int] | None:
        """(host, port) to send C-MOVE results to; None for an unregistered destination."""
        ae = self.move_destination(ae_title)
        if ae is None or ae.address is None or ae.port is None:
            return None
        return ae.address, ae.port

    def move_ca(self, ae: RegisteredAE) -> Path:
        """The CA file that a TLS move destination's certificate must chain to."""
        return ae.move_ca_file or self.tls.ca_file

    def user_permissions(self, username: str) -> frozenset[Action] | None:
        """Union of the user's role permissions; None for an unknown user."""
        user = self.users.get(username)
        if user is None:
            return None
        granted: set[Action] = set()
        for role in user.roles:
            granted |= self.roles.get(role, frozenset())
        return frozenset(granted)


def env_variables() -> dict[str, tuple[str, ...]]:
    """Every supported ``PACSGUARD_*`` variable and the dotted key it sets."""
    from pacsguard.archive import _config_load

    return _config_load.env_variables()


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Defaults -> TOML file (`path`, or ``$PACSGUARD_CONFIG``) -> ``PACSGUARD_*`` -> overrides.

    `env` defaults to ``os.environ``. `overrides` maps dotted keys to values, e.g.
    ``{"server.host": "0.0.0.0"}``; None values are ignored (CLI options the user did not give).
    Raises ConfigError naming the key, where its value came from, and what to set.
    """
    from pacsguard.archive import _config_load

    return _config_load.load_settings(path, env=env, overrides=overrides)


def build_settings(tree: Mapping[str, Any]) -> Settings:
    """Validate a nested mapping, shaped as the TOML file is, into `Settings`."""
    from pacsguard.archive import _config_load

    return _config_load.build_settings(tree)


# -- listen-time safety ----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP literals; any other name counts as reachable."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def validate_listen(settings: Settings) -> None:
    """Refuse a listen configuration that would expose the archive; say exactly what to set.

    - profile "lab" (every AE accepted) only on a loopback host;
    - a plaintext listener only on a loopback host;
    - a non-loopback host only with TLS on and no AE authenticated by address alone, unless
      [security] allow_address_auth = true says so explicitly;
    - a C-MOVE destination off this machine only with move_tls = true (the images would
      otherwise cross the network in the clear, whatever the listeners do);
    - DICOMweb over HTTPS only.
    """
    server = settings.server
    plain_moves = [
        f"{ae.ae_title} ({ae.address})"
        for ae in settings.aes
        if ae.move_destination and not ae.move_tls and not is_loopback(ae.address or "")
    ]
    if plain_moves:
        raise ConfigError(
            f"C-MOVE destination(s) {', '.join(plain_moves)} are not on this machine and would "
            "receive images in plaintext; set move_tls = true in their [[ae]] (their "
            "certificate is checked against tls.ca_file, or move_ca_file)"
        )
    if settings.dicomweb.enabled and not settings.tls.enabled:
        raise ConfigError(
            "[dicomweb] enabled = true needs [tls] enabled = true: DICOMweb is served over HTTPS "
            "only (bearer tokens must never cross a connection in clear); enable TLS or set "
            "[dicomweb] enabled = false"
        )
    if settings.profile == "lab" and not is_loopback(server.host):
        raise ConfigError(
            f'profile = "lab" accepts any AE and is for loopback demos only, but server.host = '
            f'{server.host!r}; set [server] host = "127.0.0.1" or profile = "secure"'
        )
    if server.plaintext_port is not None and not is_loopback(server.plaintext_host):
        raise ConfigError(
            f"server.plaintext_host = {server.plaintext_host!r}: a plaintext DICOM listener is "
            'allowed on loopback only; set [server] plaintext_host = "127.0.0.1" or remove '
            "plaintext_port"
        )
    if is_loopback(server.host):
        return
    if not settings.tls.enabled:
        raise ConfigError(
            f"server.host = {server.host!r} is not loopback and [tls] enabled = false; set "
            '[tls] enabled = true (run `pacsguard init` for certificates) or host = "127.0.0.1"'
        )
    by_address = [ae.ae_title for ae in settings.aes if ae.auth is AuthMethod.ADDRESS]
    if by_address and not settings.security.allow_address_auth:
        raise ConfigError(
            f"server.host = {server.host!r} is not loopback and AE(s) {', '.join(by_address)} "
            "use auth = 'address' (spoofable); give them auth = 'mtls', 'user-password' or "
            "'jwt', or set [security] allow_address_auth = true to accept the risk"
        )


def require_files(settings: Settings) -> None:
    """Check that the key material the settings point to exists, before listening."""
    needed: list[tuple[str, Path]] = []
    if settings.tls.enabled:
        needed += [
            ("tls.cert_file", settings.tls.cert_file),
            ("tls.key_file", settings.tls.key_file),
        ]
        if settings.tls.require_client_cert:
            needed.append(("tls.ca_file", settings.tls.ca_file))
    for ae in settings.aes:
        if ae.move_destination and ae.move_tls:
            needed += [
                (f"ae {ae.ae_title} move_ca_file (or tls.ca_file)", settings.move_ca(ae)),
                ("tls.cert_file (our certificate for move_tls)", settings.tls.cert_file),
                ("tls.key_file (our key for move_tls)", settings.tls.key_file),
            ]
    if settings.storage.encrypt_at_rest:
        needed.append(("storage.key_file", settings.storage.key_file))
    for key, path in needed:
        if not path.is_file():
            raise ConfigError(
                f"{key} = {str(path)!r} does not exist; run `pacsguard init --data-dir "
                f"{settings.storage.data_dir}` or set {key} to an existing file"
            )
