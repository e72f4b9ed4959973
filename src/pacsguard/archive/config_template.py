"""The commented TOML file `pacsguard init` writes: secure defaults, each setting explained."""

from __future__ import annotations

import json
from datetime import UTC, datetime


def _q(value: str) -> str:
    """A TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(value)


def render_config(
    *, ae_title: str, admin_username: str, admin_ae_title: str, admin_hash: str
) -> str:
    """The config file text; paths are relative to the file's folder (the data dir)."""
    today = datetime.now(UTC).date().isoformat()
    return f"""\
# pacsguard archive configuration, written by `pacsguard init` on {today}.
#
# Secure by default: TLS on, every peer registered and authenticated, everything else denied.
# Relative paths are relative to this file's folder. Scalar keys can be overridden from the
# environment as PACSGUARD_<SECTION>_<KEY> (e.g. PACSGUARD_SERVER_HOST) and from the command line.
# Secrets never appear here: users carry an Argon2id hash only.

# "secure", or "lab": any calling AE with every permission, refused unless the listen address is
# loopback. "lab" is for demos on one machine only.
profile = "secure"

[server]
# Our AE title. Associations that call another title are rejected (A-ASSOCIATE-RJ 1/1/7).
ae_title = {_q(ae_title)}
# Listen address. A non-loopback address is refused unless TLS is on and no peer is trusted by
# address alone (see [security]).
host = "127.0.0.1"
# DICOM over TLS (PS3.15 B.9, IANA "dicom-tls" port 2762).
dimse_port = 2762
# Optional plaintext listener for local tools that cannot speak TLS; off unless set, and only
# ever on a loopback address.
# plaintext_port = 11112
# plaintext_host = "127.0.0.1"
# Associations served at once; more are rejected with A-ASSOCIATE-RJ 2/3/2.
max_associations = 16
# Associations one calling AE title, and one user over all its AEs, may hold at once (also
# 2/3/2 past that); unset: half of max_associations, so that no single peer takes every slot.
# max_associations_per_ae = 8
# max_associations_per_user = 8
# Connections from one source address that are not associated yet (TLS handshake, association
# request, authentication); more from that address are closed at once, so that idle or
# half-open connections from one host cannot keep registered peers out.
max_pending_per_source = 32
# Seconds from connect to a complete association request, TLS handshake included.
pre_association_timeout_s = 5
# Largest PDU we accept, in bytes.
max_pdu = 1048576
# Seconds to wait for an association request; for each DIMSE answer (a C-MOVE destination's or
# a C-GET requester's C-STORE-RSP included); for a silent peer while no operation of its runs
# (an idle timeout: a long C-MOVE or C-GET is not cut by it); and for the TLS handshake.
acse_timeout_s = 30
dimse_timeout_s = 60
network_timeout_s = 60
handshake_timeout_s = 10
# Most matches one C-FIND or QIDO-RS query returns; a C-FIND with more matches ends after this
# many with status 0xFE00 and an Error Comment (never 0x0000), and is audited as capped.
find_result_cap = 1000
# Largest decompressed pixel data, in bytes, made for a client that cannot take an instance's
# compressed transfer syntax (JPEG, JPEG-LS, JPEG 2000, RLE) over WADO-RS, C-GET or C-MOVE;
# frames are decoded one at a time as they are sent. Larger: WADO-RS 406, a failed
# sub-operation (0xA702/0xB000 with an Error Comment) for C-GET/C-MOVE.
max_decompressed_bytes = 1073741824
# Processes that serve the listeners. 1: one process (the default). Above 1: a supervisor binds
# the ports, accepts each DICOM connection and hands it to the least busy of this many worker
# processes (DICOMweb: every worker accepts on the one HTTPS port); the audit log (one chain),
# lockout counts and association limits stay one, in the supervisor (max_pending_per_source
# applies per worker), and a worker that dies is restarted. Measured on 2 cores it was slower
# than 1 (benchmarks/results/archive.md): the workers compete with the supervisor and the
# clients for the CPUs. Try it with 4 or more.
workers = 1

[tls]
# TLS 1.2+ with AEAD ciphers only (BCP 195). Turning it off is allowed on loopback only.
enabled = true
cert_file = "tls/server.crt"
key_file = "tls/server.key"
# The CA that signs peers' client certificates (our local CA; `pacsguard init` made it).
ca_file = "tls/ca.crt"
# true: every peer must present a certificate signed by ca_file. false: a certificate is asked
# for and verified when offered, and required only for peers registered with auth = "mtls".
require_client_cert = false
# "1.2" or "1.3".
min_version = "1.2"

[storage]
# Where the index, the blobs and the keys live ("." is this file's folder).
data_dir = "."
# SQLAlchemy URL of the index; SQLite in data_dir unless set, e.g. for PostgreSQL:
# index_url = "postgresql+psycopg://pacsguard@db.example.org/pacsguard"
# A PostgreSQL index is not encrypted by pacsguard: see the README ("PostgreSQL") for what the
# database server must do (TLS to it, encrypted storage).
blob_dir = "blobs"
# Encryption at rest with keys derived from key_file (32 raw bytes, mode 0600): stored objects
# (AES-256-GCM) and the SQLite index and its WAL (SQLCipher). Back the key up separately:
# without it neither the blobs nor the index can be read.
encrypt_at_rest = true
key_file = "keys/at-rest.key"

[audit]
# Hash-chained JSON Lines audit log; check it with `pacsguard audit verify`. Patients are named
# by a keyed pseudonym and their Patient ID sealed under a key derived from storage.key_file,
# never in clear: `pacsguard audit find|export --key-file` open them.
log_path = "audit/audit.jsonl"
# fsync every audit line before going on (durable); false is faster and may lose the last lines.
fsync = true

[audit.syslog]
# Copy every audit event to a syslog collector (RFC 5424 over TLS, RFC 5425), as ATNA XML.
# Off unless host is set. A copy off the machine is what makes the audit trail hard to rewrite.
# host = "siem.example.org"
port = 6514
tls = true
# CA that signed the collector's certificate (system roots if unset).
# ca_file = "tls/siem-ca.crt"

[security]
# Accept peers registered with auth = "address" (source IP only, spoofable on a LAN).
# false: such peers are rejected, and a non-loopback listener refuses to start while any exist.
allow_address_auth = false
# false: every rejected association gets the same A-ASSOCIATE-RJ (1/1/1), so a stranger cannot
# tell registered AE titles from unknown ones (the audit log keeps the real reason). true, while
# commissioning a device: wrong called AE 1/1/7, unknown calling AE 1/1/3, lockout 2/1/1.
detailed_rejections = false
# Seconds after its last use that a passcode that verified is remembered in memory (as a
# keyed HMAC, never the passcode), so that a busy peer pays the Argon2id verification once;
# 0: verify every time.
credential_cache_s = 120

[security.lockout]
# After max_failures rejected associations from one source address within window_s seconds,
# that address is refused for lockout_s seconds, even with correct credentials. Failed logins
# also count against the account they tried (the [[ae]]'s user, or its AE title): max_failures
# of them from any addresses lock that account for lockout_s. A successful login clears the
# failures against its own account only.
max_failures = 5
window_s = 300
lockout_s = 900

[dicomweb]
# DICOMweb (PS3.18: QIDO-RS, WADO-RS, STOW-RS) over HTTPS on [server] host, with the
# certificate in [tls]. Every request needs "Authorization: Bearer <token>": a JWT verified
# as in [jwt] whose sub is a user below, or an API token from `pacsguard token issue`. The
# user's roles give the permissions: find for QIDO-RS, get for WADO-RS, store for STOW-RS.
enabled = false
port = 8443
# Largest STOW-RS request, in bytes (1 GiB); larger ones are refused with 413 as soon as they
# pass the limit, and nothing of them is stored.
max_body_bytes = 1073741824
# Browser origins of web viewers allowed to call the archive (CORS), e.g.
# cors_origins = ["https://viewer.example.org"]; none by default.
cors_origins = []
# HTTP connections served at once (more get 503); seconds a client has to send its request
# headers, and between two chunks of a request body (slow clients are cut off).
max_connections = 64
header_timeout_s = 10
body_timeout_s = 60

# Verification of JSON Web Tokens. A token must come from issuer, for audience, unexpired
# (leeway_s seconds of clock skew allowed).
# DIMSE (PS3.7 user identity type 5), when a peer uses auth = "jwt": checked with one static
# key (algorithm, public_key_file or secret_file); the token's sub must equal the peer's
# username.
# HTTP bearer tokens (DICOMweb), when jwks_file or jwks_url is set: checked against the
# issuer's JSON Web Key Set, RS256 or ES256 only (never HS*, never alg "none"). jwks_url is
# fetched over verified TLS (against jwks_ca_file, else the system's CAs), cached for
# jwks_refresh_s seconds, fetched again for a key id it does not know (a key rotation), but
# at most once per jwks_cooldown_s whatever asks; while the issuer cannot be reached the keys
# fetched last keep verifying until they are jwks_max_age_s old.
# [jwt]
# issuer = "https://idp.example.org/realms/pacs"
# audience = "pacsguard"
# algorithm = "RS256"                   # DIMSE: or "HS256" with secret_file
# public_key_file = "keys/idp-public.pem"
# secret_file = "keys/jwt-hs256.secret"
# leeway_s = 30
# jwks_url = "https://idp.example.org/realms/pacs/protocol/openid-connect/certs"
# jwks_file = "keys/idp-jwks.json"      # instead of jwks_url: a local copy of the set
# jwks_ca_file = "tls/idp-ca.crt"
# jwks_refresh_s = 300
# jwks_max_age_s = 86400
# jwks_cooldown_s = 30
# The claim naming the user, and the claim holding its scopes ("scope": a space-separated
# string) or roles (a list, e.g. roles_claim = "roles").
# username_claim = "sub"
# roles_claim = "scope"
#
# What a bearer JWT may do: each scope or role value -> permissions (echo, find, get, move,
# store; DICOMweb QIDO-RS needs find, WADO-RS get, STOW-RS store). Values not listed grant
# nothing. Required with a JWKS.
# [jwt.scopes]
# "pacs.read" = ["find", "get"]
# "pacs.write" = ["store"]

# Roles grant permissions: echo, store, find, move, get. A user's permissions are the union
# of its roles'; a peer may do what both its [[ae]] entry and its user allow.
[roles]
admin = ["echo", "store", "find", "move", "get"]
modality = ["echo", "store"]
viewer = ["echo", "find", "move", "get"]

# Users: an Argon2id hash, never a password. The admin secret was printed once by
# `pacsguard init`; if it is lost, set a new one with `pacsguard user passwd admin`. Add users
# with `pacsguard user add`, peers with `pacsguard ae add`; `pacsguard reload` applies them.
[users.{admin_username}]
password_hash = {_q(admin_hash)}
roles = ["admin"]

# Registered peers (deny by default: an unknown calling AE is rejected with A-ASSOCIATE-RJ
# 1/1/3). Each needs auth = "user-password" (PS3.7 user identity, username + passcode),
# "jwt" (user identity type 5), "mtls" (client certificate SHA-256), or "address".
# address: recommended for every peer; when set, the peer must connect from it.
[[ae]]
ae_title = {_q(admin_ae_title)}
auth = "user-password"
username = {_q(admin_username)}
permissions = ["echo", "store", "find", "move", "get"]
# address = "192.0.2.10"

# A modality that proves itself with a client certificate (issue one with
# `pacsguard cert issue --client NAME`, which prints the SHA-256):
# [[ae]]
# ae_title = "CT_SCANNER_1"
# auth = "mtls"
# cert_sha256 = "<64 hex digits>"
# address = "192.0.2.21"
# permissions = ["echo", "store"]

# A viewer that C-MOVE may send to (port and a single address are required). Off this
# machine the images go over TLS only (move_tls = true): its certificate must chain to
# tls.ca_file (or move_ca_file) and name its address; ours is presented as the client's.
# Issue one with `pacsguard cert issue --server NAME --address ADDRESS`.
# [[ae]]
# ae_title = "VIEWER_1"
# auth = "mtls"
# cert_sha256 = "<64 hex digits>"
# address = "192.0.2.30"
# port = 11112
# move_destination = true
# move_tls = true
# move_ca_file = "/etc/pacsguard/viewer-ca.pem"   # optional
# permissions = ["echo", "find", "move"]
"""
