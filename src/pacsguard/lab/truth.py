"""Ground truth for a farm: what a scanner should find on each host, as JSON.

Only facts and counts: no patient name, ID, accession number or date ever goes into the file,
so it can be shared and committed next to benchmark results. The archive of each host is
regenerated from its seed to count it, exactly as the farm does.

Schema (`pacsguard-lab-truth/1`)::

    {"schema": "pacsguard-lab-truth/1", "seed": int, "host_count": int,
     "profiles": {profile: hosts},
     "hosts": [{"address": str, "port": int, "profile": str, "stack": str,
                "ae_title": str, "implementation_class_uid": str|null,
                "implementation_version_name": str|null, "max_pdu": int|null,
                "expected_dicom": bool, "accepts_any_called_ae": bool|null,
                "calling_ae_checked": bool|null, "services": [str],
                "query_exposed": bool, "count_attributes": bool,
                "counts": {"patients": int, "studies": int, "series": int, "instances": int},
                "exposed_counts": {... same keys ...},
                "phi_categories": [str],
                "tls": null | {"versions": [str], "client_certificate": str,
                               "self_signed": bool, "expired": bool, "key_type": str,
                               "key_bits": int, "signature_hash": str},
                "honeypot": null | "dicompot" | "dicomhawk"}]}

`counts` is what the host holds; `exposed_counts` and `phi_categories` are what an outsider
(calling AE unknown to the host, called AE from vendor defaults) can read with C-FIND. The
association facts are null for hosts that never complete an association (including a
`tls-mutual` host, which wants a client certificate the scanner does not have). `tls` is what a
TLS observer should see on a TLS host: versions accepted ("1.0" ... "1.3") and the
certificate's facts. `honeypot` names the honeypot a `honeypot-*` host imitates: a scanner should
flag it and keep it out of its totals (all such hosts serve the same canned archive).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from pacsguard.lab.profiles import FarmPlan, HostSpec, Profile, services_offered
from pacsguard.lab.synth import Counts, SyntheticArchive, generate_archive

SCHEMA: Final = "pacsguard-lab-truth/1"

#: Category names, as `pacsguard.dicom.phi.PhiCategory` spells them.
PATIENT_NAME: Final = "patient_name"
PATIENT_BIRTH_DATE: Final = "patient_birth_date"
PATIENT_ID: Final = "patient_id"
PATIENT_ID_SSN_SHAPED: Final = "patient_id_ssn_shaped"
PATIENT_SEX: Final = "patient_sex"
REFERRING_PHYSICIAN: Final = "referring_physician"
INSTITUTION: Final = "institution"
ACCESSION_NUMBER: Final = "accession_number"
STUDY_DATE: Final = "study_date"
STUDY_DESCRIPTION: Final = "study_description"

_NO_COUNTS: Final = Counts(patients=0, studies=0, series=0, instances=0)


def phi_categories(archive: SyntheticArchive) -> list[str]:
    """Categories of identifying data a C-FIND on this archive returns when asked (sorted)."""
    found: set[str] = set()
    for patient in archive.patients:
        found.update({PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, PATIENT_SEX})
        if patient.ssn_shaped:
            found.add(PATIENT_ID_SSN_SHAPED)
        for study in patient.studies:
            found.update({STUDY_DATE, STUDY_DESCRIPTION, INSTITUTION})
            if study.accession_number:
                found.add(ACCESSION_NUMBER)
            if study.referring_physician:
                found.add(REFERRING_PHYSICIAN)
    return sorted(found)


@dataclass(frozen=True, slots=True)
class HostTruth:
    """What a scanner should observe on one host."""

    address: str
    port: int
    profile: str
    stack: str
    ae_title: str
    implementation_class_uid: str | None
    implementation_version_name: str | None
    max_pdu: int | None
    expected_dicom: bool
    accepts_any_called_ae: bool | None
    calling_ae_checked: bool | None
    services: list[str]
    query_exposed: bool
    count_attributes: bool
    counts: dict[str, int]
    exposed_counts: dict[str, int]
    phi_categories: list[str]
    tls: dict[str, Any] | None = None
    #: The honeypot this host imitates ("dicompot", "dicomhawk"), or None.
    honeypot: str | None = None


def tls_truth(profile: Profile) -> dict[str, Any] | None:
    """What a TLS observer should see on a host with `profile` (None: plain TCP)."""
    offer = profile.tls
    if offer is None:
        return None
    cert = offer.certificate
    return {
        "versions": list(offer.versions),
        "client_certificate": offer.client_certificate,
        "self_signed": cert.self_signed,
        "expired": cert.valid_until_days < 0,
        "key_type": cert.key,
        "key_bits": cert.key_bits,
        "signature_hash": cert.hash,
    }


def host_truth(spec: HostSpec) -> HostTruth:
    """The ground truth of one host, derived from its spec and its regenerated archive."""
    profile = spec.profile
    archive = generate_archive(spec.seed, spec.patients) if spec.patients > 0 else None
    counts = archive.counts if archive is not None else _NO_COUNTS
    exposed = profile.offers_find and profile.exposed_without_inside_knowledge
    # An allow-listing host rejects before AE checks can be told apart; hostile ones never tell;
    # a host requiring a client certificate lets nobody without one speak DICOM.
    offer = profile.tls
    mutual = offer is not None and offer.client_certificate == "required"
    speaks = not profile.hostile and not mutual
    completes = speaks and not profile.checks_calling_ae
    return HostTruth(
        address=spec.address,
        port=spec.port,
        profile=str(profile),
        stack=spec.stack.name,
        ae_title=spec.ae_title,
        implementation_class_uid=(spec.stack.implementation_class_uid or None)
        if completes
        else None,
        implementation_version_name=(spec.stack.implementation_version_name or None)
        if completes
        else None,
        max_pdu=spec.stack.max_pdu if completes else None,
        expected_dicom=speaks,
        accepts_any_called_ae=(not profile.checks_called_ae) if completes else None,
        calling_ae_checked=profile.checks_calling_ae if speaks else None,
        services=list(services_offered(profile)) if completes else [],
        query_exposed=exposed,
        count_attributes=exposed and profile.returns_counts,
        counts=asdict(counts),
        exposed_counts=asdict(counts if exposed else _NO_COUNTS),
        phi_categories=phi_categories(archive) if exposed and archive is not None else [],
        tls=tls_truth(profile),
        honeypot=spec.stack.name if profile.honeypot else None,
    )


def farm_truth(plan: FarmPlan) -> dict[str, Any]:
    """The whole truth document (see the module docstring for its schema)."""
    hosts = [asdict(host_truth(spec)) for spec in plan.hosts]
    profiles = {str(p): sum(1 for h in plan.hosts if h.profile is p) for p in Profile}
    return {
        "schema": SCHEMA,
        "seed": plan.seed,
        "host_count": len(hosts),
        "profiles": {name: n for name, n in profiles.items() if n},
        "hosts": hosts,
    }


def write_truth(path: Path, plan: FarmPlan) -> dict[str, Any]:
    """Write the truth of `plan` as JSON to `path`; returns the document.

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    document = farm_truth(plan)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return document
