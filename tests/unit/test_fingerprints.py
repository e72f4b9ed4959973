"""Fingerprints -> products -> CVEs: the shipped data file, matching, ranges, the NVD merge."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from pacsguard.cli import main
from pacsguard.lab.profiles import DCM4CHEE, DCMQRSCP, LAB
from pacsguard.scan import fingerprints
from pacsguard.scan.checks import assess
from pacsguard.scan.fingerprints import ProductDataError, parse_version
from pacsguard.scan.model import Observations, Target

DCMTK_367 = {
    "implementation_class_uid": "1.2.276.0.7230010.3.0.3.6.7",
    "implementation_version_name": "OFFIS_DCMTK_367",
}


def shipped() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(fingerprints.default_path().read_text())
    return loaded


def test_the_shipped_data_file_is_valid_and_cites_every_entry() -> None:
    data = shipped()
    assert fingerprints.validate(data) == []
    vendors = {v["product"] for v in data["vulnerabilities"]}
    # The minimum: Orthanc, DCMTK, Sante PACS, MedDream, Merge toolkit.
    assert {"orthanc", "dcmtk", "sante-pacs", "meddream", "merge-toolkit"} <= vendors
    for vuln in data["vulnerabilities"]:
        assert any(r.startswith("https://") for r in vuln["references"]), vuln["cve"]


@pytest.mark.parametrize(
    ("evidence", "product", "version"),
    [
        (DCMTK_367, "dcmtk", "3.6.7"),
        ({"implementation_version_name": "OFFIS_DCMTK_3610"}, "dcmtk", "3.6.10"),
        (
            {
                "implementation_class_uid": str(PYNETDICOM_IMPLEMENTATION_UID),
                "implementation_version_name": PYNETDICOM_IMPLEMENTATION_VERSION,
            },
            "pynetdicom",
            ".".join(str(PYNETDICOM_IMPLEMENTATION_UID).split(".")[-3:]),
        ),
        (
            {
                "implementation_class_uid": DCM4CHEE.implementation_class_uid,
                "implementation_version_name": DCM4CHEE.implementation_version_name,
            },
            "dcm4che",
            "5.31.0",
        ),
        (
            {
                "implementation_class_uid": "1.3.6.1.4.1.30071.8",
                "implementation_version_name": "fo-dicom 4.0.7",
            },
            "fo-dicom",
            "4.0.7",
        ),
        ({"implementation_version_name": "MergeCOM3_410"}, "merge-toolkit", "4.10"),
        # Orthanc's REST answer names the server, ahead of the DCMTK it embeds.
        ({**DCMTK_367, "http_orthanc_version": "1.10.1"}, "orthanc", "1.10.1"),
    ],
)
def test_identify_names_product_and_version(
    evidence: dict[str, str | None], product: str, version: str
) -> None:
    found = fingerprints.default_data().identify(evidence)
    assert found is not None
    assert (found.id, found.version) == (product, version)


def test_a_product_known_only_by_its_uid_root_has_no_version_and_no_version_cves() -> None:
    found = fingerprints.default_data().identify(
        {"implementation_class_uid": "1.3.6.1.4.1.30071.8"}
    )
    assert found is not None and found.id == "fo-dicom" and found.version is None
    assert fingerprints.default_data().vulnerabilities_for(found) == ()


def test_unknown_implementations_match_nothing() -> None:
    data = fingerprints.default_data()
    assert data.identify({"implementation_class_uid": LAB.implementation_class_uid}) is None
    assert data.identify({"implementation_version_name": "SOMETHING_ELSE"}) is None
    assert data.identify({}) is None


def test_version_ranges_are_exclusive_at_the_fix_and_inclusive_at_last_affected() -> None:
    data = fingerprints.default_data()

    def cves(version: str) -> set[str]:
        found = data.identify({"implementation_class_uid": f"1.2.276.0.7230010.3.0.{version}"})
        assert found is not None
        return {v.cve for v in data.vulnerabilities_for(found)}

    assert "CVE-2022-2119" in cves("3.6.6")
    assert "CVE-2022-2119" not in cves("3.6.7")  # fixed in 3.6.7
    assert "CVE-2024-28130" in cves("3.6.8")
    assert "CVE-2024-28130" not in cves("3.6.9")
    assert "CVE-2026-50254" in cves("3.7.0")  # last affected 3.7.0
    assert "CVE-2026-50254" not in cves("3.7.1")
    assert parse_version("3.6.10") > parse_version("3.6.9")


def test_assess_reports_server_side_cves_by_version_only() -> None:
    obs = Observations(Target("127.0.0.1", 104), reachable=True, dicom=True, **DCMTK_367)
    report = assess(obs)
    assert report.product is not None and report.product.version == "3.6.7"
    ids = {f.id for f in report.findings}
    assert "PG-CVE-2024-28130" in ids
    assert "PG-CVE-2022-2120" not in ids  # a client-side flaw says nothing about a server
    assert "PG-CVE-2022-2119" not in ids  # fixed in the version shown
    for finding in report.findings:
        if finding.id.startswith("PG-CVE-"):
            assert finding.evidence["match"] == "version-only"
            assert "backport" in finding.evidence["note"]
            assert finding.references


def test_validate_lists_every_problem() -> None:
    data = shipped()
    broken = copy.deepcopy(data)
    broken["products"][0]["rules"][0]["pattern"] = "(unclosed"
    broken["vulnerabilities"][0]["cve"] = "CVE-22-1"
    broken["vulnerabilities"][1]["product"] = "nobody"
    broken["vulnerabilities"][2]["cvss_vector"] = "CVSS:3.1/AV:X"
    broken["vulnerabilities"][3]["references"] = ["http://insecure.example"]
    broken["vulnerabilities"][4]["fixed"] = "3.6.x"
    problems = fingerprints.validate(broken)
    assert len(problems) == 6, problems
    with pytest.raises(ProductDataError):
        fingerprints.parse(broken)


def _nvd(cve: str, criteria: str, end: str, vector: str) -> dict[str, Any]:
    """One record in NVD's CVE API 2.0 layout (as its documentation describes it)."""
    return {
        "cve": {
            "id": cve,
            "descriptions": [{"lang": "en", "value": f"Synthetic entry {cve} for the merge test."}],
            "metrics": {
                "cvssMetricV31": [{"type": "Primary", "cvssData": {"vectorString": vector}}]
            },
            "configurations": [
                {
                    "nodes": [
                        {
                            "cpeMatch": [
                                {
                                    "vulnerable": True,
                                    "criteria": criteria,
                                    "versionEndExcluding": end,
                                }
                            ]
                        }
                    ]
                }
            ],
            "references": [{"url": f"https://example.org/advisory/{cve}"}],
        }
    }


