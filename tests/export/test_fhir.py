"""FHIR R4 export of report versions: hand-built ReportDocuments of each domain and state become
bundles that the R4B classes accept, whose references resolve and whose codes say what the
report says."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation

from app.export.document import (
    FindingItem,
    MeasurementItem,
    Person,
    RegionItem,
    ReportDocument,
    SourceInstance,
)
from app.export.fhir import (
    FhirError,
    diagnostic_report,
    report_text,
    validate,
    where_text,
)
from app.reports.lifecycle import FHIR_STATUS

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
ECG_12_LEAD = "1.2.840.10008.5.1.4.1.1.9.1.1"
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
UCUM = "http://unitsofmeasure.org"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def _src(sop_class: str, series: str, instance: str) -> SourceInstance:
    return SourceInstance(sop_class, instance, series, Path(f"/store/{instance}.dcm"))


def cxr_draft() -> ReportDocument:
    return ReportDocument(
        report_id=11, version=1, state="draft", domain="cxr",
        study_uid="1.2.826.0.1.3680043.8.498.1", accession_number="ACC-CXR-1",
        sections={"technique": "PA chest radiograph.",
                  "findings": "Blunting of the right costophrenic angle.",
                  "impression": "Small right pleural effusion."},
        created_at=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        sources=(_src(DX_IMAGE, "1.2.826.0.1.3680043.8.498.1.1",
                      "1.2.826.0.1.3680043.8.498.1.1.1"),),
        models=("cxr-labeller@2.1",),
        findings=(FindingItem(
            code={"scheme": "SCT", "value": "60046008", "meaning": "Pleural effusion"},
            label="Pleural effusion", state="present", evidence=("m:ctr", "r1"),
            knowledge=("cxr-pleural-effusion",), where={}, criteria="costophrenic blunting",
            model="cxr-labeller@2.1"),),
        measurements=(MeasurementItem(
            id="m:ctr", name="cardiothoracic_ratio", value=0.48, unit="{ratio}", code=None,
            where={"instance_uid": "1.2.826.0.1.3680043.8.498.1.1.1", "frame": 1},
            model="cxr-labeller@2.1"),),
        regions=(RegionItem(id="r1", kind="box", instance_uid="1.2.826.0.1.3680043.8.498.1.1.1",
                            frame=1, box=(10.0, 20.0, 30.0, 40.0), label="effusion"),),
    )


def ct_final() -> ReportDocument:
    series = "1.2.826.0.1.3680043.8.498.2.1"
    return ReportDocument(
        report_id=12, version=3, state="final", domain="ct",
        study_uid="1.2.826.0.1.3680043.8.498.2", accession_number="ACC-CT-7",
        sections={"technique": "Non-contrast CT of the chest.",
                  "findings": "A 7 mm solid nodule in the right upper lobe.",
                  "impression": "Solid pulmonary nodule, 7 mm."},
        created_at=datetime(2024, 5, 2, 9, 0, tzinfo=UTC),
        sources=tuple(_src(CT_IMAGE, series, f"{series}.{n}") for n in range(1, 4)),
        models=("ctq@1.0",),
        findings=(FindingItem(
            code={"scheme": "SCT", "value": "427359005", "meaning": "Solitary nodule of lung"},
            label="Lung nodule", state="present", evidence=("m:nodule_diameter",),
            knowledge=(), where={"series_uid": series, "slices": [3, 10]},
            criteria="solid, >= 6 mm", model="ctq@1.0"),
            FindingItem(code={"scheme": "RADLEX", "value": "RID34539", "meaning": "Emphysema"},
                        label="Emphysema", state="absent", evidence=(), knowledge=(),
                        where={}, criteria="", model="ctq@1.0")),
        measurements=(
            MeasurementItem(id="m:nodule_diameter", name="nodule_diameter", value=7.0, unit="mm",
                            code={"scheme": "SCT", "value": "81827009", "meaning": "Diameter"},
                            where={"series_uid": series, "slices": [3, 10]}, model="ctq@1.0"),
            MeasurementItem(id="m:nodule_density", name="nodule_density", value=35.5,
                            unit="[hnsf'U]", code=None, where={"series_uid": series,
                                                               "slices": [3, 10]},
                            model="ctq@1.0")),
        author=Person("Dr Jane Doe", "GMC1234567"),
        signed_by=Person("Dr Jane Doe", "GMC1234567"),
        signed_at=datetime(2024, 5, 2, 11, 15, 30, tzinfo=UTC),
    )


def ecg_draft() -> ReportDocument:
    series = "1.2.826.0.1.3680043.8.498.3.1"
    return ReportDocument(
        report_id=13, version=1, state="edited", domain="ecg",
        study_uid="1.2.826.0.1.3680043.8.498.3", accession_number="",
        sections={"findings": "Sinus rhythm, rate 72/min. QRS 96 ms.",
                  "impression": "Normal ECG."},
        created_at=datetime(2024, 5, 3, 7, 0),  # naive: taken as UTC
        sources=(_src(ECG_12_LEAD, series, f"{series}.1"),),
        models=("ecg-measure@0.3",),
        findings=(FindingItem(
            code={"scheme": "99MEDGATE", "value": "ecg-sinus-rhythm", "meaning": "Sinus rhythm"},
            label="Sinus rhythm", state="present", evidence=("m:heart_rate",), knowledge=(),
            where={"lead": "II"}, criteria="regular P before each QRS", model="ecg-measure@0.3"),),
        measurements=(
            MeasurementItem(id="m:heart_rate", name="heart_rate", value=72.0, unit="/min",
                            code={"scheme": "LN", "value": "8867-4", "meaning": "Heart rate"},
                            where={"lead": "II"}, model="ecg-measure@0.3"),
            MeasurementItem(id="m:qrs_duration:II", name="qrs_duration", value=96.0, unit="ms",
                            code={"scheme": "LN", "value": "8633-3",
                                  "meaning": "QRS duration"},
                            where={"lead": "II", "beats": [1, 2, 3]}, model="ecg-measure@0.3")),
    )


def amended(state: str = "amended") -> ReportDocument:
    base = ct_final()
    return ReportDocument(
        **{**base.__dict__, "version": 4, "state": state,
           "sections": {**base.sections, "impression": "Solid pulmonary nodule, 8 mm."},
           "signed_by": Person("Dr John Roe", "GMC7654321"),
           "signed_at": datetime(2024, 5, 4, 16, 0, tzinfo=UTC),
           "reason": "nodule re-measured on thin slices"})


def pathology_final() -> ReportDocument:
    series = "1.2.826.0.1.3680043.8.498.4.1"
    return ReportDocument(
        report_id=14, version=1, state="final", domain="pathology",
        study_uid="1.2.826.0.1.3680043.8.498.4", accession_number="S24-100",
        sections={"findings": "Tissue fraction 62%.", "impression": "Adequate sample."},
        created_at=datetime(2024, 5, 5, 10, 0, tzinfo=UTC),
        sources=(_src(WSI, series, f"{series}.1"),),
        measurements=(MeasurementItem(id="m:tissue_fraction", name="tissue_fraction",
                                      value=62.0, unit="%", code=None, where={},
                                      model="tissue@1"),),
        signed_by=Person("Dr P. Path"), signed_at=datetime(2024, 5, 5, 12, 0, tzinfo=UTC),
        extra={"study_datetime": datetime(2024, 5, 4, 14, 0, tzinfo=UTC)},
    )


# -- helpers ----------------------------------------------------------------------------------

def resources(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def report_of(bundle: dict) -> dict:
    (report,) = resources(bundle, "DiagnosticReport")
    return report


def resolve(bundle: dict, ref: dict) -> dict:
    hits = [e["resource"] for e in bundle["entry"] if e["fullUrl"] == ref["reference"]]
    assert len(hits) == 1, f"{ref} does not resolve to one entry"
    assert hits[0]["resourceType"] == ref.get("type", hits[0]["resourceType"])
    return hits[0]


def decoded_text(report: dict) -> str:
    (form,) = report["presentedForm"]
    assert form["contentType"].startswith("text/plain")
    data = base64.b64decode(form["data"])
    assert form["size"] == len(data)
    return data.decode("utf-8")


def check_common(doc: ReportDocument, bundle: dict) -> dict:
    """What every exported version shares; returns the DiagnosticReport."""
    validate(bundle)
    assert bundle["type"] == "collection"
    Bundle.model_validate(bundle)  # the R4B classes accept it as is
    report = report_of(bundle)
    assert bundle["entry"][0]["resource"] is report
    DiagnosticReport.model_validate(report)
    assert report["status"] == FHIR_STATUS[doc.state]
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls))
    for ref in report.get("result", []):
        Observation.model_validate(resolve(bundle, ref))
    (study_ref,) = report["imagingStudy"]
    study = resolve(bundle, study_ref)
    ImagingStudy.model_validate(study)
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{doc.study_uid}"}.items() <= \
        study["identifier"][0].items()
    assert resolve(bundle, report["subject"])["resourceType"] == "Patient"
    assert resolve(bundle, study["subject"]) == resolve(bundle, report["subject"])
    again = json.loads(json.dumps(bundle))
    assert again == bundle
    validate(again)
    return report


def observations(bundle: dict) -> list[dict]:
    return [resolve(bundle, ref) for ref in report_of(bundle).get("result", [])]


def quantities(bundle: dict) -> list[dict]:
    return [o for o in observations(bundle) if "valueQuantity" in o]


def finding_obs(bundle: dict) -> list[dict]:
    return [o for o in observations(bundle) if "valueCodeableConcept" in o]


# -- the four reports -------------------------------------------------------------------------

def test_cxr_draft_is_preliminary_with_grounded_finding() -> None:
    doc = cxr_draft()
    bundle = diagnostic_report(doc)
    report = check_common(doc, bundle)
    assert report["status"] == "preliminary"
    assert report["conclusion"] == "Small right pleural effusion."
    assert "resultsInterpreter" not in report
    category = report["category"][0]["coding"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
            "display": "Radiology"} in category
    assert report["code"]["coding"][0] == {"system": LOINC, "code": "18748-4",
                                           "display": "Diagnostic imaging study"}
    text = decoded_text(report)
    assert text == report_text(doc)
    for section in doc.sections.values():
        assert section in text
    assert "not verified" in text

    (finding,) = finding_obs(bundle)
    assert finding["status"] == "preliminary"
    assert finding["code"]["coding"][0] == {"system": SCT, "code": "60046008",
                                            "display": "Pleural effusion"}
    assert finding["valueCodeableConcept"]["coding"][0] == {"system": SCT, "code": "52101004",
                                                            "display": "Present"}
    assert finding["category"][0]["coding"][0]["code"] == "imaging"
    (measurement,) = quantities(bundle)
    derived = [resolve(bundle, r) for r in finding["derivedFrom"]]
    assert measurement in derived and resolve(bundle, report["imagingStudy"][0]) in derived
    notes = " ".join(n["text"] for n in finding["note"])
    assert "costophrenic blunting" in notes and "r1 (effusion, box" in notes
    assert "cxr-pleural-effusion" in notes
    device = resolve(bundle, finding["device"])
    assert device["identifier"] == [{"system": "urn:medgate:model", "value": "cxr-labeller@2.1"}]
    assert device["version"] == [{"value": "2.1"}]

    assert measurement["valueQuantity"] == {"value": 0.48, "unit": "{ratio}", "system": UCUM,
                                            "code": "{ratio}"}
    # no code given: MedGate's own scheme, from the measurement's name
    assert measurement["code"]["coding"][0] == {"system": "urn:medgate:codes",
                                                "code": "cardiothoracic_ratio",
                                                "display": "cardiothoracic ratio"}
    assert measurement["note"] == [
        {"text": "Measured at: instance 1.2.826.0.1.3680043.8.498.1.1.1, frame 1"}]
    study = resolve(bundle, report["imagingStudy"][0])
    assert study["series"][0]["modality"]["code"] == "DX"
    assert study["identifier"][1]["value"] == "ACC-CXR-1"
    assert report["basedOn"][0]["identifier"]["value"] == "ACC-CXR-1"
    # no patient given: a Patient without any identifying data
    (patient,) = resources(bundle, "Patient")
    assert set(patient) == {"resourceType", "id"}


def test_ct_final_names_signer_and_measurements() -> None:
    doc = ct_final()
    bundle = diagnostic_report(doc, patient={"id": "MRN-0042", "system": "urn:oid:1.2.3.4"})
    report = check_common(doc, bundle)
    assert report["status"] == "final"
    assert report["issued"] == "2024-05-02T11:15:30+00:00"
    assert report["effectiveDateTime"] == "2024-05-02T09:00:00+00:00"
    (interpreter_ref,) = report["resultsInterpreter"]
    interpreter = resolve(bundle, interpreter_ref)
    assert interpreter["resourceType"] == "Practitioner"
    assert interpreter["identifier"] == [{"value": "GMC1234567"}]
    assert interpreter["name"] == [{"text": "Dr Jane Doe"}]
    (patient,) = resources(bundle, "Patient")
    assert patient["identifier"] == [{"system": "urn:oid:1.2.3.4", "value": "MRN-0042"}]
    assert "name" not in patient  # only what was given

    obs = observations(bundle)
    assert len(obs) == 4 and {o["status"] for o in obs} == {"final"}
    diameter, density = quantities(bundle)
    assert diameter["valueQuantity"] == {"value": 7.0, "unit": "mm", "system": UCUM,
                                         "code": "mm"}
    assert diameter["code"]["coding"][0]["system"] == SCT
    assert density["valueQuantity"] == {"value": 35.5, "unit": "HU", "system": UCUM,
                                        "code": "[hnsf'U]"}
    for q in (diameter, density):
        assert q["note"] == [{"text": "Measured at: series 1.2.826.0.1.3680043.8.498.2.1, "
                                      "slices 3-10 (0-based)"}]
        assert resolve(bundle, q["derivedFrom"][0])["resourceType"] == "ImagingStudy"
    nodule, emphysema = finding_obs(bundle)
    assert resolve(bundle, nodule["derivedFrom"][0]) == diameter
    assert emphysema["code"]["coding"][0] == {"system": "http://radlex.org", "code": "RID34539",
                                              "display": "Emphysema"}
    assert emphysema["valueCodeableConcept"]["coding"][0]["code"] == "272519000"
    study = resolve(bundle, report["imagingStudy"][0])
    assert study["numberOfSeries"] == 1 and study["numberOfInstances"] == 3
    (series,) = study["series"]
    assert series["modality"] == {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                  "code": "CT", "display": "Computed Tomography"}
    assert series["instance"][0]["sopClass"] == {"system": "urn:ietf:rfc:3986",
                                                 "code": f"urn:oid:{CT_IMAGE}"}
    text = decoded_text(report)
    assert text == report_text(doc) and "Signed by Dr Jane Doe" in text
    (device,) = resources(bundle, "Device")  # one model, named once
    assert device["deviceName"] == [{"name": "ctq", "type": "model-name"}]


def test_ecg_measurements_in_ucum_per_lead() -> None:
    doc = ecg_draft()
    bundle = diagnostic_report(doc, patient={"id": "P-9", "name": "Doe^Jane"})
    report = check_common(doc, bundle)
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0]["code"] == "EC"
    assert report["code"]["coding"][0] == {"system": LOINC, "code": "11524-6",
                                           "display": "EKG study"}
    assert "basedOn" not in report  # no accession number
    assert report["issued"] == "2024-05-03T07:00:00+00:00"  # naive time taken as UTC
    rate, qrs = quantities(bundle)
    assert rate["valueQuantity"] == {"value": 72.0, "unit": "/min", "system": UCUM,
                                     "code": "/min"}
    assert rate["code"]["coding"][0] == {"system": LOINC, "code": "8867-4",
                                         "display": "Heart rate"}
    assert qrs["valueQuantity"]["code"] == "ms"
    assert rate["note"] == [{"text": "Measured at: lead II"}]
    assert qrs["note"] == [{"text": "Measured at: lead II, beats 1, 2, 3"}]
    assert {o["category"][0]["coding"][0]["code"] for o in observations(bundle)} == {"procedure"}
    (finding,) = finding_obs(bundle)
    assert finding["code"]["coding"][0]["system"] == "urn:medgate:codes"
    assert resolve(bundle, finding["derivedFrom"][0]) == rate
    study = resolve(bundle, report["imagingStudy"][0])
    assert study["series"][0]["modality"]["code"] == "ECG"
    (patient,) = resources(bundle, "Patient")
    assert patient["name"] == [{"text": "Jane Doe", "family": "Doe", "given": ["Jane"]}]
    assert decoded_text(report).startswith("Findings:\nSinus rhythm")


@pytest.mark.parametrize("state", ["amended", "corrected"])
def test_amended_and_corrected_update_the_same_report(state: str) -> None:
    first, doc = ct_final(), amended(state)
    before, bundle = diagnostic_report(first), diagnostic_report(doc)
    report = check_common(doc, bundle)
    assert report["status"] == state
    assert report["id"] == report_of(before)["id"] == "medgate-12"
    assert report["meta"]["versionId"] == "4" and report_of(before)["meta"]["versionId"] == "3"
    # the observations are the new version's own
    assert not {o["id"] for o in observations(bundle)} & {o["id"] for o in observations(before)}
    assert {o["status"] for o in observations(bundle)} == {"final"}
    assert report["conclusion"] == "Solid pulmonary nodule, 8 mm."
    text = decoded_text(report)
    what = "amendment" if state == "amended" else "correction"
    assert f"Reason for {what}: nodule re-measured on thin slices" in text
    interpreter = resolve(bundle, report["resultsInterpreter"][0])
    assert interpreter["identifier"] == [{"value": "GMC7654321"}]


def test_pathology_report() -> None:
    doc = pathology_final()
    bundle = diagnostic_report(doc)
    report = check_common(doc, bundle)
    assert report["category"][0]["coding"][0]["code"] == "PAT"
    assert report["code"]["coding"][0]["code"] == "11526-1"
    # the study's own time when the service gives it; else the version's creation time
    assert report["effectiveDateTime"] == "2024-05-04T14:00:00+00:00"
    assert report["issued"] == "2024-05-05T12:00:00+00:00"
    (q,) = quantities(bundle)
    assert q["valueQuantity"] == {"value": 62.0, "unit": "%", "system": UCUM, "code": "%"}
    assert "note" not in q
    interpreter = resolve(bundle, report["resultsInterpreter"][0])
    assert "identifier" not in interpreter and interpreter["name"] == [{"text": "Dr P. Path"}]
    study = resolve(bundle, report["imagingStudy"][0])
    assert study["modality"][0]["code"] == "SM"


# -- states, determinism, addresses -----------------------------------------------------------

@pytest.mark.parametrize("state", ["cancelled", "entered_in_error"])
def test_withdrawn_report_has_status_and_no_content(state: str) -> None:
    doc = ReportDocument(**{**ct_final().__dict__, "state": state, "version": 5})
    bundle = diagnostic_report(doc)
    report = check_common(doc, bundle)
    assert report["status"] == FHIR_STATUS[state]
    for gone in ("result", "conclusion", "presentedForm", "resultsInterpreter"):
        assert gone not in report
    assert not resources(bundle, "Observation") and not resources(bundle, "Device")
    assert report["id"] == "medgate-12"


@pytest.mark.parametrize("state", ["pending", "bogus"])
def test_states_without_a_report_are_refused(state: str) -> None:
    doc = ReportDocument(**{**cxr_draft().__dict__, "state": state})
    with pytest.raises(FhirError, match=f"state '{state}'"):
        diagnostic_report(doc)


def test_bad_documents_are_refused_by_name() -> None:
    with pytest.raises(FhirError, match="domain 'mri'"):
        diagnostic_report(ReportDocument(**{**cxr_draft().__dict__, "domain": "mri"}))
    with pytest.raises(FhirError, match="study UID 'not-a-uid'"):
        diagnostic_report(ReportDocument(**{**cxr_draft().__dict__, "study_uid": "not-a-uid"}))
    bad_source = (SourceInstance(DX_IMAGE, "1.2.3", "file:/tmp/x", Path("x")),)
    with pytest.raises(FhirError, match="series UID 'file:/tmp/x'"):
        diagnostic_report(ReportDocument(**{**cxr_draft().__dict__, "sources": bad_source}))
    with pytest.raises(FhirError, match="unknown patient field"):
        diagnostic_report(cxr_draft(), patient={"id": "1", "birthDate": "1970-01-01"})
    bad = FindingItem(code={"scheme": "ICD10", "value": "J90", "meaning": "Effusion"},
                      label="Effusion", state="present", evidence=(), knowledge=(), where={},
                      criteria="", model="m@1")
    with pytest.raises(FhirError, match="coding scheme 'ICD10'"):
        diagnostic_report(ReportDocument(**{**cxr_draft().__dict__, "findings": (bad,)}))


def test_export_is_deterministic_and_versions_differ() -> None:
    doc = cxr_draft()
    assert json.dumps(diagnostic_report(doc)) == json.dumps(diagnostic_report(doc))
    later = diagnostic_report(ReportDocument(**{**doc.__dict__, "version": 2}))
    assert report_of(later)["id"] == report_of(diagnostic_report(doc))["id"]
    assert later["id"] == "medgate-11-2"
    assert [o["id"] for o in observations(later)] == ["medgate-11-2-finding-1",
                                                      "medgate-11-2-measurement-1"]


def test_base_url_gives_resolvable_restful_addresses() -> None:
    doc = ct_final()
    bundle = diagnostic_report(doc, base_url="https://fhir.example.org/r4/")
    check_common(doc, bundle)
    for entry in bundle["entry"]:
        r = entry["resource"]
        assert entry["fullUrl"] == f"https://fhir.example.org/r4/{r['resourceType']}/{r['id']}"


def test_where_text() -> None:
    assert where_text({}) == ""
    assert where_text({"lead": "V5", "start_s": 0.5, "end_s": 1.25}) == "lead V5, 0.5-1.25 s"
    assert where_text({"series_uid": "1.2", "slice_index": 4, "region_id": "r2"}) == \
        "series 1.2, slice 4 (0-based), region r2"


# -- validate ---------------------------------------------------------------------------------

def _bundle() -> dict:
    return copy.deepcopy(diagnostic_report(ct_final()))


def test_validate_refuses_a_dangling_reference() -> None:
    bundle = _bundle()
    report_of(bundle)["result"].append({"reference": "urn:uuid:00000000-0000-0000-0000-00000000"
                                                     "0000"})
    with pytest.raises(FhirError, match="does not resolve"):
        validate(bundle)


def test_validate_refuses_a_reference_of_the_wrong_type() -> None:
    bundle = _bundle()
    device_url = next(e["fullUrl"] for e in bundle["entry"]
                      if e["resource"]["resourceType"] == "Device")
    report_of(bundle)["performer"] = [{"reference": device_url}]  # R4: no Device performer
    with pytest.raises(FhirError, match="performer.*is a Device"):
        validate(bundle)


def test_validate_refuses_codes_outside_required_bindings() -> None:
    bundle = _bundle()
    report_of(bundle)["status"] = "signed"
    with pytest.raises(FhirError, match="status 'signed'"):
        validate(bundle)
    bundle = _bundle()
    resources(bundle, "ImagingStudy")[0]["status"] = "done"
    with pytest.raises(FhirError, match="'done' is not one of"):
        validate(bundle)


def test_validate_refuses_structural_errors() -> None:
    bundle = _bundle()
    quantities(bundle)[0]["valueQuantity"]["value"] = "seven"
    with pytest.raises(FhirError, match="not valid FHIR R4"):
        validate(bundle)
    bundle = _bundle()
    del resources(bundle, "ImagingStudy")[0]["subject"]
    with pytest.raises(FhirError, match="subject"):
        validate(bundle)
    bundle = _bundle()
    bundle["entry"][1]["fullUrl"] = bundle["entry"][0]["fullUrl"]
    with pytest.raises(FhirError, match="used twice"):
        validate(bundle)
    bundle = _bundle()
    bundle["type"] = "bag"
    with pytest.raises(FhirError, match="Bundle.type 'bag'"):
        validate(bundle)
    with pytest.raises(FhirError, match="not a FHIR Bundle"):
        validate({"resourceType": "DiagnosticReport"})
