"""What the HTTP tier saw on one web endpoint: plain values, no patient value by construction.

Orthanc's REST API, DICOMweb QIDO-RS and web viewers are reduced to facts about the service
(product, version, whether authentication is asked, its realm) and to counts. Entries of
`/patients` and QIDO-RS answers are counted, never kept; study UIDs are de-duplicated by hash
inside the probe and dropped there; patient attributes become category names at most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pacsguard.dicom.phi import PhiCategory

#: Anomalies the HTTP prober records (hostile or broken web servers, honeypot hints).
ANOMALY_NOT_HTTP: Final = "not-http"
ANOMALY_HEADERS_TOO_LARGE: Final = "http-headers-too-large"
ANOMALY_BODY_TOO_LARGE: Final = "http-body-too-large"
ANOMALY_SLOW_ANSWER: Final = "http-slow-answer"
ANOMALY_REDIRECT_LOOP: Final = "http-redirect-loop"
ANOMALY_REDIRECT_OFF_TARGET: Final = "http-redirect-off-target"
ANOMALY_BAD_JSON: Final = "http-bad-json"


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """One request the prober sent and the status that came back (None: no answer)."""

    path: str
    status: int | None
    #: Authentication the answer asked for: "basic", "digest", "bearer", "negotiate", "other".
    auth_scheme: str | None = None


@dataclass(frozen=True, slots=True)
class OrthancFacts:
    """Orthanc's REST API: `/system` (product, version), `/statistics` and `/patients`."""

    #: The API answered `/system` without credentials.
    open: bool
    version: str | None = None
    api_version: int | None = None
    dicom_aet: str | None = None
    dicom_port: int | None = None
    plugins_enabled: bool | None = None
    #: From `/statistics` (exact counts as Orthanc keeps them); None when not readable.
    patients: int | None = None
    studies: int | None = None
    series: int | None = None
    instances: int | None = None
    #: `/patients` answered with a list (entries counted, identifiers dropped).
    patients_listable: bool | None = None
    patients_listed: int | None = None
    patients_listed_lower_bound: bool = False


@dataclass(frozen=True, slots=True)
class QidoEndpoint:
    """One DICOMweb root that was asked for studies (PS3.18 10.6 QIDO-RS), counted by paging."""

    path: str
    status: int | None
    #: Studies answered to an anonymous request (distinct Study Instance UIDs, by hash).
    open: bool = False
    studies: int = 0
    #: True when the page budget, a size bound or a time bound stopped the count.
    lower_bound: bool = False
    pages: int = 0
    phi_categories: frozenset[PhiCategory] = frozenset()
    note: str | None = None
    #: The product whose DICOMweb this is, when its answer identified it (an open QIDO-RS, or
    #: a 401 in the realm the data file names for the root).
    product: str | None = None
    #: An anonymous search was refused with 401 in the product's realm: a DICOMweb that asks
    #: for credentials (recognised, not merely a login wall in front of everything).
    auth_required: bool = False


@dataclass(frozen=True, slots=True)
class ViewerSeen:
    """A web viewer or administration UI recognised by its page (rule and source cited)."""

    id: str
    name: str
    path: str
    source: str


@dataclass(frozen=True, slots=True)
class CredentialResult:
    """A default login that worked; only a request that reads no patient data was sent."""

    id: str
    username: str
    path: str
    source: str


@dataclass(frozen=True, slots=True)
class HttpObservations:
    """Everything the HTTP tier saw on one target."""

    scheme: str
    #: The peer answered with HTTP at all.
    answered: bool = False
    root_status: int | None = None
    server: str | None = None
    #: First authentication challenge seen, e.g. "basic" and realm "Orthanc Secure Area".
    auth_scheme: str | None = None
    auth_realm: str | None = None
    orthanc: OrthancFacts | None = None
    dicomweb: tuple[QidoEndpoint, ...] = ()
    viewers: tuple[ViewerSeen, ...] = ()
    default_credentials_tried: bool = False
    default_credentials: tuple[CredentialResult, ...] = ()
    endpoints: tuple[HttpEndpoint, ...] = field(default_factory=tuple)

    @property
    def pacs(self) -> bool:
        """A DICOM-related web service was recognised (REST API, DICOMweb open or behind its
        product's login, or viewer)."""
        return bool(
            self.orthanc is not None
            or any(q.open or q.auth_required for q in self.dicomweb)
            or self.viewers
        )

    @property
    def basic_auth(self) -> bool:
        return self.auth_scheme == "basic"
