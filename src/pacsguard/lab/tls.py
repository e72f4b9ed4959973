"""Server TLS contexts for the lab's TLS profiles, made fresh when a farm starts.

One lab CA per farm issues (or, for the self-signed profiles, stands by while the certificate
signs itself) one certificate per TLS profile in the plan. A profile that serves TLS 1.0/1.1 or a
weak certificate gets OpenSSL security level 0, since OpenSSL 3 refuses to serve either at its
default level; the well-configured profiles keep the defaults. Keys live in a temporary directory
only as long as `load_cert_chain` needs a file.
"""

from __future__ import annotations

import ssl
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

from pacsguard.lab.certificates import LabCA
from pacsguard.lab.profiles import Profile, TlsOffer

_VERSIONS: Final = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def needs_security_level_0(offer: TlsOffer) -> bool:
    """Whether OpenSSL 3 would refuse to serve this offer at its default security level."""
    cert = offer.certificate
    weak_key = cert.key == "rsa" and cert.key_bits < 2048
    return weak_key or cert.hash == "sha1" or any(v in ("1.0", "1.1") for v in offer.versions)


def server_context(offer: TlsOffer, ca: LabCA, directory: Path, name: str) -> ssl.SSLContext:
    """A server context serving exactly what `offer` describes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if needs_security_level_0(offer):
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Serving TLS 1.0/1.1 is what the legacy profile is for.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = _VERSIONS[offer.versions[0]]
        context.maximum_version = _VERSIONS[offer.versions[-1]]
    cert, key = ca.issue(offer.certificate).write(directory, name)
    context.load_cert_chain(cert, key)
    if offer.client_certificate == "required":
        context.load_verify_locations(cadata=ca.cert_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def profile_contexts(profiles: Iterable[Profile], ca: LabCA) -> Mapping[Profile, ssl.SSLContext]:
    """One server context per TLS profile among `profiles`."""
    contexts: dict[Profile, ssl.SSLContext] = {}
    with tempfile.TemporaryDirectory(prefix="pacsguard-lab-tls-") as tmp:
        for profile in profiles:
            offer = profile.tls
            if offer is not None and profile not in contexts:
                contexts[profile] = server_context(offer, ca, Path(tmp), profile.value)
    return contexts
