"""The model contract refuses what SR, SEG, FHIR and a viewer could not use: codes without a
scheme, units that are not UCUM, regions that name no source instance, masks of the wrong shape,
prompts that point nowhere; and a study input keeps its series."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from models.base import (
    Code,
    ContractError,
    EngineResult,
    Finding,
    GeneratedSentence,
    Measurement,
    ModelInfo,
    Prompt,
    Region,
    Statement,
    StudyInput,
    TextSection,
    Where,
)
from models.masks import check_mask, read_mask, write_mask


def test_codes_carry_scheme_value_and_meaning():
    assert Code.parse("LOINC:8867-4", "Heart rate") == Code("LN", "8867-4", "Heart rate")
    assert Code.parse("SNOMED:60046008", "Pleural effusion").key == "SCT:60046008"
    assert Code.parse("RadLex:RID5352", "Nodule").scheme == "RADLEX"
    own = Finding("ecg-sinus-rhythm", "Sinus rhythm").code
    assert (own.scheme, own.value, own.meaning) == ("99MEDGATE", "ecg-sinus-rhythm",
                                                    "Sinus rhythm")
    assert Measurement("heart_rate", 60, "/min", "LOINC:8867-4").code.to_dict() == {
        "scheme": "LN", "value": "8867-4", "meaning": "heart rate"}
    with pytest.raises(ContractError, match="coding scheme 'ICD99'"):
        Code("ICD99", "x", "y")
    with pytest.raises(ContractError, match="needs a meaning"):
        Code("SCT", "1", "")
    assert Code.from_dict(own.to_dict()) == own


def test_measurement_units_are_ucum():
    for unit in ("ms", "/min", "mV.ms", "mm2", "{ratio}", "[hnsf'U]", "1"):
        Measurement("x", 1.0, unit)
    with pytest.raises(ContractError, match="not a UCUM expression"):
        Measurement("heart_rate", 60, "beats per minute")
    where = Where(series_uid="1.2", slices=(3, 7)).to_dict()
    assert where == {"series_uid": "1.2", "slices": [3, 7]}
    with pytest.raises(ContractError, match="slice range"):
        Where(slices=(5, 2))


def test_regions_name_their_instances(tmp_path):
    box = Region("r1", box=(1, 2, 3, 4), instance_uid="1.2.3", frame=1)
    assert (box.kind, box.instances) == ("box", ("1.2.3",))
    poly = Region("r2", polygon=[(0, 0), (4, 0), (4, 4)], instance_uid="1.2.3")
    assert poly.kind == "polygon" and poly.to_dict()["polygon"][1] == [4.0, 0.0]
    with pytest.raises(ContractError, match="must name its source instance"):
        Region("r3", box=(1, 2, 3, 4))
    with pytest.raises(ContractError, match="at least 3"):
        Region("r4", polygon=[(0, 0), (1, 1)], instance_uid="1.2.3")

    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 2:5] = 1
    path = write_mask(tmp_path, "lesion", labels)
    mask = Region("m1", mask_path=str(path), shape=(4, 6), instance_uid="1.2.3",
                  labels={1: "lesion"})
    assert mask.kind == "mask" and np.array_equal(check_mask(mask), labels)
    assert not list(tmp_path.glob(".mask-*"))  # written atomically
    wrong = Region("m2", mask_path=str(path), shape=(6, 4), instance_uid="1.2.3")
    with pytest.raises(ContractError, match=r"mask is \[4, 6\], the region says \[6, 4\]"):
        check_mask(wrong)

    volume = np.zeros((3, 4, 4), np.uint8)
    volume[1, 1:3, 1:3] = 2
    vpath = write_mask(tmp_path, "organ", volume, fmt="npz")
    vol = Region("v1", kind="mask3d", mask_path=str(vpath), shape=(3, 4, 4),
                 series_uid="1.2", slice_uids=("1.2.1", "1.2.2", "1.2.3"))
    assert vol.instances == ("1.2.1", "1.2.2", "1.2.3")
    assert np.array_equal(read_mask(vpath), volume)
    with pytest.raises(ContractError, match="2 slice UIDs for 3 mask planes"):
        Region("v2", kind="mask3d", mask_path=str(vpath), shape=(3, 4, 4), series_uid="1.2",
               slice_uids=("1.2.1", "1.2.2"))
    with pytest.raises(ContractError, match="labels must be integers 0..255"):
        write_mask(tmp_path, "bad", np.full((2, 2), 300))

    slide = Region("s1", kind="slide", box=(100, 200, 50, 50), units="um",
                   instance_uid="1.2.9")
    assert slide.to_dict()["units"] == "um"
    with pytest.raises(ContractError, match="need the pyramid level"):
        Region("s2", kind="slide", box=(1, 1, 1, 1), units="level", instance_uid="1.2.9")


def test_prompts_point_at_one_place_on_a_named_instance():
    p = Prompt("What is this?", "en", instance_uid="1.2.3", frame=1, point=(10, 20))
    assert p.to_dict() == {"question": "What is this?", "language": "en",
                           "instance_uid": "1.2.3", "frame": 1, "point": [10.0, 20.0]}
    assert Prompt.from_dict(p.to_dict()) == p
    assert Prompt("这是什么？", "zh").language == "zh"
    with pytest.raises(ContractError, match="needs the instance"):
        Prompt("Where?", point=(1, 2))
    with pytest.raises(ContractError, match="one of point, box or mask, not point and box"):
        Prompt("Where?", instance_uid="1.2", point=(1, 2), box=(0, 0, 1, 1))
    with pytest.raises(ContractError, match="BCP 47"):
        Prompt("Where?", language="English")
    with pytest.raises(ContractError, match="unknown prompt field"):
        Prompt.from_dict({"question": "x", "points": [1, 2]})


def test_generated_text_is_checked_against_the_result():
    m = Measurement("ctr", 0.58, "1")
    section = TextSection("findings", (GeneratedSentence(
        "The heart is enlarged.", (Statement("SNOMED:8186001", "present"),), ("m:ctr",)),))
    result = EngineResult(ModelInfo("x", "1"), True, measurements=[m], text=[section])
    assert result.to_dict()["text"][0]["sentences"][0]["findings"][0]["code"]["value"] == \
        "8186001"
    with pytest.raises(ContractError, match="quotes unknown measurements"):
        EngineResult(ModelInfo("x", "1"), True, text=[section])
    with pytest.raises(ContractError, match="list of TextSection"):
        EngineResult(ModelInfo("x", "1"), True, text={"findings": "text"})


def test_study_input_keeps_series_in_order():
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    md = [{"SeriesInstanceUID": "1.1", "Modality": "CT", "SOPInstanceUID": "1.1.2",
           "InstanceNumber": 2},
          {"SeriesInstanceUID": "1.2", "Modality": "MR", "SOPInstanceUID": "1.2.1"},
          {"SeriesInstanceUID": "1.1", "Modality": "CT", "SOPInstanceUID": "1.1.1",
           "InstanceNumber": 1}]
    study = StudyInput("ct", [ct, mr, ct], metadata=md)
    assert [(s.series_uid, s.modality) for s in study.series] == [("1.1", "CT"), ("1.2", "MR")]
    assert [i.sop_instance_uid for i in study.series[0].instances] == ["1.1.1", "1.1.2"]
    assert len(study.paths) == 3
    with pytest.raises(ContractError, match="a study prompt must be a Prompt"):
        StudyInput("ct", [ct], prompt="what?")
    assert StudyInput("ct", [ct], prompt={"question": "what?"}).prompt.question == "what?"
