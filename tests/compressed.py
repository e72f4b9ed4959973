"""Synthetic compressed instances for transcoding tests: generated images (gradients, no
patient data) encoded by real encoders: dcmtk's `dcmcjpeg` (JPEG baseline, JPEG lossless
SV1) and pydicom's own encoders (JPEG 2000 via pylibjpeg-openjpeg, JPEG-LS via pyjpegls, RLE).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

#: name -> (transfer syntax, colour, bits): one instance each.
KINDS = {
    "jpeg-baseline": (JPEGBaseline8Bit, True, 8),
    "jpeg-lossless": (JPEGLosslessSV1, False, 16),
    "jpeg2000": (JPEG2000Lossless, True, 8),
    "jpeg-ls": (JPEGLSLossless, False, 16),
    "rle": (RLELossless, True, 8),
}
_DCMCJPEG = {JPEGBaseline8Bit: "+eb", JPEGLosslessSV1: "+e1"}


def uncompressed(
    *, rows: int = 64, columns: int = 48, frames: int = 3, rgb: bool = True, bits: int = 8
) -> Dataset:
    """A Secondary Capture image of gradients, Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Synthetic^Pixels"
    ds.PatientID = "SYN-PIX"
    ds.Modality = "OT"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    y, x = np.mgrid[0:rows, 0:columns]
    top = (1 << int(ds.BitsStored)) - 1
    planes = []
    for f in range(frames):
        channels = [(x * 5 + f * 40) % top, (y * 3 + f * 7) % top, ((x + y) * 2) % top]
        planes.append(np.stack(channels, -1) if rgb else channels[0] + channels[1] // 2)
    dtype = np.uint8 if bits == 8 else np.uint16
    ds.PixelData = (np.stack(planes) % (top + 1)).astype(dtype).tobytes()
    return ds


def compressed_file(kind: str, directory: Path, **shape: int) -> Path:
    """One synthetic instance of `kind` (a key of KINDS) written as a Part 10 file."""
    syntax, rgb, bits = KINDS[kind]
    ds = uncompressed(rgb=rgb, bits=bits, **shape)
    raw = directory / f"{kind}-raw-{ds.SOPInstanceUID}.dcm"
    out = directory / f"{kind}-{ds.SOPInstanceUID}.dcm"
    if syntax in _DCMCJPEG:
        ds.save_as(raw, enforce_file_format=True)
        tool = shutil.which("dcmcjpeg")
        if tool is None:
            raise RuntimeError("dcmcjpeg (Debian: dcmtk) is needed to make JPEG test data")
        # +un: keep the SOP Instance UID (dcmcjpeg makes a new one for lossy output)
        subprocess.run([tool, _DCMCJPEG[syntax], "+un", str(raw), str(out)], check=True)
        raw.unlink()
        return out
    ds.compress(UID(syntax))
    ds.save_as(out, enforce_file_format=True)
    return out
