"""The SCP against dcmtk's echoscu, storescu and findscu (real peers, real sockets)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from app.dicom.scp import IMPLEMENTATION_CLASS_UID
from tests.conftest import tool
from tests.dimse.conftest import PYDICOM_FILES, RunningSCP, split_part10


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=cwd)


def storescu(scp: RunningSCP, *options: str, files: list[Path]) -> subprocess.CompletedProcess:
    # -R: propose only the SOP classes of the files sent.
    return run(tool("storescu"), "-aec", scp.settings.ae_title, "-aet", "STORESCU", "-R",
               *options, "127.0.0.1", str(scp.port), *map(str, files))


def assert_stored_as_sent(scp: RunningSCP, original: Path) -> None:
    """The stored file holds the original's data set bytes, in its transfer syntax."""
    meta, data = split_part10(original)
    ds = pydicom.dcmread(original, stop_before_pixels=True)
    stored_meta, stored_data = split_part10(scp.stored_path(ds.SOPInstanceUID))
    assert stored_meta.TransferSyntaxUID == meta.TransferSyntaxUID, original.name
    assert stored_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert stored_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert stored_data == data, f"{original.name}: data set bytes changed on the way"
    assert scp.instance(ds.SOPInstanceUID).transfer_syntax_uid == meta.TransferSyntaxUID


def converted(stderr: str) -> list[tuple[str, str]]:
    """The (from, to) pairs of transfer syntax conversions storescu -v reports."""
    pairs = re.findall(r"Converting transfer syntax: (.+?) -> (.+?)$", stderr, re.M)
    return [(a, b) for a, b in pairs if a != b]


def assert_same_content(scp: RunningSCP, original: Path) -> None:
    """For files dcmtk re-encodes in transit (it writes explicit sequence and item lengths
    where the file had undefined ones, re-deflates, and drops Data Set Trailing Padding): same
    transfer syntax, same decoded data set, pixel data included."""
    ds = pydicom.dcmread(original)
    ds.pop(0xFFFCFFFC, None)
    stored = pydicom.dcmread(scp.stored_path(ds.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID, original.name
    assert stored == ds, f"{original.name}: data set content changed on the way"


def test_echoscu_gets_verification_success(sqlite_scp):
    result = run(tool("echoscu"), "-aec", "MEDGATE", "127.0.0.1", str(sqlite_scp.port))
    assert result.returncode == 0, result.stderr


def test_storescu_ct_slices_arrive_byte_for_byte_and_the_seg_unchanged(scp, shared_data):
    folder = shared_data / "ct" / "ct-3slice"
    slices = sorted(folder.glob("0*.dcm"))
    # The slices are Implicit VR Little Endian files: propose that alone so dcmtk sends them
    # unchanged; the SEG (Explicit VR Little Endian) goes with dcmtk's default proposal, and
    # dcmtk rewrites its sequence lengths, so for it the decoded content is compared.
    sent = storescu(scp, "-xi", files=slices)
    assert sent.returncode == 0, sent.stderr
    sent = storescu(scp, "+sd", "+r", "+sp", "liver_seg.dcm", files=[folder])
    assert sent.returncode == 0, sent.stderr
    assert scp.counts() == (1, 2, 4)
    for path in slices:
        assert_stored_as_sent(scp, path)
    assert_same_content(scp, folder / "liver_seg.dcm")


# storescu option that proposes each file's own (compressed or unusual) transfer syntax.
TRANSFER_SYNTAX_FILES = [
    ("-xw", "JPEG2000.dcm"),               # JPEG 2000
    ("-xy", "SC_rgb_jpeg_dcmtk.dcm"),      # JPEG Baseline
    ("-xs", "SC_rgb_jpeg_gdcm.dcm"),       # JPEG Lossless SV1
    ("-xx", "JPEG-lossy.dcm"),             # JPEG Extended
    ("-xt", "pathology/sm_image_jpegls.dcm"),  # JPEG-LS Lossless (shared data)
    ("-xr", "MR_small_RLE.dcm"),           # RLE Lossless
    ("-xb", "ExplVR_BigEnd.dcm"),          # Explicit VR Big Endian
    ("-xd", "image_dfl.dcm"),              # Deflated Explicit VR Little Endian
]


def test_storescu_files_arrive_in_their_own_transfer_syntax(sqlite_scp, shared_data):
    files = [(option, shared_data / name if "/" in name else PYDICOM_FILES / name)
             for option, name in TRANSFER_SYNTAX_FILES]
    for option, path in files:
        sent = storescu(sqlite_scp, "-v", option, files=[path])
        assert sent.returncode == 0, f"{path.name}: {sent.stderr}"
        assert not converted(sent.stderr), f"{path.name}: {converted(sent.stderr)}"
    for _, path in files:
        # Byte-for-byte equality is checked with a raw-sending peer in test_dimse_pynetdicom.
        assert_same_content(sqlite_scp, path)
    assert sqlite_scp.counts()[2] == len(files)


def test_storescu_of_a_data_set_without_study_uid_fails_and_stores_nothing(sqlite_scp):
    sent = storescu(sqlite_scp, "-v", "-xu", files=[PYDICOM_FILES / "JPEGLSNearLossless_08.dcm"])
    assert sent.returncode != 0
    assert "Error: DataSetDoesNotMatchSOPClass" in sent.stderr, sent.stderr
    assert sqlite_scp.counts() == (0, 0, 0)
    assert sqlite_scp.stored_files() == []


@pytest.fixture
def stored_ct(scp, shared_data) -> RunningSCP:
    slices = sorted((shared_data / "ct" / "ct-3slice").glob("0*.dcm"))
    sent = storescu(scp, "-xi", files=slices)
    assert sent.returncode == 0, sent.stderr
    return scp


def findscu(scp: RunningSCP, out: Path, *keys: str) -> list[pydicom.Dataset]:
    """Study Root C-FIND with findscu; the responses are extracted (-X) and read back."""
    out.mkdir()
    args = [tool("findscu"), "-S", "-aec", "MEDGATE", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = run(*args, "127.0.0.1", str(scp.port))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p, force=True) for p in sorted(out.glob("rsp*.dcm"))]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_findscu_study_and_series_level_return_the_stored_study(stored_ct, shared_data,
                                                               tmp_path):
    ct = pydicom.dcmread(shared_data / "ct" / "ct-3slice" / "01.dcm", stop_before_pixels=True)
    studies = findscu(stored_ct, tmp_path / "study", "QueryRetrieveLevel=STUDY",
                      f"PatientName={str(ct.PatientName)[:4]}*", "StudyInstanceUID",
                      "PatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    assert len(studies) == 1
    (study,) = studies
    assert study.StudyInstanceUID == ct.StudyInstanceUID
    assert study.PatientID == ct.PatientID
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedInstances) == 3
    assert study.RetrieveAETitle == "MEDGATE" and study.QueryRetrieveLevel == "STUDY"

    series = findscu(stored_ct, tmp_path / "series", "QueryRetrieveLevel=SERIES",
                     f"StudyInstanceUID={ct.StudyInstanceUID}", "SeriesInstanceUID",
                     "Modality", "NumberOfSeriesRelatedInstances")
    assert [(s.SeriesInstanceUID, s.Modality, int(s.NumberOfSeriesRelatedInstances))
            for s in series] == [(ct.SeriesInstanceUID, "CT", 3)]

    nothing = findscu(stored_ct, tmp_path / "none", "QueryRetrieveLevel=STUDY",
                      "PatientName=NOBODY*", "StudyInstanceUID")
    assert nothing == []
