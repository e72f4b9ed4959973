"""Pure parts of the lab: the plan, negotiation answers, the C-FIND matching engine, the truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ

from pacsguard.dicom import uids
from pacsguard.dicom.dimse import decode_dataset, encode_dataset, encode_message
from pacsguard.dicom.levels import QueryRoot
from pacsguard.dicom.phi import PhiCategory
from pacsguard.dicom.ul import encode_associate_rq, propose
from pacsguard.errors import LabError
from pacsguard.lab.acceptor import Accepted, Rejected, negotiate
from pacsguard.lab.hostile import garbage_bytes, half_accept
from pacsguard.lab.profiles import (
    DEFAULT_MIX,
    HostSpec,
    Profile,
    host_addresses,
    plan_farm,
    require_loopback,
)
from pacsguard.lab.query import (
    STATUS_IDENTIFIER_MISMATCH,
    STATUS_SUCCESS,
    HostData,
    Kind,
    find,
    matches,
)
from pacsguard.lab.session import HostState, pending_find_encoder
from pacsguard.lab.synth import generate_archive
from pacsguard.lab.truth import farm_truth, host_truth, write_truth

# -- plan ------------------------------------------------------------------------------------


def test_plan_is_deterministic_and_seed_dependent() -> None:
    assert plan_farm(50, seed=4) == plan_farm(50, seed=4)
    assert plan_farm(50, seed=4) != plan_farm(50, seed=5)


def test_plan_mix_shares_and_every_profile_present() -> None:
    plan = plan_farm(1000, seed=2)
    shares = Counter(h.profile for h in plan.hosts)
    # TLS, honeypot and service profiles are asked for by name or mix, never by default.
    plain = {p for p in Profile if p.tls is None and not p.honeypot and not p.other_service}
    assert set(shares) == plain == set(DEFAULT_MIX)
    for profile, weight in DEFAULT_MIX.items():
        assert abs(shares[profile] - 1000 * weight) <= 2, profile
    small = plan_farm(len(plain), seed=2)
    assert {h.profile for h in small.hosts} == plain


def test_plan_single_profile_and_archive_seeds() -> None:
    plan = plan_farm(5, seed=100, profile=Profile.STORE_ONLY)
    assert {h.profile for h in plan.hosts} == {Profile.STORE_ONLY}
    assert [h.seed for h in plan.hosts] == [100, 101, 102, 103, 104]
    assert all(h.patients == 0 for h in plan.hosts)  # store-only hosts hold no data
    open_plan = plan_farm(20, profile=Profile.OPEN, max_patients=3)
    assert all(1 <= h.patients <= 3 for h in open_plan.hosts)


def test_called_ae_check_hosts_use_vendor_default_titles() -> None:
    plan = plan_farm(60, seed=9, profile=Profile.CALLED_AE_CHECK)
    assert {h.ae_title for h in plan.hosts} <= {"ORTHANC", "DCM4CHEE", "DCMQRSCP"}
    allow = plan_farm(10, seed=9, profile=Profile.CALLING_AE_ALLOWLIST)
    assert all(h.calling_allowlist for h in allow.hosts)


def test_addresses_stay_in_loopback_and_skip_0_and_255() -> None:
    addresses = host_addresses("127.1.0.250", 10)
    assert addresses[:5] == [f"127.1.0.{n}" for n in range(250, 255)]
    assert addresses[5] == "127.1.1.1"
    with pytest.raises(LabError, match=r"127\.0\.0\.0/8"):
        host_addresses("127.255.255.250", 10)


@pytest.mark.parametrize("address", ["198.51.100.1", "0.0.0.0", "128.0.0.1", "::1", "localhost"])
def test_non_loopback_addresses_are_refused(address: str) -> None:
    with pytest.raises(LabError):
        require_loopback(address)
    with pytest.raises(LabError):
        plan_farm(1, base_address=address)


def test_with_ports_replaces_bound_ports() -> None:
    plan = plan_farm(3, port=0)
    bound = plan.with_ports({0: 4000, 2: 4002})
    assert [h.port for h in bound.hosts] == [4000, 0, 4002]


# -- negotiation -----------------------------------------------------------------------------

CONTEXTS = propose(
    [uids.VERIFICATION, uids.STUDY_ROOT_FIND, uids.PATIENT_ROOT_FIND, uids.CT_IMAGE_STORAGE]
)


def _rq(called: str = "ANY-SCP", calling: str = "PACSGUARD") -> A_ASSOCIATE_RQ:
    rq = A_ASSOCIATE_RQ()
    rq.decode(encode_associate_rq(calling, called, CONTEXTS, 16384))
    return rq


def _spec(profile: Profile) -> HostSpec:
    return plan_farm(1, seed=3, profile=profile).hosts[0]


def _reject_reason(answer: Accepted | Rejected) -> tuple[int, int, int]:
    assert isinstance(answer, Rejected)
    rj = A_ASSOCIATE_RJ()
    rj.decode(answer.pdu)
    return (int(rj.result or 0), int(rj.source or 0), int(rj.reason_diagnostic or 0))


def _context_results(answer: Accepted | Rejected) -> dict[int, int]:
    assert isinstance(answer, Accepted)
    ac = A_ASSOCIATE_AC()
    ac.decode(answer.pdu)
    return {
        int(item.context_id or 0): int(item.result_reason or 0) for item in ac.presentation_context
    }


def test_open_accepts_any_ae_and_every_service() -> None:
    answer = negotiate(_spec(Profile.OPEN), _rq("WHATEVER", "ANYONE"))
    assert _context_results(answer) == {1: 0, 3: 0, 5: 0, 7: 0}
    assert isinstance(answer, Accepted)
    assert {c.transfer_syntax for c in answer.contexts.values()} == {uids.EXPLICIT_VR_LITTLE_ENDIAN}


def test_called_ae_check_rejects_with_reason_7_until_the_title_matches() -> None:
    spec = _spec(Profile.CALLED_AE_CHECK)
    assert _reject_reason(negotiate(spec, _rq("ANY-SCP"))) == (1, 1, 7)
    assert _context_results(negotiate(spec, _rq(spec.ae_title))) == {1: 0, 3: 0, 5: 0, 7: 0}


def test_calling_allowlist_rejects_with_reason_3() -> None:
    spec = _spec(Profile.CALLING_AE_ALLOWLIST)
    assert _reject_reason(negotiate(spec, _rq(spec.ae_title, "PACSGUARD"))) == (1, 1, 3)
    allowed = negotiate(spec, _rq("ANY-SCP", spec.calling_allowlist[0]))
    assert isinstance(allowed, Accepted)


def test_store_only_refuses_find_abstract_syntaxes() -> None:
    answer = negotiate(_spec(Profile.STORE_ONLY), _rq())
    assert _context_results(answer) == {1: 0, 3: 3, 5: 3, 7: 0}


def test_ac_carries_the_stack_fingerprint() -> None:
    spec = _spec(Profile.OPEN)
    answer = negotiate(spec, _rq())
    assert isinstance(answer, Accepted)
    ac = A_ASSOCIATE_AC()
    ac.decode(answer.pdu)
    assert ac.user_information is not None
    assert ac.user_information.maximum_length == spec.stack.max_pdu
    assert ac.user_information.implementation_class_uid == spec.stack.implementation_class_uid
    assert ac.user_information.implementation_version_name == (
        spec.stack.implementation_version_name
    )


def test_hostile_payloads_cannot_be_mistaken_for_pdus() -> None:
    for seed in range(30):
        data, _on_connect = garbage_bytes(seed)
        assert not 0x01 <= data[0] <= 0x07
    half = half_accept(HostState(_spec(Profile.HOSTILE_CLOSE_MID_PDU)), None)
    assert half[0] == 0x02
    announced = int.from_bytes(half[2:6], "big")
    assert len(half) - 6 < announced


# -- matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "query", "value", "expected"),
    [
        (Kind.TEXT, "", "anything", True),
        (Kind.TEXT, "*", "anything", True),
        (Kind.TEXT, "", None, True),
        (Kind.TEXT, "ABC", None, False),
        (Kind.TEXT, "ABC", "ABC", True),
        (Kind.TEXT, "ABC", "abc", False),
        (Kind.TEXT, "A*C", "ABBBC", True),
        (Kind.TEXT, "A?C", "ABC", True),
        (Kind.TEXT, "A?C", "ABBC", False),
        (Kind.TEXT, "A.C", "ABC", False),  # regex characters are literal
        (Kind.NAME, "smith^*", "SMITH^JOHN", True),
        (Kind.NAME, "Smith", "Smith^John", False),
        (Kind.UID, "1.2.3\\1.2.4", "1.2.4", True),
        (Kind.UID, "1.2.*", "1.2.4", False),  # no wildcards for UIDs
        (Kind.DATE, "20200101", "20200101", True),
        (Kind.DATE, "20200101-20201231", "20200615", True),
        (Kind.DATE, "20200101-20201231", "20210101", False),
        (Kind.DATE, "-20200101", "20191231", True),
        (Kind.DATE, "20200101-", "20191231", False),
        (Kind.DATE, "0700-0800", "075959", True),
        (Kind.DATE, "0700-0800", "080059", True),
        (Kind.DATE, "0700-0800", "080100", False),
        (Kind.NUMBER, "2", "02", True),
        (Kind.TEXT, "MR", ("CT", "MR"), True),
        (Kind.TEXT, "US", ("CT", "MR"), False),
        (Kind.COUNT, "5", "3", True),  # count keys are return keys only
    ],
)
def test_matching_rules(kind: Kind, query: str, value: object, expected: bool) -> None:
    assert matches(kind, query, value) is expected  # type: ignore[arg-type]


ARCHIVE = generate_archive(21, 4)
DATA = HostData.from_archive(ARCHIVE)


def _query(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_study_query_returns_only_requested_keys_with_counts() -> None:
    result = find(
        DATA,
        QueryRoot.STUDY,
        _query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="", PatientID=""),
    )
    assert result.status == STATUS_SUCCESS
    assert len(result.identifiers) == ARCHIVE.counts.studies
    for ds in result.identifiers:
        assert set(ds.dir()) == {
            "QueryRetrieveLevel",
            "StudyInstanceUID",
            "NumberOfStudyRelatedInstances",
            "PatientID",
        }
    assert sum(int(ds.NumberOfStudyRelatedInstances) for ds in result.identifiers) == (
        ARCHIVE.counts.instances
    )


def test_nocounts_leaves_count_attributes_out() -> None:
    result = find(
        DATA,
        QueryRoot.STUDY,
        _query("STUDY", StudyInstanceUID="", NumberOfStudyRelatedSeries=""),
        counts=False,
    )
    assert result.identifiers
    assert all("NumberOfStudyRelatedSeries" not in ds for ds in result.identifiers)


def test_series_and_image_queries_narrow_by_parent_uid() -> None:
    study = ARCHIVE.patients[0].studies[0]
    series = find(
        DATA,
        QueryRoot.STUDY,
        _query("SERIES", StudyInstanceUID=study.study_instance_uid, SeriesInstanceUID=""),
    )
    assert {ds.SeriesInstanceUID for ds in series.identifiers} == {
        s.series_instance_uid for s in study.series
    }
    images = find(
        DATA,
        QueryRoot.STUDY,
        _query("IMAGE", StudyInstanceUID=study.study_instance_uid, SOPInstanceUID=""),
    )
    assert len(images.identifiers) == study.instance_count


def test_patient_root_patient_level_and_matching_filters() -> None:
    patient = ARCHIVE.patients[1]
    everyone = find(DATA, QueryRoot.PATIENT, _query("PATIENT", PatientID="", PatientName=""))
    assert len(everyone.identifiers) == ARCHIVE.counts.patients
    one = find(
        DATA,
        QueryRoot.PATIENT,
        _query("PATIENT", PatientID=patient.patient_id, NumberOfPatientRelatedStudies=""),
    )
    assert [int(ds.NumberOfPatientRelatedStudies) for ds in one.identifiers] == [
        len(patient.studies)
    ]
    dates = sorted(st.study_date for p in ARCHIVE.patients for st in p.studies)
    ranged = find(DATA, QueryRoot.STUDY, _query("STUDY", StudyDate=f"-{dates[1]}"))
    assert len(ranged.identifiers) == sum(1 for d in dates if d <= dates[1])


def test_uid_lists_survive_the_wire_and_match_any_listed_uid() -> None:
    studies = [st.study_instance_uid for p in ARCHIVE.patients for st in p.studies][:2]
    request = _query("STUDY", StudyInstanceUID=studies)
    implicit = uids.IMPLICIT_VR_LITTLE_ENDIAN
    on_the_wire = decode_dataset(encode_dataset(request, implicit), implicit)
    assert on_the_wire is not None
    result = find(DATA, QueryRoot.STUDY, on_the_wire)
    assert sorted(ds.StudyInstanceUID for ds in result.identifiers) == sorted(studies)


def test_pending_encoder_matches_encode_message() -> None:
    spec = _spec(Profile.OPEN)
    answer = negotiate(spec, _rq())
    assert isinstance(answer, Accepted)
    context = answer.contexts[3]
    identifier = encode_dataset(_query("STUDY", PatientID="X"), context.transfer_syntax)
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 9
    rsp.AffectedSOPClassUID = context.abstract_syntax
    rsp.Status = 0xFF00
    rsp.Identifier = identifier
    for max_pdu in (0, 64, 16384):
        pending = pending_find_encoder(context, 9, max_pdu)
        expected = encode_message(rsp, context.context_id, max_pdu, request=False)
        assert pending(identifier) == expected


def test_unknown_keys_come_back_empty_and_lower_level_keys_are_ignored() -> None:
    request = _query("STUDY", StudyInstanceUID="", SeriesInstanceUID="1.2.3", StationName="X")
    result = find(DATA, QueryRoot.STUDY, request)
    assert len(result.identifiers) == ARCHIVE.counts.studies
    ds = result.identifiers[0]
    assert ds.StationName in (None, "")
    assert ds.SeriesInstanceUID in (None, "")


@pytest.mark.parametrize(
    ("root", "level"),
    [(QueryRoot.STUDY, "PATIENT"), (QueryRoot.STUDY, "FRAME"), (QueryRoot.PATIENT, "")],
)
def test_bad_levels_fail_with_a900(root: QueryRoot, level: str) -> None:
    assert find(DATA, root, _query(level)).status == STATUS_IDENTIFIER_MISMATCH
    assert find(DATA, root, Dataset()).status == STATUS_IDENTIFIER_MISMATCH


# -- truth -----------------------------------------------------------------------------------


def test_truth_exposes_only_what_the_profile_lets_through() -> None:
    by_profile = {p: host_truth(_spec(p)) for p in Profile}
    assert by_profile[Profile.OPEN].query_exposed
    assert by_profile[Profile.OPEN].count_attributes
    assert not by_profile[Profile.OPEN_NOCOUNTS].count_attributes
    assert by_profile[Profile.CALLED_AE_CHECK].accepts_any_called_ae is False
    locked = by_profile[Profile.CALLING_AE_ALLOWLIST]
    assert locked.calling_ae_checked is True
    assert locked.counts["patients"] > 0
    assert locked.exposed_counts["patients"] == 0
    assert locked.phi_categories == []
    assert by_profile[Profile.STORE_ONLY].services == ["verification", "storage"]
    for profile in Profile:
        if profile.hostile:
            assert by_profile[profile].expected_dicom is False
            assert by_profile[profile].services == []
        assert (by_profile[profile].tls is None) == (profile.tls is None)


def test_tls_truth_says_what_each_tls_profile_serves() -> None:
    truth = {p: host_truth(_spec(p)) for p in Profile if p.tls is not None and not p.other_service}
    assert set(truth) == {
        Profile.OPEN_TLS,
        Profile.TLS_LEGACY,
        Profile.TLS_EXPIRED,
        Profile.TLS_WEAK_CERT,
        Profile.TLS_MUTUAL,
    }
    assert truth[Profile.OPEN_TLS].tls == {
        "versions": ["1.2", "1.3"],
        "client_certificate": "not-requested",
        "self_signed": False,
        "expired": False,
        "key_type": "ec",
        "key_bits": 256,
        "signature_hash": "sha256",
    }
    assert truth[Profile.OPEN_TLS].query_exposed is True
    legacy = truth[Profile.TLS_LEGACY].tls
    assert legacy is not None and legacy["versions"] == ["1.0", "1.1"]
    expired = truth[Profile.TLS_EXPIRED].tls
    assert expired is not None and expired["expired"] and expired["self_signed"]
    weak = truth[Profile.TLS_WEAK_CERT].tls
    assert weak is not None and (weak["key_bits"], weak["signature_hash"]) == (1024, "sha1")
    mutual = truth[Profile.TLS_MUTUAL]
    assert mutual.tls is not None and mutual.tls["client_certificate"] == "required"
    # Without a client certificate nobody speaks DICOM to it, so nothing is exposed.
    assert mutual.expected_dicom is False
    assert mutual.query_exposed is False and mutual.exposed_counts["studies"] == 0
    assert mutual.counts["studies"] > 0


def test_truth_categories_use_the_scanner_vocabulary() -> None:
    truth = host_truth(_spec(Profile.OPEN))
    assert truth.phi_categories
    assert set(truth.phi_categories) <= {c.value for c in PhiCategory}


def test_truth_file_holds_no_patient_values(tmp_path: Path) -> None:
    plan = plan_farm(40, seed=13)
    document = write_truth(tmp_path / "out" / "truth.json", plan)
    text = (tmp_path / "out" / "truth.json").read_text()
    assert json.loads(text) == document == farm_truth(plan)
    assert document["schema"] == "pacsguard-lab-truth/1"
    assert document["host_count"] == 40
    assert sum(document["profiles"].values()) == 40
    sensitive: set[str] = set()
    for spec in plan.hosts:
        sensitive |= generate_archive(spec.seed, spec.patients).sensitive_values()
    assert len(sensitive) > 50
    for value in sensitive:
        assert value not in text
    assert not list((tmp_path / "out").glob("*.partial"))
