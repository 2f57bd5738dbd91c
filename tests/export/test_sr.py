"""Report versions as TID 1500 Comprehensive 3D SRs (app.export.sr), on real source files:
the DX radiograph and the 3-slice CT of ../shared/data, and pydicom's 12-lead ECG waveform.
Every SR is checked with dciodvfy (no "Error" line) and read back with highdicom."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.export.document import (
    FindingItem,
    MeasurementItem,
    Person,
    RegionItem,
    ReportDocument,
    SourceInstance,
)
from app.export.sr import SRError, build_sr, device_uid, person_name, sr_summary
from tests.conftest import dciodvfy, shared_file

# app.dicom.seg.build_segmentation copies the CT's Patient's Name "JANCT000", which highdicom
# warns about
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*unlikely to represent the intended person name:UserWarning")

CXR_MODEL = "cxr-densenet@1.2.0"
CT_MODEL = "ct-lesion@0.3.1"
LIVER_MODEL = "ct-liver@2.0.0"
ECG_MODEL = "ecg-resnet@1.0.0"
SIGNER = Person("Dr Jane Doe", "GMC1234567")
SIGNED_AT = datetime(2024, 5, 2, 11, 0, tzinfo=UTC)
SECTIONS = {"technique": "PA chest radiograph.", "findings": "Left pleural effusion.",
            "impression": "Small left effusion."}


def _source(path: Path) -> tuple[SourceInstance, pydicom.Dataset]:
    h = pydicom.dcmread(path, stop_before_pixels=True)
    return SourceInstance(str(h.SOPClassUID), str(h.SOPInstanceUID), str(h.SeriesInstanceUID),
                          path), h


def _code(scheme: str, value: str, meaning: str) -> dict[str, str]:
    return {"scheme": scheme, "value": value, "meaning": meaning}


def _finding(code, label, state="present", evidence=(), where=None, model=CXR_MODEL):
    return FindingItem(code=code, label=label, state=state, evidence=tuple(evidence),
                       knowledge=(), where=where or {}, criteria="", model=model)


def _measurement(id_, name, value, unit, code=None, where=None, model=CXR_MODEL):
    return MeasurementItem(id=id_, name=name, value=value, unit=unit, code=code,
                           where=where or {}, model=model)


def _checked(ds: pydicom.Dataset, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """Write the SR, run dciodvfy on it, fail on any Error line; returns its lines."""
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    lines = dciodvfy(path)
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(lines)
    return path, lines


def _items(seq):
    for item in seq:
        yield item
        yield from _items(item.get("ContentSequence") or [])


def _named(ds, value: str, value_type: str | None = None):
    out = []
    for item in _items(ds.ContentSequence):
        code = item.ConceptNameCodeSequence[0]
        if (code.get("CodeValue") or code.get("LongCodeValue")) == value and \
                (value_type is None or item.ValueType == value_type):
            out.append(item)
    return out


# --- CXR draft ----------------------------------------------------------------------------------


@pytest.fixture
def cxr():
    src, header = _source(shared_file("cxr/dx_image.dcm"))
    uid = str(header.SOPInstanceUID)
    doc = ReportDocument(
        report_id=11, version=1, state="draft", domain="cxr",
        study_uid=str(header.StudyInstanceUID), accession_number="ACC-11", sections=SECTIONS,
        created_at=datetime(2024, 5, 1, 10, 0), sources=(src,), models=(CXR_MODEL,),
        findings=(
            _finding(_code("SCT", "60046008", "Pleural effusion"), "Pleural effusion",
                     evidence=("r1",), where={"instance_uid": uid}),
            _finding(_code("SCT", "233604007", "Pneumonia"), "Pneumonia", state="absent"),
            _finding(_code("SCT", "56265001", "Heart disease"), "Cardiomegaly",
                     state="uncertain", where={"instance_uid": uid})),
        measurements=(
            _measurement("ctr", "Cardiothoracic ratio", 0.48, "1",
                         where={"instance_uid": uid}),
            _measurement("width", "Effusion width", 21.5, "mm", where={"region_id": "r1"})),
        regions=(RegionItem("r1", "box", uid, None, box=(10.0, 20.0, 50.0, 40.0),
                            label="effusion", model=CXR_MODEL),),
        author=Person("MedGate"))
    return doc, header


def test_cxr_draft_is_partial_unverified_with_findings_region_and_measurements(cxr, tmp_path):
    doc, header = cxr
    sr = build_sr(doc)
    path, _ = _checked(sr, tmp_path, "cxr")

    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == \
        ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in sr
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.PatientID == header.PatientID and sr.AccessionNumber == "ACC-11"
    assert (str(sr.ContentDate), str(sr.ContentTime)) == ("20240501", "100000")

    for summary in (sr_summary(sr), sr_summary(path), sr_summary(pydicom.dcmread(path))):
        assert sorted(summary["findings"]) == sorted([
            ("60046008", "present"), ("233604007", "absent"), ("56265001", "uncertain")])
        assert sorted(summary["measurements"]) == sorted([
            ("Cardiothoracic ratio", 0.48, "1"), ("Effusion width", 21.5, "mm")])
        assert (summary["completion"], summary["verification"]) == ("PARTIAL", "UNVERIFIED")
        assert summary["observer_person"] is None and summary["verifying_observer"] is None
        assert summary["device_observers"] == [{
            "uid": device_uid(CXR_MODEL), "name": "MedGate cxr-densenet",
            "manufacturer": "MedGate", "model_name": "1.2.0"}]
        assert summary["texts"] == SECTIONS
        assert summary["procedure"] == ["399208008"]
        assert summary["predecessor"] is None

    # the box is a closed POLYLINE on the DX instance, in the group of the effusion finding
    (region,) = _named(sr, "111030", "SCOORD")
    assert region.GraphicType == "POLYLINE"
    assert [float(v) for v in region.GraphicData] == [10, 20, 60, 20, 60, 60, 10, 60, 10, 20]
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        header.SOPInstanceUID
    planar = sr_read_groups(sr)["planar"]
    assert len(planar) == 1
    assert [e.name.value for e in planar[0].get_qualitative_evaluations()] == ["60046008"]
    assert [m.name.meaning for m in planar[0].get_measurements()] == ["Effusion width"]
    # the instance measurement names its source image
    (ctr,) = _named(sr, "cardiothoracic-ratio", "NUM")
    refs = [c for c in ctr.ContentSequence if c.ValueType == "IMAGE"]
    assert [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in refs] == \
        [header.SOPInstanceUID]
    # the measurement without a standard code is declared private
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDGATE"
    # report text in TID 1500's Qualitative Evaluations container
    (container,) = _named(sr, "C0034375", "CONTAINER")
    assert [c.TextValue for c in container.ContentSequence] == list(SECTIONS.values())


def sr_read_groups(sr):
    import highdicom as hd

    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    return {"planar": report.get_planar_roi_measurement_groups(),
            "volumetric": report.get_volumetric_roi_measurement_groups(),
            "image": report.get_image_measurement_groups()}


def test_uids_new_per_build_but_stable_per_report(cxr):
    doc, _ = cxr
    series = pydicom.uid.generate_uid()
    a = build_sr(doc, series_uid=series, instance_number=1)
    b = build_sr(replace(doc, version=2, state="edited"), series_uid=series, instance_number=2)
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == series
    assert (a.InstanceNumber, b.InstanceNumber) == (1, 2)
    tracking = [[i.UID for i in _named(ds, "112040", "UIDREF")] for ds in (a, b)]
    assert tracking[0] == tracking[1] and len(set(tracking[0])) == len(tracking[0]) == 4
    assert device_uid(CXR_MODEL) == device_uid(CXR_MODEL) != device_uid("cxr-densenet@1.2.1")
    assert build_sr(doc).SeriesInstanceUID != build_sr(doc).SeriesInstanceUID


def test_passed_sources_are_used_and_pixels_ignored(cxr, tmp_path):
    doc, header = cxr
    full = pydicom.dcmread(shared_file("cxr/dx_image.dcm"))
    sr = build_sr(replace(doc, sources=()), [full])
    _checked(sr, tmp_path, "cxr-passed")
    assert "PixelData" not in sr
    assert sr_summary(sr)["findings"]


# --- CT final, slice ranges and SEG references --------------------------------------------------


@pytest.fixture
def ct():
    paths = [shared_file(f"ct/ct-3slice/0{i}.dcm") for i in (1, 2, 3)]
    pairs = [_source(p) for p in paths]
    headers = [h for _, h in pairs]
    from app.dicom.seg import SegmentMask, build_segmentation

    middle = pydicom.dcmread(paths[1])
    mask = np.zeros((middle.Rows, middle.Columns), np.uint8)
    mask[200:260, 220:300] = 1
    seg = build_segmentation(middle, [SegmentMask("lesion", mask)], family="ct-lesion",
                             version="0.3.1")
    liver = pydicom.dcmread(shared_file("ct/ct-3slice/liver_seg.dcm"), stop_before_pixels=True)
    series = str(headers[0].SeriesInstanceUID)
    volume = _code("SCT", "118565006", "Volume")
    doc = ReportDocument(
        report_id=21, version=2, state="final", domain="ct",
        study_uid=str(headers[0].StudyInstanceUID), accession_number="",
        sections={"technique": "CT abdomen, 3 slices.", "findings": "Liver lesion.",
                  "impression": "Lesion in segment VIII.", "comparison": "None available."},
        created_at=datetime(2024, 5, 2, 9, 30), sources=tuple(s for s, _ in pairs),
        models=(CT_MODEL, LIVER_MODEL),
        findings=(_finding(_code("SCT", "300332007", "Mass of liver"), "Liver mass",
                           evidence=("lesion",), model=CT_MODEL),),
        measurements=(
            _measurement("vol", "Lesion volume", 4.2, "mL", volume,
                         {"series_uid": series, "slices": [0, 2]}, CT_MODEL),
            _measurement("diam", "Lesion diameter", 12.5, "mm",
                         _code("SCT", "81827009", "Diameter"),
                         {"series_uid": series, "slices": [1, 1]}, CT_MODEL),
            _measurement("hu", "Lesion mean density", 48.0, "[hnsf'U]", None,
                         {"region_id": "lesion"}, CT_MODEL),
            _measurement("liver", "Liver volume", 1500.0, "mL", volume,
                         {"region_id": "liver"}, LIVER_MODEL)),
        regions=(
            RegionItem("lesion", "mask", str(headers[1].SOPInstanceUID), None, label="lesion",
                       seg={"sop_instance_uid": str(seg.SOPInstanceUID),
                            "series_uid": str(seg.SeriesInstanceUID)}, model=CT_MODEL),
            RegionItem("liver", "mask3d", None, None, label="Liver",
                       seg={"sop_instance_uid": str(liver.SOPInstanceUID),
                            "series_uid": str(liver.SeriesInstanceUID)}, model=LIVER_MODEL)),
        signed_by=SIGNER, signed_at=SIGNED_AT)
    return doc, headers, seg, liver


def test_ct_final_is_complete_verified_with_slices_and_segments(ct, tmp_path):
    doc, headers, seg, liver = ct
    sr = build_sr(doc)
    path, _ = _checked(sr, tmp_path, "ct")

    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == \
        ("COMPLETE", "VERIFIED", "FINAL")
    (verifier,) = sr.VerifyingObserverSequence
    assert str(verifier.VerifyingObserverName) == "Doe^Jane^^Dr"
    assert verifier.VerifyingOrganization == "MedGate"
    assert verifier.VerificationDateTime == "20240502110000+0000"

    summary = sr_summary(path)
    assert summary["findings"] == [("300332007", "present")]
    assert sorted(summary["measurements"]) == sorted([
        ("Volume", 4.2, "mL"), ("Diameter", 12.5, "mm"), ("Lesion mean density", 48.0,
                                                           "[hnsf'U]"),
        ("Volume", 1500.0, "mL")])
    assert (summary["completion"], summary["verification"]) == ("COMPLETE", "VERIFIED")
    assert summary["observer_person"] == summary["verifying_observer"] == "Doe^Jane^^Dr"
    assert [d["name"] for d in summary["device_observers"]] == \
        ["MedGate ct-lesion", "MedGate ct-liver"]
    assert summary["texts"]["comparison"] == "None available."
    assert summary["procedure"] == ["25045-6"]
    (ident,) = _named(sr, "128775", "TEXT")
    assert ident.TextValue == "GMC1234567"

    # slices 0..2 in increasing position along the normal: 03.dcm (z -128.69) first
    by_z = sorted(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    nums = {i.ConceptNameCodeSequence[0].CodeMeaning + str(i.MeasuredValueSequence[0]
                                                          .NumericValue): i
            for i in _items(sr.ContentSequence) if i.ValueType == "NUM"}
    refs = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for c in nums["Volume4.2"].ContentSequence if c.ValueType == "IMAGE"]
    assert refs == [h.SOPInstanceUID for h in by_z]
    refs = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            for c in nums["Diameter12.5"].ContentSequence if c.ValueType == "IMAGE"]
    assert refs == [by_z[1].SOPInstanceUID]

    # the mask's SEG frame (no segment number beside the frame, PS3.3 C.10.5) on slice 02
    (frame_ref,) = _named(sr, "121214", "IMAGE")
    ref = frame_ref.ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedFrameNumber) == (seg.SOPInstanceUID, 1)
    assert "ReferencedSegmentNumber" not in ref
    # the liver volume's segment, over the three slices
    (segment_ref,) = _named(sr, "121191", "IMAGE")
    ref = segment_ref.ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPInstanceUID, ref.ReferencedSegmentNumber) == \
        (liver.SOPInstanceUID, 1)
    groups = sr_read_groups(sr)
    assert len(groups["planar"]) == 1 and len(groups["volumetric"]) == 1
    assert [m.value for m in groups["volumetric"][0].get_measurements()] == [1500.0]
    # the SEGs are listed as evidence with the CT slices
    evidence = {inst.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for inst in series.ReferencedSOPSequence}
    assert evidence == {h.SOPInstanceUID for h in headers} | {seg.SOPInstanceUID,
                                                              liver.SOPInstanceUID}
    # MedGate and each model as processing equipment
    equipment = [(e.Manufacturer, e.get("ManufacturerModelName"),
                  e.PurposeOfReferenceCodeSequence[0].CodeValue)
                 for e in sr.ContributingEquipmentSequence]
    assert ("MedGate", "MedGate", "109102") in equipment
    assert ("MedGate", "ct-lesion", "109102") in equipment
    assert ("MedGate", "ct-liver", "109102") in equipment


def test_amended_version_references_its_predecessor(ct, tmp_path):
    doc, *_ = ct
    first = build_sr(doc)
    amended = replace(doc, version=3, state="amended", reason="Lesion size corrected.",
                      sections={**doc.sections, "impression": "Lesion 14 mm in segment VIII."},
                      predecessor={"study_uid": str(first.StudyInstanceUID),
                                   "series_uid": str(first.SeriesInstanceUID),
                                   "sop_instance_uid": str(first.SOPInstanceUID),
                                   "sop_class_uid": str(first.SOPClassUID)})
    sr = build_sr(amended, series_uid=str(first.SeriesInstanceUID), instance_number=2)
    _checked(sr, tmp_path, "ct-amended")
    (study,) = sr.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (inst,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID, inst.ReferencedSOPInstanceUID,
            inst.ReferencedSOPClassUID) == (first.StudyInstanceUID, first.SeriesInstanceUID,
                                            first.SOPInstanceUID, first.SOPClassUID)
    summary = sr_summary(sr)
    assert summary["predecessor"] == first.SOPInstanceUID
    assert (summary["completion"], summary["verification"]) == ("COMPLETE", "VERIFIED")
    assert summary["texts"]["reason"] == "Lesion size corrected."
    assert summary["texts"]["impression"] == "Lesion 14 mm in segment VIII."
    assert summary["observer_person"] == "Doe^Jane^^Dr"
    corrected = build_sr(replace(amended, state="corrected"))
    assert sr_summary(corrected)["predecessor"] == first.SOPInstanceUID


# --- ECG: leads and time ranges on a waveform ---------------------------------------------------


@pytest.fixture
def ecg():
    from pydicom.data import get_testdata_file

    src, header = _source(Path(get_testdata_file("waveform_ecg.dcm")))
    doc = ReportDocument(
        report_id=31, version=1, state="edited", domain="ecg",
        study_uid=str(header.StudyInstanceUID), accession_number="ECG-31",
        sections={"findings": "Sinus rhythm, QRS 96 ms.", "impression": "Normal ECG."},
        created_at=datetime(2024, 5, 3, 8, 0), sources=(src,), models=(ECG_MODEL,),
        findings=(_finding(_code("SCT", "426783006", "Sinus rhythm"), "Sinus rhythm",
                           model=ECG_MODEL),),
        measurements=(
            _measurement("hr", "Heart rate", 72.0, "/min", _code("LN", "8867-4", "Heart rate"),
                         {}, ECG_MODEL),
            _measurement("qrs", "QRS duration", 96.0, "ms",
                         _code("LN", "8633-0", "QRS duration"),
                         {"lead": "II", "start_s": 1.2, "end_s": 1.296}, ECG_MODEL),
            _measurement("ramp", "R wave amplitude in lead II", 1.1, "mV", None,
                         {"lead": "II"}, ECG_MODEL),
            _measurement("pt", "Peak time", 0.5, "s", None, {"lead": "XYZ", "start_s": 2.0},
                         ECG_MODEL)),
        author=Person("Dr A Editor"))
    return doc, header


def test_ecg_lead_measurements_reference_the_waveform(ecg, tmp_path):
    doc, header = ecg
    sr = build_sr(doc)
    _, lines = _checked(sr, tmp_path, "ecg")

    summary = sr_summary(sr)
    assert summary["findings"] == [("426783006", "present")]
    assert sorted(summary["measurements"]) == sorted([
        ("Heart rate", 72.0, "/min"), ("QRS duration", 96.0, "ms"),
        ("R wave amplitude in lead II", 1.1, "mV"), ("Peak time", 0.5, "s")])
    assert (summary["completion"], summary["verification"]) == ("PARTIAL", "UNVERIFIED")
    assert summary["procedure"] == ["29303009"]

    nums = {i.ConceptNameCodeSequence[0].CodeMeaning: i
            for i in _items(sr.ContentSequence) if i.ValueType == "NUM"}
    # heart rate: the whole waveform
    (wave,) = [c for c in nums["Heart rate"].ContentSequence if c.ValueType == "WAVEFORM"]
    assert wave.RelationshipType == "INFERRED FROM"
    assert wave.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    # QRS: lead II (the waveform's own channel code) and a time segment selected from channel 2
    qrs = nums["QRS duration"].ContentSequence
    (lead,) = [c for c in qrs if c.ValueType == "CODE"]
    assert lead.ConceptNameCodeSequence[0].CodeValue == "122148"
    code = lead.ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodingSchemeVersion) == \
        ("5.6.3-9-2", "SCPECG", "1.3")
    (tcoord,) = [c for c in qrs if c.ValueType == "TCOORD"]
    assert tcoord.TemporalRangeType == "SEGMENT"
    assert [float(v) for v in tcoord.ReferencedTimeOffsets] == [1.2, 1.296]
    (selected,) = tcoord.ContentSequence
    assert (selected.ValueType, selected.RelationshipType) == ("WAVEFORM", "SELECTED FROM")
    assert list(selected.ReferencedSOPSequence[0].ReferencedWaveformChannels) == [1, 2]
    # a lead the waveform does not name: TEXT Lead ID, a time point on the whole waveform
    peak = nums["Peak time"].ContentSequence
    (text,) = [c for c in peak if c.ValueType == "TEXT" and
               c.ConceptNameCodeSequence[0].CodeValue == "122148"]
    assert text.TextValue == "XYZ"
    (point,) = [c for c in peak if c.ValueType == "TCOORD"]
    assert point.TemporalRangeType == "POINT"
    assert "ReferencedWaveformChannels" not in point.ContentSequence[0].ReferencedSOPSequence[0]


# --- text, names, refusals ----------------------------------------------------------------------


def test_non_ascii_text_is_written_as_utf8(cxr, tmp_path):
    doc, _ = cxr
    sections = {"findings": "Épanchement pleural gauche — modéré.", "impression": "积液"}
    signed = replace(doc, state="final", sections=sections, signed_by=Person("Dr Zoë Müller"),
                     signed_at=SIGNED_AT)
    sr = build_sr(signed)
    path, _ = _checked(sr, tmp_path, "utf8")
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    summary = sr_summary(path)
    assert summary["texts"] == sections
    assert summary["verifying_observer"] == summary["observer_person"] == "Müller^Zoë^^Dr"


@pytest.mark.parametrize(("text", "pn"), [
    ("Dr Jane Doe", "Doe^Jane^^Dr"),
    ("Jane Mary Doe", "Doe^Jane^Mary"),
    ("Prof. John A. Smith", "Smith^John^A.^Prof"),
    ("Doe, Jane", "Doe^Jane"),
    ("Radiologist", "Radiologist^"),
    ("Dr Who", "Who^^^Dr"),
    ("Jane^Doe", "Doe^Jane"),
])
def test_person_name(text, pn):
    assert person_name(text) == pn


@pytest.mark.parametrize("state", ["pending", "cancelled", "entered_in_error"])
def test_states_without_an_sr_are_refused(cxr, state):
    doc, _ = cxr
    with pytest.raises(SRError, match=f"nothing to export for a {state} report"):
        build_sr(replace(doc, state=state))


def test_refusals_name_the_problem(cxr, ct):
    doc, header = cxr
    with pytest.raises(SRError, match="needs its signer"):
        build_sr(replace(doc, state="final"))
    with pytest.raises(SRError, match="not 'family@version'"):
        build_sr(replace(doc, models=("cxr-densenet",)))
    bad = _measurement("x", "X", 1.0, "mm", where={"instance_uid": "1.2.3.4"})
    with pytest.raises(SRError, match="names instance 1.2.3.4, which is not among"):
        build_sr(replace(doc, measurements=(bad,)))
    bad = _measurement("x", "X", 1.0, "mm", where={"region_id": "nowhere"})
    with pytest.raises(SRError, match="names region 'nowhere'"):
        build_sr(replace(doc, measurements=(bad,)))
    with pytest.raises(SRError, match="belongs to the report's study"):
        build_sr(replace(doc, study_uid="1.2.3"))
    ct_doc, headers, *_ = ct
    bad = _measurement("x", "X", 1.0, "mm",
                       where={"series_uid": str(headers[0].SeriesInstanceUID),
                              "slices": [1, 5]}, model=CT_MODEL)
    with pytest.raises(SRError, match="beyond the series' 3 slices"):
        build_sr(replace(ct_doc, measurements=(bad,)))
    missing = replace(doc.sources[0], path=Path("/nonexistent/x.dcm"))
    with pytest.raises(SRError, match="cannot be read"):
        build_sr(replace(doc, sources=(missing,)))


def test_text_only_report_still_makes_a_valid_sr(cxr, tmp_path):
    doc, _ = cxr
    sr = build_sr(replace(doc, findings=(), measurements=(), regions=(), models=()))
    _checked(sr, tmp_path, "text-only")
    summary = sr_summary(sr)
    assert summary["findings"] == [] and summary["measurements"] == []
    assert summary["device_observers"] == []
    assert summary["texts"] == SECTIONS


def test_enhanced_ct_slices_are_frames_in_position_order(tmp_path):
    import highdicom as hd

    slices = [pydicom.dcmread(shared_file(f"ct/ct-3slice/0{i}.dcm")) for i in (1, 2, 3)]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    src, header = _source(path)
    series = str(header.SeriesInstanceUID)
    doc = ReportDocument(
        report_id=41, version=1, state="draft", domain="ct",
        study_uid=str(header.StudyInstanceUID), accession_number="", sections={"findings": "x"},
        created_at=datetime(2024, 6, 1, 12, 0), sources=(src,), models=(CT_MODEL,),
        measurements=(
            _measurement("a", "A", 1.0, "mm", where={"series_uid": series, "slices": [0, 1]},
                         model=CT_MODEL),
            _measurement("b", "B", 2.0, "mm", where={"slice_index": 2}, model=CT_MODEL),
            _measurement("c", "C", 3.0, "mm", model=CT_MODEL,
                         where={"instance_uid": str(header.SOPInstanceUID), "frame": 2})),
        regions=(RegionItem("r", "box", str(header.SOPInstanceUID), 1, box=(1, 1, 4, 4),
                            label="box", model=CT_MODEL),))
    sr = build_sr(doc)
    _checked(sr, tmp_path, "enhanced-sr")
    # frames 1..3 lie at z -126.69, -127.69, -128.69: increasing position is frames 3, 2, 1
    frames = {i.ConceptNameCodeSequence[0].CodeMeaning:
              [int(c.ReferencedSOPSequence[0].ReferencedFrameNumber)
               for c in i.ContentSequence if c.ValueType == "IMAGE"]
              for i in _items(sr.ContentSequence) if i.ValueType == "NUM"}
    assert frames == {"A": [3, 2], "B": [1], "C": [2]}
    (region,) = _named(sr, "111030", "SCOORD")
    assert region.PixelOriginInterpretation == "FRAME"
    assert int(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedFrameNumber) == 1
    bad = _measurement("d", "D", 1.0, "mm", model=CT_MODEL,
                       where={"instance_uid": str(header.SOPInstanceUID), "frame": 4})
    with pytest.raises(SRError, match="frame 4 is outside the instance's frames 1..3"):
        build_sr(replace(doc, measurements=(bad,)))


def test_slide_regions_and_specimen_subject(tmp_path):
    src, header = _source(shared_file("pathology/sm_image.dcm"))
    model = "path-tumour@0.9.0"
    uid = str(header.SOPInstanceUID)
    doc = ReportDocument(
        report_id=51, version=1, state="draft", domain="pathology",
        study_uid=str(header.StudyInstanceUID), accession_number="",
        sections={"findings": "Tumour region."}, created_at=datetime(2024, 6, 1, 12, 0),
        sources=(src,), models=(model,),
        findings=(_finding(_code("SCT", "108369006", "Neoplasm"), "Tumour", state="uncertain",
                           evidence=("t1",), model=model),),
        regions=(RegionItem("t1", "slide", uid, None, polygon=((5, 5), (20, 6), (12, 18)),
                            label="tumour", model=model),
                 RegionItem("t2", "box", uid, 3, box=(1, 1, 4, 4), label="tile", model=model)))
    sr = build_sr(doc)
    _checked(sr, tmp_path, "slide")
    assert sr_summary(sr)["findings"] == [("108369006", "uncertain")]
    assert sr_summary(sr)["procedure"] == ["104157003"]
    specimen = _named(sr, "121024", "CODE")  # Subject Class
    assert specimen and specimen[0].ConceptCodeSequence[0].CodeValue == "121027"
    whole, tile = _named(sr, "111030", "SCOORD")
    assert whole.PixelOriginInterpretation == "VOLUME"
    assert [float(v) for v in whole.GraphicData] == [5, 5, 20, 6, 12, 18, 5, 5]
    assert tile.PixelOriginInterpretation == "FRAME"
