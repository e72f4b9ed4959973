"""Synthetic patients, studies, series and instances for the lab.

Everything is derived from a seed, so a test can regenerate the exact archive it scanned. Names
are obviously fake ("Synthetic" + invented syllables), and a share of patient IDs is shaped like
a US Social Security Number (area 900-999, which the SSA never issues) so that the scanner's
identifier-category detection has something to find.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from pacsguard.dicom import uids

_SYLLABLES = (
    "zor", "vak", "quil", "bex", "tram", "wub", "nix", "pol", "yrn", "gath",
    "mox", "sil", "dre", "fen", "kul", "ozz", "pim", "rux", "thal", "vey",
)  # fmt: skip
_GIVEN = ("Ada", "Bo", "Cyd", "Dax", "Eun", "Fox", "Gil", "Hal", "Ivo", "Jun", "Kai", "Lux")
_MODALITIES = (("CT", uids.CT_IMAGE_STORAGE), ("MR", uids.MR_IMAGE_STORAGE))
_DESCRIPTIONS = ("SYNTHETIC HEAD", "SYNTHETIC CHEST", "SYNTHETIC KNEE", "SYNTHETIC ABDOMEN")
_INSTITUTIONS = ("Synthetic General Lab", "Nowhere Imaging Lab", "Example Clinic Lab")


@dataclass(frozen=True, slots=True)
class SyntheticInstance:
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int


@dataclass(frozen=True, slots=True)
class SyntheticSeries:
    series_instance_uid: str
    series_number: int
    modality: str
    instances: tuple[SyntheticInstance, ...]


@dataclass(frozen=True, slots=True)
class SyntheticStudy:
    study_instance_uid: str
    study_id: str
    study_date: str
    study_time: str
    accession_number: str
    referring_physician: str
    institution: str
    description: str
    series: tuple[SyntheticSeries, ...]

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    studies: tuple[SyntheticStudy, ...]

    @property
    def ssn_shaped(self) -> bool:
        return len(self.patient_id) == 11 and self.patient_id[3] == "-"


@dataclass(frozen=True, slots=True)
class Counts:
    patients: int
    studies: int
    series: int
    instances: int


@dataclass(frozen=True, slots=True)
class SyntheticArchive:
    """A whole synthetic archive: what one simulated or real PACS is loaded with."""

    seed: int
    patients: tuple[SyntheticPatient, ...]

    @property
    def counts(self) -> Counts:
        studies = [st for p in self.patients for st in p.studies]
        series = [se for st in studies for se in st.series]
        return Counts(
            patients=len(self.patients),
            studies=len(studies),
            series=len(series),
            instances=sum(len(se.instances) for se in series),
        )

    def walk(
        self,
    ) -> Iterator[tuple[SyntheticPatient, SyntheticStudy, SyntheticSeries, SyntheticInstance]]:
        for patient in self.patients:
            for study in patient.studies:
                for series in study.series:
                    for instance in series.instances:
                        yield patient, study, series, instance

    def sensitive_values(self) -> set[str]:
        """Every patient-identifying string in the archive: what must never appear in output."""
        values: set[str] = set()
        for p in self.patients:
            values.update({p.patient_id, p.name, p.name.split("^")[0]})
            for st in p.studies:
                values.update({st.accession_number, st.referring_physician.split("^")[0]})
        return values


def _uid(seed: int, *parts: object) -> str:
    """A deterministic 2.25 UID from the seed and the object's position."""
    return str(
        generate_uid(prefix=None, entropy_srcs=["pacsguard-lab", str(seed), *map(str, parts)])
    )


def _family_name(rng: random.Random) -> str:
    return "Synthetic" + "".join(rng.choice(_SYLLABLES) for _ in range(3))


def _patient_id(rng: random.Random, index: int, ssn_share: float) -> str:
    if rng.random() < ssn_share:
        return f"{rng.randint(900, 999)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
    return f"PGLAB{index:07d}"


def generate_archive(
    seed: int,
    patients: int,
    *,
    ssn_share: float = 0.3,
    studies_per_patient: tuple[int, int] = (1, 3),
    series_per_study: tuple[int, int] = (1, 3),
    instances_per_series: tuple[int, int] = (1, 4),
) -> SyntheticArchive:
    """Generate `patients` synthetic patients with their studies, series and instances."""
    rng = random.Random(seed)
    result = []
    for p in range(patients):
        family = _family_name(rng)
        studies = []
        for s in range(rng.randint(*studies_per_patient)):
            series_list = []
            for r in range(rng.randint(*series_per_study)):
                modality, sop_class = rng.choice(_MODALITIES)
                instances = tuple(
                    SyntheticInstance(sop_class, _uid(seed, p, s, r, i), i + 1)
                    for i in range(rng.randint(*instances_per_series))
                )
                series_list.append(SyntheticSeries(_uid(seed, p, s, r), r + 1, modality, instances))
            studies.append(
                SyntheticStudy(
                    study_instance_uid=_uid(seed, p, s),
                    study_id=str(s + 1),
                    study_date=f"20{rng.randint(10, 25):02d}{rng.randint(1, 12):02d}"
                    f"{rng.randint(1, 28):02d}",
                    study_time=f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}00",
                    accession_number=f"SYNACC{seed % 1000:03d}{p:05d}{s:02d}",
                    referring_physician=f"{_family_name(rng)}^Doc",
                    institution=rng.choice(_INSTITUTIONS),
                    description=rng.choice(_DESCRIPTIONS),
                    series=tuple(series_list),
                )
            )
        result.append(
            SyntheticPatient(
                patient_id=_patient_id(rng, p, ssn_share),
                name=f"{family}^{rng.choice(_GIVEN)}",
                birth_date=f"19{rng.randint(30, 99):02d}{rng.randint(1, 12):02d}"
                f"{rng.randint(1, 28):02d}",
                sex=rng.choice("MF"),
                studies=tuple(studies),
            )
        )
    return SyntheticArchive(seed=seed, patients=tuple(result))


def build_dataset(
    patient: SyntheticPatient,
    study: SyntheticStudy,
    series: SyntheticSeries,
    instance: SyntheticInstance,
    *,
    rows: int = 8,
    columns: int = 8,
) -> Dataset:
    """A complete, valid image instance (16-bit monochrome) with File Meta Information."""
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyID = study.study_id
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.ReferringPhysicianName = study.referring_physician
    ds.InstitutionName = study.institution
    ds.StudyDescription = study.description
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.Modality = series.modality
    ds.InstanceNumber = instance.instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((instance.instance_number + i) % 256 for i in range(rows * columns * 2))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(instance.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(instance.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(uids.IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = uids.IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def write_files(archive: SyntheticArchive, directory: Path) -> list[Path]:
    """Write every instance as a DICOM Part 10 file named by its SOP Instance UID."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for patient, study, series, instance in archive.walk():
        path = directory / f"{instance.sop_instance_uid}.dcm"
        build_dataset(patient, study, series, instance).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
