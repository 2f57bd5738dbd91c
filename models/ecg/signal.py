"""Reading ECG waveforms into millivolts: DICOM waveform instances and WFDB records.

Everything downstream (measurement, interpretation, MERL) works on an ``EcgRecord``: a
leads x samples array in millivolts at a known sampling frequency, with standard lead names.
``read_ecg`` is the one entry point; ``load_dicom`` and ``load_wfdb`` return the record as stored
(native rate, file lead order) and ``standardise`` renames, derives, reorders and resamples.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from scipy.signal import resample_poly

from models.ecg.cart import CartMeasurements, read_cart
from models.ecg.errors import (
    EcgInputError,
    EmptySignalError,
    NoWaveformError,
    UnknownUnitsError,
    UnsupportedWaveformError,
)
from models.ecg.leads import (
    STANDARD_LEADS,
    derive_missing_leads,
    normalise_lead_name,
    standard_order,
)

TARGET_FS = 500.0
# Files up to this size are read into memory first: pydicom parses the many small annotation
# and channel items far faster from bytes than through a buffered file (about 2 ms of a 12 ms
# read of pydicom's 12-lead ECG). Larger files (long Holter records) are read from the file, so
# memory stays one copy.
_READ_IN_MEMORY_MAX = 64 * 1024 * 1024

# Millivolts per unit, keyed by lower-cased UCUM code or spelled-out unit (DICOM CID 3082 uses
# UCUM "uV" and "mV"; WFDB headers write "mV", "uV" and occasionally "V").
_MV_PER_UNIT: dict[str, float] = {
    "nv": 1e-6, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "mv": 1.0, "v": 1e3,
    "nanovolt": 1e-6, "microvolt": 1e-3, "millivolt": 1.0, "volt": 1e3,
}

# PS3.3 C.10.9.1.4: sample encodings this reader decodes. Mu-law and A-law ("MB", "AB") are
# audio encodings and are refused.
_SAMPLE_DTYPES: dict[tuple[int, str], str] = {
    (8, "SB"): "i1", (8, "UB"): "u1", (16, "SS"): "<i2", (16, "US"): "<u2",
    (32, "SL"): "<i4", (32, "UL"): "<u4", (64, "SV"): "<i8", (64, "UV"): "<u8",
    (32, "FL"): "<f4", (64, "FD"): "<f8",
}


def mv_per_unit(unit: str) -> float:
    """Millivolts per one ``unit``; raises ``UnknownUnitsError`` for anything not a voltage."""
    key = (unit or "").strip().lower()
    if key in _MV_PER_UNIT:
        return _MV_PER_UNIT[key]
    raise UnknownUnitsError(f"cannot convert ECG units {unit!r} to millivolts")


@dataclass
class WaveformGroup:
    """One multiplex group of a DICOM waveform (e.g. the rhythm strip or the median beats)."""

    label: str
    fs: float
    leads: list[str]
    signals_mv: np.ndarray
    originality: str | None = None

    @property
    def duration_s(self) -> float:
        return self.signals_mv.shape[1] / self.fs


@dataclass
class EcgRecord:
    """An ECG in millivolts: ``signals_mv`` is leads x samples at ``fs`` Hz.

    ``groups`` keeps the other waveform groups of the file (for DICOM, e.g. median beats) as read;
    ``notes`` says what was done to the signal (derived leads, resampling, missing samples);
    ``patient`` holds what the file says about sex ("M"/"F") and age in years, when it does;
    ``cart`` what the acquiring device measured (``models.ecg.cart``), None for WFDB records and
    DICOM files without a Waveform Annotation Sequence.
    """

    signals_mv: np.ndarray
    fs: float
    leads: list[str]
    source: str
    group_label: str = ""
    groups: list[WaveformGroup] = field(default_factory=list)
    original_fs: float | None = None
    notes: list[str] = field(default_factory=list)
    derived_leads: list[str] = field(default_factory=list)
    patient: dict[str, Any] = field(default_factory=dict)
    instance_uid: str | None = None
    cart: CartMeasurements | None = None

    @property
    def n_samples(self) -> int:
        return int(self.signals_mv.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def has(self, lead: str) -> bool:
        return lead in self.leads

    def lead(self, name: str) -> np.ndarray:
        try:
            return self.signals_mv[self.leads.index(name)]
        except ValueError:
            raise KeyError(f"lead {name!r} not in record (has {self.leads})") from None


# --------------------------------------------------------------------------------------------
# Entry point


def read_ecg(path: str | Path | Dataset, target_fs: float | None = TARGET_FS,
             derive: bool = True) -> EcgRecord:
    """Read a DICOM waveform file (or dataset) or a WFDB record into a standardised record.

    ``path`` may be a DICOM file, a WFDB header (``.hea``), one of its signal files (``.dat``,
    ``.mat``) or the record path without extension.
    """
    if isinstance(path, Dataset):
        return standardise(load_dicom(path), target_fs, derive)
    p = Path(path)
    hea = wfdb_header_for(p)
    if hea is not None:
        return standardise(load_wfdb(hea.with_suffix("")), target_fs, derive)
    if not p.is_file():
        raise EcgInputError(f"no such ECG file: {p}")
    return standardise(load_dicom(p), target_fs, derive)


def wfdb_header_for(path: Path) -> Path | None:
    """The WFDB header that describes ``path``, or None when it is not a WFDB record."""
    if path.suffix.lower() == ".hea":
        return path if path.is_file() else None
    if path.suffix.lower() in (".dat", ".mat", "") or not path.exists():
        candidate = path.with_suffix(".hea") if path.suffix else Path(f"{path}.hea")
        if candidate.is_file():
            return candidate
    return None


WAVEFORM_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1.9."


def is_ecg_file(path: str | Path) -> bool:
    """Whether ``path`` looks like an ECG this module can read (cheap: headers only)."""
    p = Path(path)
    if wfdb_header_for(p) is not None:
        return True
    if not p.is_file():
        return False
    # the file meta group names the SOP class: the waveform storage classes are
    # 1.2.840.10008.5.1.4.1.1.9.* (PS3.4 B.5); reading it costs a few hundred bytes, where
    # looking for the Waveform Sequence parses every annotation before it
    try:
        meta = pydicom.filereader.read_file_meta_info(p)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError):
        sop_class = ""
    if sop_class:
        return sop_class.startswith(WAVEFORM_STORAGE_PREFIX)
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["WaveformSequence"])
    except (InvalidDicomError, OSError, ValueError):
        return False
    return "WaveformSequence" in ds


# --------------------------------------------------------------------------------------------
# DICOM


def load_dicom(src: str | Path | Dataset) -> EcgRecord:
    """Read every multiplex group of a DICOM waveform; the rhythm group becomes the signal."""
    if isinstance(src, Dataset):
        ds, source = src, str(getattr(src, "filename", "") or "<dataset>")
    else:
        source = str(src)
        try:
            ds = _dcmread(Path(src))
        except InvalidDicomError as exc:
            raise EcgInputError(f"{source} is neither a DICOM file nor a WFDB record") from exc
        except OSError as exc:
            raise EcgInputError(f"cannot read {source}: {exc}") from exc
    seq = ds.get("WaveformSequence")
    if not seq:
        raise NoWaveformError(f"{source} has no Waveform Sequence (5400,0100): not an ECG "
                              f"waveform (SOP Class {ds.get('SOPClassUID', 'unknown')})")
    groups = [_read_group(item, i, source) for i, item in enumerate(seq)]
    chosen = _choose_rhythm_group(groups)
    main = groups[chosen]
    others = [g for i, g in enumerate(groups) if i != chosen]
    # PS3.3 C.10.10: the cart's own measurements; absent module -> None, not an empty result
    cart = read_cart(ds) if ds.get("WaveformAnnotationSequence") else None
    return EcgRecord(
        signals_mv=main.signals_mv, fs=main.fs, leads=list(main.leads), source=source,
        group_label=main.label, groups=others, original_fs=main.fs,
        patient=_dicom_patient(ds), instance_uid=str(ds.get("SOPInstanceUID", "") or "") or None,
        cart=cart,
    )


def _dcmread(path: Path) -> Dataset:
    if path.stat().st_size <= _READ_IN_MEMORY_MAX:
        data = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.filename = str(path)  # as a file read would say
        return ds
    return pydicom.dcmread(path)


def _read_group(item: Dataset, index: int, source: str) -> WaveformGroup:
    where = f"{source} waveform group {index}"
    # each element is fetched once: every look-up of a pydicom element costs a conversion
    # check, and a 12-lead file has hundreds of them (read_ecg is a benchmarked path)
    got: dict[str, Any] = {}
    for kw in ("NumberOfWaveformChannels", "NumberOfWaveformSamples", "SamplingFrequency",
               "WaveformBitsAllocated", "WaveformSampleInterpretation", "WaveformData"):
        got[kw] = item.get(kw)
        if got[kw] in (None, b"", ""):
            raise NoWaveformError(f"{where} lacks {kw}")
    n_ch = int(got["NumberOfWaveformChannels"])
    n_s = int(got["NumberOfWaveformSamples"])
    fs = float(got["SamplingFrequency"])
    if n_ch < 1 or n_s < 1:
        raise EmptySignalError(f"{where} has {n_ch} channels and {n_s} samples")
    if fs <= 0:
        raise EcgInputError(f"{where} has a sampling frequency of {fs} Hz")
    key = (int(got["WaveformBitsAllocated"]), str(got["WaveformSampleInterpretation"]))
    if key not in _SAMPLE_DTYPES:
        raise UnsupportedWaveformError(
            f"{where}: {key[0]}-bit {key[1]} samples are not supported")
    data = got["WaveformData"]
    dtype = np.dtype(_SAMPLE_DTYPES[key])
    need = n_ch * n_s * dtype.itemsize
    if len(data) < need:
        raise EmptySignalError(f"{where}: Waveform Data holds {len(data)} bytes, "
                               f"{need} expected for {n_ch} x {n_s} samples")
    # Samples are interleaved by channel: C1S1, C2S1, ..., CnS1, C1S2, ...
    raw = np.frombuffer(memoryview(data)[:need], dtype=dtype).reshape(n_s, n_ch).T.astype(
        np.float64)
    chans = list(item.get("ChannelDefinitionSequence") or [])
    if len(chans) != n_ch:
        raise NoWaveformError(f"{where}: {len(chans)} channel definitions for {n_ch} channels")
    leads: list[str] = []
    for c, ch in enumerate(chans):
        raw[c] = _to_mv(raw[c], ch, f"{where} channel {c + 1}")
        leads.append(_dicom_lead_name(ch, c))
    label = str(item.get("MultiplexGroupLabel", "") or "")
    return WaveformGroup(label=label, fs=fs, leads=leads, signals_mv=raw,
                         originality=str(item.get("WaveformOriginality", "") or "") or None)


def _to_mv(raw: np.ndarray, ch: Dataset, where: str) -> np.ndarray:
    """Channel samples to millivolts (PS3.3 C.10.9.1.4.3-4):
    value = sample x sensitivity x correction factor + baseline, in the sensitivity units."""
    sens_value = ch.get("ChannelSensitivity")
    if sens_value in (None, ""):
        raise UnknownUnitsError(f"{where} has no Channel Sensitivity: its samples have no units")
    units_seq = ch.get("ChannelSensitivityUnitsSequence") or []
    if not units_seq:
        raise UnknownUnitsError(f"{where} has no Channel Sensitivity Units Sequence")
    unit_item = units_seq[0]
    unit = str(unit_item.get("CodeValue", "") or "")
    try:
        scale = mv_per_unit(unit)
    except UnknownUnitsError:
        meaning = str(unit_item.get("CodeMeaning", "") or "")
        try:
            scale = mv_per_unit(meaning)
        except UnknownUnitsError:
            raise UnknownUnitsError(f"{where}: units {unit!r} ({meaning or 'no meaning'}) "
                                    "cannot be converted to millivolts") from None
    sens = float(sens_value)
    corr = float(ch.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
    base = float(ch.get("ChannelBaseline", 0.0) or 0.0)
    return (raw * sens * corr + base) * scale


def _lead_candidate(cand: str) -> str:
    # "Lead I (Einthoven)", "Lead aVR" -> drop the parenthesised eponym before matching
    return normalise_lead_name(re.sub(r"\(.*?\)", "", cand))


def _dicom_lead_name(ch: Dataset, index: int) -> str:
    src = (ch.get("ChannelSourceSequence") or [None])[0]
    # candidates in order: source code value, code meaning, channel label; each is read only
    # when the ones before it did not name a standard lead (most files stop at the code value)
    candidates: list[str] = []
    if src is not None:
        for kw in ("CodeValue", "CodeMeaning"):
            candidates.append(str(src.get(kw, "") or ""))
            if _lead_candidate(candidates[-1]) in STANDARD_LEADS:
                return _lead_candidate(candidates[-1])
    candidates.append(str(ch.get("ChannelLabel", "") or ""))
    if _lead_candidate(candidates[-1]) in STANDARD_LEADS:
        return _lead_candidate(candidates[-1])
    # not a standard lead: the channel label names it best, then the code meaning
    for cand in (candidates[-1], *candidates[1:-1], candidates[0]):
        if cand.strip():
            return cand.strip()
    return f"channel{index + 1}"


def _choose_rhythm_group(groups: list[WaveformGroup]) -> int:
    """Prefer a group labelled RHYTHM, then an ORIGINAL group, then the longest."""
    for i, g in enumerate(groups):
        if "RHYTHM" in g.label.upper():
            return i
    originals = [i for i, g in enumerate(groups) if (g.originality or "").upper() == "ORIGINAL"]
    pool = originals or list(range(len(groups)))
    return max(pool, key=lambda i: groups[i].duration_s)


def _dicom_patient(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sex = str(ds.get("PatientSex", "") or "").upper()
    if sex in ("M", "F"):
        out["sex"] = sex
    age = _parse_dicom_age(str(ds.get("PatientAge", "") or ""))
    if age is not None:
        out["age_years"] = age
    return out


def _parse_dicom_age(text: str) -> float | None:
    m = re.fullmatch(r"(\d{3})([DWMY])", text.strip())
    if not m:
        return None
    n = int(m.group(1))
    return {"D": n / 365.25, "W": n / 52.18, "M": n / 12.0, "Y": float(n)}[m.group(2)]


# --------------------------------------------------------------------------------------------
# WFDB


def load_wfdb(record_path: str | Path) -> EcgRecord:
    """Read a WFDB record (header plus ``.dat`` or ``.mat`` signal files) into millivolts."""
    import wfdb  # imported here: only WFDB input needs it

    rec_path = Path(record_path)
    try:
        rec = wfdb.rdrecord(str(rec_path))
    except FileNotFoundError as exc:
        raise EcgInputError(f"WFDB record {rec_path} is incomplete: {exc}") from exc
    except (ValueError, IndexError, KeyError) as exc:
        raise EcgInputError(f"cannot read WFDB record {rec_path}: {exc}") from exc
    if rec.p_signal is None or rec.n_sig == 0 or rec.sig_len == 0:
        raise EmptySignalError(f"WFDB record {rec_path} has no samples")
    sig = np.asarray(rec.p_signal, dtype=np.float64).T.copy()
    notes: list[str] = []
    units = list(rec.units or [""] * rec.n_sig)
    for i, unit in enumerate(units):
        sig[i] *= mv_per_unit(unit or "")
    missing = np.isnan(sig)
    if missing.any():
        # WFDB marks invalid samples as NaN; flat-fill them so filters stay finite, and say so.
        notes.append(f"{int(missing.sum())} missing samples set to 0 mV")
        sig[missing] = 0.0
    leads = [str(n) for n in (rec.sig_name or [f"channel{i + 1}" for i in range(rec.n_sig)])]
    return EcgRecord(signals_mv=sig, fs=float(rec.fs), leads=leads, source=str(rec_path),
                     original_fs=float(rec.fs), notes=notes,
                     patient=patient_from_wfdb_comments(rec.comments or []))


def patient_from_wfdb_comments(comments: list[str]) -> dict[str, Any]:
    """Age and sex from header comments: PTB writes "age: 81", "sex: female"; PhysioNet
    Challenge headers write "Age: 74" and "Sex: Male"."""
    out: dict[str, Any] = {}
    text = " ".join(comments)
    m = re.search(r"\bage\s*:\s*(\d{1,3})", text, re.I)
    if m:
        out["age_years"] = float(m.group(1))
    m = re.search(r"\bsex\s*:\s*(male|female|m|f)\b", text, re.I)
    if m:
        out["sex"] = m.group(1)[0].upper()
    return out


# --------------------------------------------------------------------------------------------
# Standardisation


def select_leads(record: EcgRecord, names: list[str]) -> EcgRecord:
    """The same record restricted to ``names`` (in that order)."""
    idx = [record.leads.index(n) for n in names]
    return EcgRecord(signals_mv=record.signals_mv[idx], fs=record.fs, leads=list(names),
                     source=record.source, group_label=record.group_label,
                     groups=list(record.groups), original_fs=record.original_fs,
                     notes=list(record.notes),
                     derived_leads=[d for d in record.derived_leads if d in names],
                     patient=dict(record.patient), instance_uid=record.instance_uid,
                     cart=record.cart)


def standardise(record: EcgRecord, target_fs: float | None = TARGET_FS,
                derive: bool = True) -> EcgRecord:
    """Standard lead names and order, derived limb leads where exact, and ``target_fs``."""
    sig = np.asarray(record.signals_mv, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] == 0 or sig.shape[1] == 0:
        raise EmptySignalError(f"{record.source}: the ECG signal is empty")
    if not np.isfinite(sig).all():
        raise EcgInputError(f"{record.source}: the ECG signal holds non-finite values")
    notes = list(record.notes)
    names: list[str] = []
    keep: list[int] = []
    for i, raw_name in enumerate(record.leads):
        name = normalise_lead_name(raw_name)
        if name == "-aVR":  # Cabrera display lead: invert back to aVR
            sig[i] = -sig[i]
            name = "aVR"
        if name in names:
            notes.append(f"duplicate lead {raw_name!r} ignored")
            continue
        if name.lower() != raw_name.strip().lower():
            notes.append(f"lead {raw_name!r} read as {name}")
        names.append(name)
        keep.append(i)
    sig = sig[keep]
    derived: list[str] = list(record.derived_leads)
    if derive:
        before = set(names)
        sig, names, derive_notes = derive_missing_leads(sig, names)
        derived += [n for n in names if n not in before]
        notes += derive_notes
    order = standard_order(names)
    sig = sig[order]
    names = [names[i] for i in order]
    fs = record.fs
    if target_fs is not None and abs(fs - target_fs) > 1e-6:
        sig = resample(sig, fs, target_fs)
        notes.append(f"resampled from {fs:g} Hz to {target_fs:g} Hz")
        fs = target_fs
    return EcgRecord(signals_mv=sig, fs=fs, leads=names, source=record.source,
                     group_label=record.group_label, groups=list(record.groups),
                     original_fs=record.original_fs or record.fs, notes=notes,
                     derived_leads=derived, patient=dict(record.patient),
                     instance_uid=record.instance_uid, cart=record.cart)


def resample(sig: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Polyphase resampling (anti-aliased) by the rational ratio ``target_fs / fs``."""
    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    if ratio.numerator == ratio.denominator:
        return sig
    return resample_poly(sig, ratio.numerator, ratio.denominator, axis=-1)