def test_update_from_nvd_adds_new_cves_and_refreshes_known_ones() -> None:
    data = shipped()
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"
    feed = {
        "vulnerabilities": [
            _nvd("CVE-2099-0001", "cpe:2.3:a:offis:dcmtk:*:*:*:*:*:*:*:*", "3.6.8", vector),
            _nvd("CVE-2022-2119", "cpe:2.3:a:offis:dcmtk:*:*:*:*:*:*:*:*", "3.6.7", vector),
            _nvd("CVE-2099-0002", "cpe:2.3:a:someone:else:*:*:*:*:*:*:*:*", "1.0", vector),
        ]
    }
    summary = fingerprints.update_from_nvd(data, feed)
    assert summary.added == ("CVE-2099-0001",)
    assert summary.updated == ("CVE-2022-2119",)
    assert summary.skipped == 1
    refreshed = next(v for v in data["vulnerabilities"] if v["cve"] == "CVE-2022-2119")
    assert refreshed["cvss_vector"] == vector and refreshed["cvss_vector_source"] == "advisory"
    parsed = fingerprints.parse(data)
    found = parsed.identify(DCMTK_367)
    assert found is not None
    assert "CVE-2099-0001" in {v.cve for v in parsed.vulnerabilities_for(found)}


def test_products_cli_validates_and_updates_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["products", "validate"]) == 0
    assert "valid" in capsys.readouterr().out
    feed = tmp_path / "nvd.json"
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"
    feed.write_text(
        json.dumps(
            {
                "vulnerabilities": [
                    _nvd(
                        "CVE-2099-0003",
                        "cpe:2.3:a:orthanc-server:orthanc:*:*:*:*:*:*:*:*",
                        "9.0.0",
                        vector,
                    )
                ]
            }
        )
    )
    out = tmp_path / "products.json"
    assert main(["products", "update", str(feed), "-o", str(out)]) == 0
    assert "1 added (CVE-2099-0003)" in capsys.readouterr().out
    assert main(["products", "validate", str(out)]) == 0
    broken = tmp_path / "broken.json"
    data = shipped()
    data["vulnerabilities"][0]["references"] = []
    broken.write_text(json.dumps(data))
    assert main(["products", "validate", str(broken)]) == 1
    assert "reference" in capsys.readouterr().out
    assert main(["products", "update", str(tmp_path / "missing.json"), "-o", str(out)]) == 2


def test_lab_stacks_are_recognised() -> None:
    found = fingerprints.default_data().identify(
        {
            "implementation_class_uid": DCMQRSCP.implementation_class_uid,
            "implementation_version_name": DCMQRSCP.implementation_version_name,
        }
    )
    assert found is not None and found.id == "dcmtk"
