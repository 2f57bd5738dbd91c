"""WFDB record -> DICOM ECG waveform instance.

ECG carts and research archives deliver WFDB records; PACS and our own DICOM path expect waveform
instances. ``wfdb_to_dicom`` writes one, choosing the IOD by what the record holds:

- **12-Lead ECG Waveform Storage** (1.2.840.10008.5.1.4.1.1.9.1.1) when the record carries the
  12 standard leads and nothing else. That IOD allows at most 16384 samples and 15 s per
  multiplex group (PS3.3 A.34.3.4.3); a longer record is cut to its first 10 s, the length of a
  diagnostic resting ECG, and the cut is written into the Series Description and returned.
- **General ECG Waveform Storage** (1.2.840.10008.5.1.4.1.1.9.1.2) for every other lead set
  (Holter pairs such as MLII/V5, 15-lead records with Frank leads), whole, up to 24 channels.

Samples are kept lossless where possible: each channel's sensitivity is the record's own ADC step
(1 / gain), so the stored 16-bit values are the WFDB digital samples less their baseline; a
channel whose range does not fit 16 bits gets a coarser step. Leads are coded from DICOM CID 3001
with MDC codes, units with UCUM (CID 3082). The file is written to a temporary name, flushed and
renamed, so a reader never sees half a file.

This module may use pydicom and ``models.ecg.signal`` but nothing else of ``app``.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from models.ecg.leads import MDC_LEAD_CODES, STANDARD_LEADS, normalise_lead_name
from models.ecg.signal import patient_from_wfdb_comments

TWELVE_LEAD_ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG = "1.2.840.10008.5.1.4.1.1.9.1.2"
TWELVE_LEAD_MAX_S = 15.0
TWELVE_LEAD_MAX_SAMPLES = 16384
TWELVE_LEAD_CUT_S = 10.0
GENERAL_MAX_CHANNELS = 24
FS_RANGE = (200.0, 1000.0)  # both IODs
INT16 = 32767

_LEAD_MEANINGS = {
    "I": "Lead I", "II": "Lead II", "III": "Lead III", "aVR": "Lead aVR", "aVL": "Lead aVL",
    "aVF": "Lead aVF", **{f"V{n}": f"Lead V{n}" for n in range(1, 7)},
}
# MDC codes beyond the 12 standard leads (ISO/IEEE 11073-10101, also in CID 3001)
_EXTRA_MDC = {"vx": ("2:16", "Lead X"), "vy": ("2:17", "Lead Y"), "vz": ("2:18", "Lead Z")}
# the digital value WFDB uses for "no sample", by storage format
_INVALID = {"16": -32768, "61": -32768, "212": -2048, "310": -512, "311": -512, "80": -128,
            "160": -32768, "24": -(2**23), "32": -(2**31)}


class WaveformWriteError(ValueError):
    """A WFDB record that cannot be written as a DICOM ECG waveform."""


@dataclass
class WriteReport:
    """What ``wfdb_to_dicom`` chose and changed."""

    sop_class_uid: str
    leads: list[str]
    fs: float
    duration_s: float
    original_duration_s: float
    notes: list[str] = field(default_factory=list)


def wfdb_to_dicom(record_path: str | Path, out_path: str | Path, *,
                  patient_name: str = "", patient_id: str = "",
                  patient_birth_date: str = "", patient_sex: str | None = None,
                  patient_age: str | None = None,
                  study_instance_uid: str | None = None, series_instance_uid: str | None = None,
                  sop_instance_uid: str | None = None, study_id: str = "",
                  accession_number: str = "", study_date: str | None = None,
                  study_time: str | None = None, study_description: str = "",
                  referring_physician_name: str = "", manufacturer: str = "MedGate",
                  institution_name: str | None = None, iod: str = "auto",
                  ) -> Dataset:
    """Write the WFDB record at ``record_path`` (no extension) as a DICOM ECG instance.

    ``iod`` is "auto" (see the module docstring), "12-lead" (standard leads only, cut to 10 s
    when longer than 15 s) or "general". Returns the dataset written; its ``medgate_report``
    attribute (a ``WriteReport``) says which IOD was chosen and what was cut.
    """
    import wfdb

    rec_path = Path(record_path)
    if rec_path.suffix in (".hea", ".dat", ".mat"):
        rec_path = rec_path.with_suffix("")
    try:
        rec = wfdb.rdrecord(str(rec_path), physical=False)
    except FileNotFoundError as exc:
        raise WaveformWriteError(f"WFDB record {rec_path} not found: {exc}") from exc
    if rec.d_signal is None or rec.n_sig == 0 or rec.sig_len == 0:
        raise WaveformWriteError(f"WFDB record {rec_path} has no samples")
    fs = float(rec.fs)
    if not FS_RANGE[0] <= fs <= FS_RANGE[1]:
        raise WaveformWriteError(f"sampling frequency {fs:g} Hz is outside the {FS_RANGE[0]:g}-"
                                 f"{FS_RANGE[1]:g} Hz that DICOM ECG IODs allow")
    digital = np.asarray(rec.d_signal, dtype=np.int64).T  # channels x samples
    names = [normalise_lead_name(n) for n in rec.sig_name]
    gains = [float(g) if g else 0.0 for g in rec.adc_gain]
    baselines = [int(b) for b in rec.baseline]
    units = [(u or "").strip() for u in rec.units]
    mv_scale = [_mv_per_unit(u, rec_path) for u in units]

    standard = [n for n in names if n in STANDARD_LEADS]
    has_12 = set(STANDARD_LEADS) <= set(standard)
    if iod == "auto":
        iod = "12-lead" if has_12 and len(names) == 12 else "general"
    if iod not in ("12-lead", "general"):
        raise WaveformWriteError(f"iod must be 'auto', '12-lead' or 'general', not {iod!r}")
    notes: list[str] = []
    if iod == "12-lead":
        if not has_12:
            missing = [n for n in STANDARD_LEADS if n not in names]
            raise WaveformWriteError(f"the 12-lead ECG IOD needs the 12 standard leads; "
                                     f"{rec_path.name} lacks {', '.join(missing)}")
        order = [names.index(n) for n in STANDARD_LEADS]
        if len(names) > 12:
            notes.append(f"leads {', '.join(n for n in names if n not in STANDARD_LEADS)} "
                         "left out (not standard 12-lead leads)")
        sop_class = TWELVE_LEAD_ECG
    else:
        if len(names) > GENERAL_MAX_CHANNELS:
            raise WaveformWriteError(f"{len(names)} channels: the General ECG IOD holds at most "
                                     f"{GENERAL_MAX_CHANNELS}")
        order = list(range(len(names)))
        sop_class = GENERAL_ECG
    n_total = digital.shape[1]
    n = n_total
    if sop_class == TWELVE_LEAD_ECG and (n / fs > TWELVE_LEAD_MAX_S
                                         or n > TWELVE_LEAD_MAX_SAMPLES):
        n = int(round(TWELVE_LEAD_CUT_S * fs))
        notes.append(f"first {TWELVE_LEAD_CUT_S:g} s of {n_total / fs:.1f} s kept (the 12-lead "
                     f"ECG IOD holds at most {TWELVE_LEAD_MAX_S:g} s)")

    channels: list[Dataset] = []
    samples = np.zeros((n, len(order)), dtype=np.int16)
    for col, i in enumerate(order):
        raw = digital[i, :n]
        invalid = raw == _INVALID.get(str(rec.fmt[i]), -(2**63))
        counts = np.where(invalid, 0, raw - baselines[i])
        step_uv = 1000.0 * mv_scale[i] / gains[i] if gains[i] else 1.0
        peak = int(np.abs(counts).max()) if counts.size else 0
        if peak > INT16 - 1:
            # too wide for 16 bits at the record's own step: coarsen the step
            factor = int(np.ceil(peak / (INT16 - 1)))
            counts = np.round(counts / factor).astype(np.int64)
            step_uv *= factor
            notes.append(f"{names[i]}: step coarsened {factor}x to fit 16 bits")
        samples[:, col] = counts.astype(np.int16)
        channels.append(_channel(names[i], rec.sig_name[i], step_uv, col + 1))

    ds = _dataset(sop_class, sop_instance_uid, study_instance_uid, series_instance_uid)
    now = dt.datetime.now()
    acq = _acquisition_datetime(rec) or now
    _patient(ds, patient_name, patient_id, patient_birth_date,
             patient_sex if patient_sex is not None else _header_sex(rec.comments),
             patient_age if patient_age is not None else _header_age(rec.comments))
    ds.StudyDate = study_date if study_date is not None else acq.strftime("%Y%m%d")
    ds.StudyTime = study_time if study_time is not None else acq.strftime("%H%M%S")
    ds.ReferringPhysicianName = referring_physician_name
    ds.StudyID = study_id
    ds.AccessionNumber = accession_number
    if study_description:
        ds.StudyDescription = study_description
    ds.Modality = "ECG"
    ds.SeriesNumber = 1
    desc = f"ECG from WFDB record {rec_path.name}"
    if notes:
        desc = f"{desc}; {notes[-1]}"
    ds.SeriesDescription = desc[:64]
    ds.Manufacturer = manufacturer
    if institution_name:
        ds.InstitutionName = institution_name
    ds.InstanceNumber = 1
    ds.ContentDate = acq.strftime("%Y%m%d")
    ds.ContentTime = acq.strftime("%H%M%S")
    ds.AcquisitionDateTime = acq.strftime("%Y%m%d%H%M%S")
    ds.AcquisitionContextSequence = Sequence()

    group = Dataset()
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(order)
    group.NumberOfWaveformSamples = n
    group.SamplingFrequency = f"{fs:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = samples.astype("<i2").tobytes()
    ds.WaveformSequence = Sequence([group])

    _write_atomic(ds, Path(out_path))
    ds.medgate_report = WriteReport(sop_class, [names[i] for i in order], fs, n / fs,
                                    n_total / fs, notes)
    return ds


# ------------------------------------------------------------------------------------------------


def _mv_per_unit(unit: str, rec_path: Path) -> float:
    key = unit.lower()
    table = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}
    if key not in table:
        raise WaveformWriteError(f"{rec_path.name}: cannot convert units {unit!r} to volts")
    return table[key]


def _channel(lead: str, label: str, step_uv: float, number: int) -> Dataset:
    ch = Dataset()
    src = Dataset()
    if lead in MDC_LEAD_CODES:
        src.CodeValue, src.CodeMeaning = MDC_LEAD_CODES[lead], _LEAD_MEANINGS[lead]
    elif lead.lower() in _EXTRA_MDC:
        src.CodeValue, src.CodeMeaning = _EXTRA_MDC[lead.lower()]
    else:
        # not a lead of CID 3001: the generic "ECG lead" concept, with the record's label
        src.CodeValue, src.CodeMeaning = "2:0", "Unspecified lead"
    src.CodingSchemeDesignator = "MDC"
    ch.ChannelSourceSequence = Sequence([src])
    ch.ChannelLabel = str(label)[:16]
    ch.ChannelSensitivity = _ds_value(step_uv)
    units = Dataset()
    units.CodeValue, units.CodingSchemeDesignator, units.CodeMeaning = "uV", "UCUM", "microvolt"
    ch.ChannelSensitivityUnitsSequence = Sequence([units])
    ch.ChannelSensitivityCorrectionFactor = "1"
    ch.ChannelBaseline = "0"
    ch.ChannelSampleSkew = "0"
    ch.WaveformBitsStored = 16
    return ch


def _ds_value(x: float) -> str:
    """A decimal string of at most 16 characters."""
    s = f"{x:.10g}"
    return s if len(s) <= 16 else f"{x:.8e}"


def _dataset(sop_class: str, sop_uid: str | None, study_uid: str | None,
             series_uid: str | None) -> Dataset:
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    return ds


def _patient(ds: Dataset, name: str, pid: str, birth: str, sex: str | None,
             age: str | None) -> None:
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = birth
    ds.PatientSex = sex if sex in ("M", "F", "O") else ""
    if age:
        ds.PatientAge = age


def _header_sex(comments: list[str]) -> str | None:
    return patient_from_wfdb_comments(comments).get("sex")


def _header_age(comments: list[str]) -> str | None:
    age = patient_from_wfdb_comments(comments).get("age_years")
    return f"{int(age):03d}Y" if age is not None and 0 <= age < 1000 else None


def _acquisition_datetime(rec: Any) -> dt.datetime | None:
    if getattr(rec, "base_date", None) and getattr(rec, "base_time", None):
        return dt.datetime.combine(rec.base_date, rec.base_time)
    return None


def _write_atomic(ds: Dataset, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
