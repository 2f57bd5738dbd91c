"""The technical engine on real files: what it measures and what it warns about."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from models.base import ContractError, EngineResult, ModelSpec, StudyInput, build
from models.technical import (
    FAMILY,
    TechnicalEngine,
    read_wfdb_header,
    slice_geometry,
)
from tests.conftest import shared_file


def shared(*parts: str) -> Path:
    return shared_file("/".join(parts))


def run(domain: str, paths: list[Path | str]) -> EngineResult:
    engine = build(ModelSpec(FAMILY, "1.0.0"))
    return engine.run(StudyInput(domain=domain, paths=[Path(p) for p in paths]))


def value(result: EngineResult, mid: str) -> float:
    found = {m.id: m.value for m in result.measurements}
    assert mid in found, f"{mid} not among {sorted(found)}"
    return found[mid]


def test_technical_family_is_registered_as_trained_builtin():
    engine = build(ModelSpec("technical", "1.0.0"))
    assert isinstance(engine, TechnicalEngine)
    assert engine.tasks == ("measure",)
    assert set(engine.domains) == {"cxr", "ct", "ecg", "pathology"}
    result = engine.run(StudyInput("ct", [get_testdata_file("CT_small.dcm")]))
    assert result.trained is True and result.model.family == "technical"


def test_technical_engine_refuses_another_familys_spec():
    with pytest.raises(ContractError):
        TechnicalEngine(ModelSpec("merl", "1", "reference"))


def test_three_contiguous_ct_slices_are_one_millimetre_apart():
    paths = sorted(shared("ct", "ct-3slice").glob("0[1-3].dcm"))
    assert len(paths) == 3
    result = run("ct", paths)
    assert value(result, "m:slice_count") == 3
    assert value(result, "m:slice_spacing") == pytest.approx(1.0, abs=1e-3)
    assert value(result, "m:slice_thickness") == pytest.approx(1.25)
    assert value(result, "m:pixel_spacing_row") == pytest.approx(0.810547)
    assert value(result, "m:rows") == 512 and value(result, "m:columns") == 512
    assert value(result, "m:scan_extent") == pytest.approx(2.0, abs=1e-3)
    assert result.warnings == []
    assert "slices are 1 mm apart" in result.raw["summary"]["technique"]
    assert all(f["measurements"] or f["acquisition"] for f in result.raw["facts"])


def test_duplicate_slices_series_warns_duplicate_gap_and_inconsistent_spacing():
    result = run("ct", sorted(shared("ct", "duplicate-slices").glob("*.dcm")))
    text = " ".join(result.warnings)
    assert "duplicated slice position" in text and "-90 mm" in text
    assert "gap of 115 mm" in text and "may be missing" in text
    assert "inconsistent slice spacing" in text
    geometry = result.raw["series"][0]["geometry"]
    assert geometry["duplicates_mm"] == [-90.0]
    assert len(geometry["gaps"]) == 3
    assert value(result, "m:slice_count") == 11


def test_oblique_mr_spacing_is_measured_along_the_slice_normal():
    result = run("ct", sorted(shared("mr", "prostate-adc").glob("*.dcm")))
    assert value(result, "m:slice_count") == 20
    # positions step about 2.95 mm in z but 3 mm along the tilted normal
    assert value(result, "m:slice_spacing") == pytest.approx(3.0, abs=0.01)
    assert value(result, "m:slice_thickness") == 3.0
    assert not [w for w in result.warnings if "gap" in w or "duplicate" in w]


def test_dx_without_a_view_reports_matrix_spacing_and_warns():
    result = run("cxr", [shared("cxr", "dx_image.dcm")])
    assert value(result, "m:rows") == 169 and value(result, "m:columns") == 211
    assert value(result, "m:pixel_spacing_row") == pytest.approx(1.2)
    assert any("no ViewPosition" in w for w in result.warnings)
    assert "Body part examined: THORAX." in result.raw["summary"]["technique"]


def test_whole_slide_image_size_and_resolution():
    result = run("pathology", [shared("pathology", "sm_image.dcm")])
    assert value(result, "m:slide_width_px") == 50 and value(result, "m:slide_height_px") == 50
    assert value(result, "m:slide_width_mm") == pytest.approx(0.02495, rel=1e-3)
    assert value(result, "m:microns_per_pixel") == pytest.approx(0.499, rel=1e-3)
    assert value(result, "m:frame_count") == 25
    assert value(result, "m:optical_path_count") == 1
    assert "Brightfield illumination" in result.raw["summary"]["technique"]


def test_ct_small_single_slice_has_no_spacing():
    result = run("ct", [get_testdata_file("CT_small.dcm")])
    assert value(result, "m:slice_count") == 1
    assert value(result, "m:slice_thickness") == 5.0
    assert value(result, "m:pixel_spacing_column") == pytest.approx(0.661468)
    assert "m:slice_spacing" not in {m.id for m in result.measurements}


def test_twelve_lead_ecg_leads_rate_and_duration():
    result = run("ecg", [get_testdata_file("waveform_ecg.dcm")])
    assert value(result, "m:ecg_lead_count") == 12
    assert value(result, "m:sampling_frequency") == 1000
    assert value(result, "m:ecg_duration") == pytest.approx(10.0)
    ecg = result.raw["series"][0]["ecg"][0]
    assert ecg["groups"][ecg["primary_group"]]["leads"][:3] == ["I", "II", "III"]
    assert ecg["flat_leads"] == []
    assert result.warnings == []


def _edited_ecg(tmp_path: Path, keep: int | None = None, zero: int | None = None) -> Path:
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    group = ds.WaveformSequence[0]
    n_ch, n_s = group.NumberOfWaveformChannels, group.NumberOfWaveformSamples
    samples = np.frombuffer(group.WaveformData, dtype="<i2").reshape(n_s, n_ch).copy()
    if zero is not None:
        samples[:, zero] = 0
    if keep is not None:
        samples = np.ascontiguousarray(samples[:, :keep])
        group.NumberOfWaveformChannels = keep
        group.ChannelDefinitionSequence = group.ChannelDefinitionSequence[:keep]
    group.WaveformData = samples.tobytes()
    out = tmp_path / "edited_ecg.dcm"
    ds.save_as(out)
    return out


def test_flat_lead_is_named(tmp_path):
    result = run("ecg", [_edited_ecg(tmp_path, zero=8)])  # channel 9 is V3
    assert any("Flat lead" in w and "V3" in w for w in result.warnings)
    assert result.raw["series"][0]["ecg"][0]["flat_leads"] == ["V3"]


def test_twelve_lead_object_with_ten_leads_names_the_missing(tmp_path):
    result = run("ecg", [_edited_ecg(tmp_path, keep=10)])
    assert value(result, "m:ecg_lead_count") == 10
    assert any("only 10 leads" in w and "V5, V6" in w for w in result.warnings)


@pytest.mark.parametrize("reader", ["header text", "wfdb"])
def test_wfdb_header_is_read(reader, monkeypatch):
    if reader == "header text":
        monkeypatch.setitem(sys.modules, "wfdb", None)  # as on a machine without wfdb
    else:
        pytest.importorskip("wfdb")
    header = read_wfdb_header(shared("ecg", "wfdb", "s0010_re.hea"))
    assert header["reader"] == reader
    assert header["n_sig"] == 15 and header["fs"] == 1000 and header["sig_len"] == 38400
    assert header["sig_name"][:3] == ["i", "ii", "iii"]


def test_wfdb_record_reports_leads_rate_and_duration():
    result = run("ecg", [shared("ecg", "wfdb", "100.hea")])
    assert value(result, "m:ecg_lead_count") == 2
    assert value(result, "m:sampling_frequency") == 360
    assert value(result, "m:ecg_duration") == pytest.approx(650000 / 360)
    assert "MLII, V5" in result.raw["summary"]["technique"]
    assert result.warnings == []


def test_unreadable_file_is_a_warning_not_a_crash(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    result = run("ct", [junk, get_testdata_file("CT_small.dcm")])
    assert result.raw["unreadable"][0]["path"] == str(junk)
    assert any("notes.txt could not be read" in w for w in result.warnings)
    assert value(result, "m:slice_count") == 1


def test_study_without_the_routed_domains_objects_is_flagged():
    result = run("ecg", [get_testdata_file("CT_small.dcm")])
    assert any("routed as ecg but holds no ECG waveform" in w for w in result.warnings)


def test_slice_geometry_flags_mixed_orientations_and_keeps_main_plane():
    axial = [1, 0, 0, 0, 1, 0]
    sagittal = [0, 1, 0, 0, 0, -1]
    planes = [([0, 0, z], axial) for z in (0.0, 2.0, 4.0, 6.0)] + [([5, 0, 0], sagittal)]
    g = slice_geometry(planes)
    assert g["orientations"] == 2 and g["off_plane_slices"] == 1
    assert g["plane"] == "axial" and g["spacing_mm"] == 2.0
    assert g["gaps"] == [] and g["duplicates_mm"] == [] and g["inconsistent"] is False


def test_slice_geometry_finds_a_missing_slice():
    axial = [1, 0, 0, 0, 1, 0]
    g = slice_geometry([([0, 0, z], axial) for z in (0.0, 1.0, 2.0, 4.0, 5.0)])
    assert g["spacing_mm"] == 1.0
    assert g["gaps"] == [{"from_mm": 2.0, "to_mm": 4.0, "gap_mm": 2.0, "missing_estimate": 1}]
