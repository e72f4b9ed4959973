"""Application Entity titles the scanner tries, and where each comes from.

The scanner first asks for `ANY-SCP` (dcmtk's default called AE, which a server that does not
check called AEs accepts). When a server answers "called AE title not recognised" (A-ASSOCIATE-RJ
reason 7), it tries the short curated list of titles that products ship as defaults: finding one
shows that an attacker needs no inside knowledge. Wider guessing happens only when the user asks
for it, and is rate-limited by the scheduler like any other association.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The calling AE the scanner presents: honest, so that a log reader can tell who asked.
SCANNER_CALLING_AE: Final = "PACSGUARD"
#: First called AE tried (dcmtk tools' default).
ANY_SCP: Final = "ANY-SCP"


@dataclass(frozen=True, slots=True)
class DefaultAet:
    title: str
    product: str
    source: str


#: Vendor-default called AE titles, each with where the default is documented.
VENDOR_DEFAULT_AETS: Final[tuple[DefaultAet, ...]] = (
    DefaultAet("ORTHANC", "Orthanc", 'Orthanc Configuration.json: "DicomAet" : "ORTHANC"'),
    DefaultAet("DCM4CHEE", "dcm4chee-arc-light", "dcm4chee-arc-light default archive AE title"),
    DefaultAet("DCM4CHEE_ADMIN", "dcm4chee-arc-light", "dcm4chee-arc-light admin AE (ldap init)"),
    DefaultAet("STORESCP", "dcmtk storescp", "storescp(1): --aetitle default STORESCP"),
    DefaultAet("CONQUESTSRV1", "Conquest DICOM server", "dicom.ini MyACRNema default"),
    DefaultAet("OSIRIX", "OsiriX", "OsiriX Listener preferences default AE title"),
    DefaultAet("HOROS", "Horos", "Horos Listener preferences default AE title"),
    DefaultAet("DCMQRSCP", "dcmtk dcmqrscp", "dcmqrscp(1) examples; commonly copied AE title"),
    DefaultAet("PACS", "generic", "widely used generic archive title"),
)

#: Extra titles tried only with an explicit flag (`--guess-aets`).
GUESSABLE_AETS: Final[tuple[str, ...]] = (
    "ANY",
    "SCP",
    "SERVER",
    "DICOM",
    "ARCHIVE",
    "QRSCP",
    "FINDSCP",
    "MOVESCP",
    "STORE_SCP",
    "IMAGESERVER",
    "PACS_SCP",
    "MAIN",
    "AE_TITLE",
    "PACSSERVER",
    "DCMSERVER",
    "READWRITE",
    "COMMON",
    "ACME_STORE",
)


def called_aets_to_try(*, guess: bool) -> tuple[str, ...]:
    """Titles to try after `ANY-SCP` was refused with reason 7, most likely first."""
    curated = tuple(a.title for a in VENDOR_DEFAULT_AETS)
    return curated + GUESSABLE_AETS if guess else curated
