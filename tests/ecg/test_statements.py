"""Reading ECG statements from signed report text (models.ecg.statements): the drafts MedGate
composes read back as the findings they state, clinicians' wordings read as the codes the engines
use, and the vocabulary holds every code ecg-measure and MERL can emit."""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from app.rag.corpus import knowledge_lookup
from app.reports.composer import compose
from models.base import Code, EngineResult, Finding, ModelSpec, StudyInput, build
from models.ecg import criteria, interpret, statements, synthetic
from models.ecg.signal import is_ecg_file
from models.ecg.statements import label, vocabulary
from tests.conftest import SHARED_DATA, shared_file


def run_engine(path: Path) -> EngineResult:
    return build(ModelSpec("ecg-measure", "1.0.0")).run(StudyInput("ecg", [path]))


def draft_text(result: EngineResult) -> str:
    """The findings and impression of the draft composed from ``result``."""
    draft = compose([result], knowledge_lookup())
    return " ".join(s.text for section in ("findings", "impression")
                    for s in draft.sections[section])


def read(text: str) -> dict[str, str]:
    """code value -> state, as label() reads ``text``."""
    return {s.code.value: s.state for s in label(text)}


def assert_reads_back_as_stated(result: EngineResult) -> None:
    """label() of the draft gives every present finding code, present, and no other code of
    ecg-measure; MERL codes it adds are the same concepts, also present."""
    text = draft_text(result)
    stated = {f.code.key for f in result.findings if f.state == "present"}
    got = {s.code.key: s.state for s in label(text)}
    measure = vocabulary("ecg-measure")
    assert {k: v for k, v in got.items() if k in measure} == dict.fromkeys(stated, "present"), text
    assert set(got.values()) <= {"present"}, text


# --- round trip: real records ----------------------------------------------------------------

@pytest.mark.parametrize("record", ["pydicom:waveform_ecg.dcm", "wfdb/s0010_re", "wfdb/100"])
def test_draft_of_a_real_record_reads_back_as_its_findings(record):
    if record.startswith("pydicom:"):
        path = Path(get_testdata_file(record.partition(":")[2]))
    else:
        path = shared_file(f"ecg/{record}.hea")
    result = run_engine(path)
    assert any(f.state == "present" for f in result.findings)
    assert_reads_back_as_stated(result)


# --- round trip: synthetic ECGs with known abnormalities, through a WFDB record ---------------

# case -> synthetic.generate arguments (and "noisy": a lead buried in noise)
SYNTHETIC: dict[str, dict] = {
    "normal": dict(heart_rate=72, pr_ms=160, qrs_ms=90, qt_ms=390),
    "first-degree-av-block": dict(heart_rate=70, pr_ms=240),
    "sinus-bradycardia": dict(heart_rate=50, qt_ms=440),
    "sinus-tachycardia": dict(heart_rate=115, pr_ms=140, qt_ms=320),
    "lbbb": dict(heart_rate=75, qrs_ms=150, qt_ms=440, morphology="lbbb", qrs_axis=0),
    "rbbb": dict(heart_rate=80, qrs_ms=130, qt_ms=420, morphology="rbbb", qrs_axis=30),
    "ivcd": dict(heart_rate=75, qrs_ms=135, qt_ms=440),
    "af": dict(heart_rate=95, p_wave=False, rr_jitter=0.25, fibrillation_mv=0.05, qt_ms=360),
    "no-p-waves": dict(heart_rate=60, p_wave=False),
    "ectopy": dict(heart_rate=70, premature={5: "pvc", 9: "pac"}),
    "inferior-ste": dict(heart_rate=70, st_shift_mv={"II": 0.25, "III": 0.25, "aVF": 0.25}),
    "anteroseptal-ste": dict(heart_rate=70,
                             st_shift_mv={"V1": 0.3, "V2": 0.3, "V3": 0.3, "V4": 0.3}),
    "lateral-ste": dict(heart_rate=70, st_shift_mv={"I": 0.2, "aVL": 0.2, "V5": 0.2, "V6": 0.2}),
    "st-depression": dict(heart_rate=70, st_shift_mv={"V4": -0.15, "V5": -0.15, "V6": -0.15}),
    "left-axis": dict(heart_rate=70, qrs_axis=-60),
    "right-axis": dict(heart_rate=70, qrs_axis=130),
    "extreme-axis": dict(heart_rate=70, qrs_axis=-140),
    "long-qt": dict(heart_rate=70, qt_ms=480),
    "qt-sex-unknown": dict(heart_rate=60, qt_ms=455),
    "low-voltage": dict(heart_rate=70, qrs_scale=0.3, precordial_scale=0.3),
    "lvh": dict(heart_rate=70, precordial_scale=2.2),
    "noisy-lead": dict(heart_rate=72, qt_ms=390, noisy="V2"),
    "flutter": dict(rhythm="flutter", conduction=4, qt_ms=360),
    "junctional": dict(rhythm="junctional", heart_rate=50, qt_ms=420),
    "paced": dict(pacing="ventricular", heart_rate=70, qt_ms=440),
    "mobitz-1": dict(heart_rate=80, av_block="mobitz1", av_ratio=4, qt_ms=380),
    "mobitz-2": dict(heart_rate=80, av_block="mobitz2", av_ratio=4, qt_ms=380),
    "complete-av-block": dict(heart_rate=80, av_block="complete", qt_ms=440),
    "incomplete-rbbb": dict(heart_rate=75, qrs_ms=110, morphology="rbbb", qrs_axis=30),
    "sinus-tachycardia-pacs": dict(heart_rate=115, qt_ms=310, pr_ms=140, pac_every=3),
    "narrow-tachycardia-without-p": dict(rhythm="junctional", heart_rate=140, qt_ms=280),
    "af-wide-beat": dict(rhythm="af", heart_rate=90, qt_ms=360, premature={6: "aberrant"}),
}


@cache
def synthetic_result(case: str, folder: Path) -> EngineResult:
    wfdb = pytest.importorskip("wfdb")
    kw = dict(SYNTHETIC[case])
    noisy = kw.pop("noisy", None)
    ecg = synthetic.generate(seed=3, **kw)
    sig = ecg.signals_mv.copy()
    if noisy:
        k = list(ecg.leads).index(noisy)
        sig[k] += np.random.default_rng(1).normal(0, 0.4, sig.shape[1])
    wfdb.wrsamp(case, fs=ecg.fs, units=["mV"] * 12, sig_name=list(ecg.leads), p_signal=sig.T,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(folder))
    return run_engine(folder / f"{case}.hea")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthetic-ecg")


@pytest.mark.parametrize("case", SYNTHETIC)
def test_draft_of_a_synthetic_abnormality_reads_back_as_its_findings(case, folder):
    assert_reads_back_as_stated(synthetic_result(case, folder))


@pytest.mark.parametrize("case", SYNTHETIC)
def test_engine_summary_reads_back_with_each_findings_state(case, folder):
    """The engine's own summary lists present findings, then "possible: <label>" for the
    uncertain ones; each reads back with its finding's state."""
    result = synthetic_result(case, folder)
    text = result.raw["summary"].get("interpretation", "")
    expected = {f.code.key: f.state for f in result.findings}
    measure = vocabulary("ecg-measure")
    got = {s.code.key: s.state for s in label(text) if s.code.key in measure}
    assert got == expected, text


# --- clinicians' wordings ----------------------------------------------------------------------

ST_ALL = ("ecg-st-elevation-inferior", "ecg-st-elevation-septal", "ecg-st-elevation-anterior",
          "ecg-st-elevation-lateral", "merl:STE")
ABSENT_STE = dict.fromkeys(ST_ALL, "absent")
P, A, U = "present", "absent", "uncertain"

SIGNED: list[tuple[str, dict[str, str]]] = [
    # plain statements and abbreviations
    ("Sinus rhythm.", {"ecg-sinus-rhythm": P, "merl:SR": P}),
    ("NSR", {"ecg-sinus-rhythm": P, "merl:SR": P}),
    ("Sinus brady.", {"ecg-sinus-bradycardia": P, "merl:SBRAD": P}),
    ("Sinus tachy 112 bpm", {"ecg-sinus-tachycardia": P, "merl:STACH": P}),
    ("Fast AF with RVR.", {"ecg-atrial-fibrillation": P, "merl:AFIB": P}),
    ("Afib", {"ecg-atrial-fibrillation": P, "merl:AFIB": P}),
    ("1st degree AV block", {"ecg-first-degree-av-block": P, "merl:1AVB": P}),
    ("Prolonged PR interval", {"ecg-first-degree-av-block": P, "merl:1AVB": P}),
    ("LBBB", {"ecg-lbbb": P, "merl:CLBBB": P}),
    ("Complete right bundle branch block", {"ecg-rbbb": P, "merl:CRBBB": P}),
    ("Nonspecific IVCD", {"ecg-ivcd": P, "merl:IVCD": P}),
    ("LAFB", {"merl:LAFB": P}),
    ("LVH with strain.", {"ecg-lvh-voltage": P, "merl:LVH": P}),
    ("Left axis deviation", {"ecg-left-axis-deviation": P, "merl:LAD": P}),
    ("RAD", {"ecg-right-axis-deviation": P, "merl:RAD": P}),
    ("Northwest axis", {"ecg-extreme-axis-deviation": P}),
    ("Normal axis", {"ecg-normal-axis": P}),
    ("QTc prolongation", {"ecg-prolonged-qt": P, "merl:LNGQT": P}),
    ("Low voltage in the limb leads", {"ecg-low-voltage": P, "merl:LVOLT": P}),
    ("Frequent ventricular ectopics", {"ecg-premature-ventricular-complex": P, "merl:PVC": P}),
    ("Occasional PACs", {"ecg-premature-atrial-complex": P, "merl:PAC": P}),
    ("Atrial flutter with 2:1 block", {"ecg-atrial-flutter": P, "merl:AFLT": P}),
    ("Normal ECG", {"ecg-normal-ecg": P, "merl:NORM": P}),
    ("Poor quality tracing, baseline artefact.", {"ecg-signal-quality": P}),
    # ST elevation: territories from the words or the leads; STEMI names ST elevation
    ("Acute inferior STEMI.", {"ecg-st-elevation-inferior": P, "merl:STE": P}),
    ("ST elevation in leads II, III and aVF.", {"ecg-st-elevation-inferior": P, "merl:STE": P}),
    ("STE V1-V4", {"ecg-st-elevation-septal": P, "ecg-st-elevation-anterior": P,
                   "merl:STE": P}),
    ("Inferolateral ST elevation", {"ecg-st-elevation-inferior": P,
                                    "ecg-st-elevation-lateral": P, "merl:STE": P}),
    ("ST elevation in aVR", {"merl:STE": P}),
    # negation
    ("No atrial fibrillation.", {"ecg-atrial-fibrillation": A, "merl:AFIB": A}),
    ("AF is not seen.", {"ecg-atrial-fibrillation": A, "merl:AFIB": A}),
    ("Previous AF has resolved.", {"ecg-atrial-fibrillation": A, "merl:AFIB": A}),
    ("Sinus rhythm without ST elevation.", {"ecg-sinus-rhythm": P, "merl:SR": P,
                                            **ABSENT_STE}),
    ("No ST elevation in the inferior leads.", {"ecg-st-elevation-inferior": A}),
    ("Inferior ST elevation; no ST elevation elsewhere.",
     {**ABSENT_STE, "ecg-st-elevation-inferior": P, "merl:STE": P}),
    ("No AF, flutter or LBBB.", {"ecg-atrial-fibrillation": A, "merl:AFIB": A,
                                 "merl:AFLT": A, "ecg-atrial-flutter": A, "ecg-lbbb": A,
                                 "merl:CLBBB": A}),
    ("No AF, RBBB.", {"ecg-atrial-fibrillation": A, "merl:AFIB": A, "ecg-rbbb": P,
                      "merl:CRBBB": P}),
    ("Voltage criteria for LVH not met.", {"ecg-lvh-voltage": A, "merl:LVH": A}),
    ("QTc normal.", {"ecg-prolonged-qt": A, "merl:LNGQT": A}),
    ("Abnormal ECG.", {"ecg-normal-ecg": A, "merl:NORM": A}),
    ("Sinus tachycardia, otherwise normal ECG.", {"ecg-sinus-tachycardia": P, "merl:STACH": P,
                                                  "ecg-normal-ecg": A, "merl:NORM": A}),
    ("No acute ischaemic changes.", {**ABSENT_STE, "ecg-st-depression": A, "merl:STD": A}),
    ("No AV block.", {"ecg-first-degree-av-block": A, "merl:1AVB": A,
                      "ecg-second-degree-av-block-mobitz-1": A,
                      "ecg-second-degree-av-block-mobitz-2": A, "ecg-third-degree-av-block": A}),
    ("No ectopy.", {"ecg-premature-ventricular-complex": A, "merl:PVC": A,
                    "ecg-premature-atrial-complex": A, "merl:PAC": A}),
    ("No change in LBBB.", {"ecg-lbbb": P, "merl:CLBBB": P}),
    # uncertainty
    ("Possible LVH.", {"ecg-lvh-voltage": U, "merl:LVH": U}),
    ("Cannot exclude inferior STEMI.", {"ecg-st-elevation-inferior": U, "merl:STE": U}),
    ("Borderline QT prolongation", {"ecg-prolonged-qt": U, "merl:LNGQT": U}),
    ("?LVH", {"ecg-lvh-voltage": U, "merl:LVH": U}),
    ("LVH? RBBB.", {"ecg-lvh-voltage": U, "merl:LVH": U, "ecg-rbbb": P, "merl:CRBBB": P}),
    ("Consider LAFB.", {"merl:LAFB": U}),
    ("AF vs. atrial flutter", {"ecg-atrial-fibrillation": U, "merl:AFIB": U, "merl:AFLT": U,
                               "ecg-atrial-flutter": U}),
    ("Borderline ECG", {"ecg-normal-ecg": U, "merl:NORM": U}),
    ("ST depression in V5-V6, ? ischaemia", {"ecg-st-depression": P, "merl:STD": P}),
    # two statements in one sentence; present beats uncertain beats absent
    ("Sinus rhythm with first degree heart block and RBBB.",
     {"ecg-sinus-rhythm": P, "merl:SR": P, "ecg-first-degree-av-block": P, "merl:1AVB": P,
      "ecg-rbbb": P, "merl:CRBBB": P}),
    ("SR, LAD, PVCs.", {"ecg-sinus-rhythm": P, "merl:SR": P, "ecg-left-axis-deviation": P,
                        "merl:LAD": P, "ecg-premature-ventricular-complex": P, "merl:PVC": P}),
    ("Possible AF. AF confirmed on the rhythm strip.",
     {"ecg-atrial-fibrillation": P, "merl:AFIB": P}),
    ("No LVH. Possible LVH.", {"ecg-lvh-voltage": U, "merl:LVH": U}),
    # words that look like a statement and are not one the engines code
    ("Incomplete RBBB.", {"ecg-incomplete-rbbb": P}),
    ("Incomplete LBBB.", {}),
    ("Complete heart block.", {"ecg-third-degree-av-block": P}),
    ("2:1 AV block.", {}),
    ("Wenckebach.", {"ecg-second-degree-av-block-mobitz-1": P}),
    ("Second degree AV block, Mobitz type II.",
     {"ecg-second-degree-av-block-mobitz-2": P}),
    ("Ventricular paced rhythm.", {"ecg-paced-rhythm": P}),
    ("Junctional rhythm.", {"ecg-junctional-rhythm": P}),
    ("T wave inversion in V1-V3.", {}),
    ("Proximal LAD occlusion suspected clinically.", {}),
    ("NSTEMI", {}),
    ("Compared with the previous tracing of 2019.", {}),
    ("", {}),
]


@pytest.mark.parametrize("text,expected", SIGNED, ids=[t or "<empty>" for t, _ in SIGNED])
def test_clinician_wording(text, expected):
    assert read(text) == expected


def test_statements_carry_the_codes_findings_use():
    """A statement's key equals the key of the engine finding with the same code."""
    got = {s.code.key: s for s in label("Atrial fibrillation. Inferior ST elevation.")}
    for finding in (Finding("ecg-atrial-fibrillation", "Atrial fibrillation"),
                    Finding("merl:AFIB", "Atrial fibrillation"),
                    Finding("ecg-st-elevation-inferior", "ST elevation, inferior leads (II)"),
                    Finding("merl:STE", "ST elevation")):
        assert finding.code.key in got
        assert got[finding.code.key].code.meaning == vocabulary()[finding.code.key]
    assert Code.parse("merl:AFIB", "x").key == "99MEDGATE:merl:AFIB"


# --- vocabulary ------------------------------------------------------------------------------

def interpret_codes() -> set[str]:
    """The codes interpret.py can emit, read from its source: every "ecg-..." string except the
    knowledge ids passed to ``add`` (inline or through a variable), plus the ST elevation codes
    it takes from criteria.ST_TERRITORIES. Fails on a new kind of computed code."""
    tree = ast.parse(Path(interpret.__file__).read_text(encoding="utf-8"))
    adds = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "add"]
    knowledge = [a for n in adds for a in n.args[3:4]]
    knowledge += [k.value for n in adds for k in n.keywords if k.arg == "knowledge"]
    names = {a.id for a in knowledge if isinstance(a, ast.Name)}
    knowledge += [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id in names for t in n.targets)]
    skip = {id(x) for k in knowledge for x in ast.walk(k)}
    computed = {ast.unparse(n.args[0]) for n in adds if n.args
                and not isinstance(n.args[0], ast.Constant)}
    # the one computed code comes from ST_TERRITORIES; any other computed code needs this test
    # (and the vocabulary) updated
    assert computed == {"str(spec['knowledge'])"}, computed
    codes = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
             and isinstance(n.value, str) and re.fullmatch(r"ecg-[a-z0-9-]+", n.value)
             and id(n) not in skip}
    return codes | {str(spec["knowledge"]) for spec in criteria.ST_TERRITORIES.values()}


def test_vocabulary_sizes_and_keys():
    measure, merl, both = vocabulary("ecg-measure"), vocabulary("merl"), vocabulary()
    assert (len(measure), len(merl), len(both)) == (32, 20, 52)
    assert both == {**measure, **merl}
    classes = json.loads(statements.MERL_PROMPTS.read_text(encoding="utf-8"))["classes"]
    assert merl == {f"99MEDGATE:merl:{c}": info["label"] for c, info in classes.items()}
    assert all(k.startswith("99MEDGATE:ecg-") for k in measure)
    with pytest.raises(ValueError, match="unknown ECG family"):
        vocabulary("cxr")


def test_vocabulary_is_what_interpret_py_emits():
    measure = {k.removeprefix("99MEDGATE:") for k in vocabulary("ecg-measure")}
    assert measure == interpret_codes()


def engine_inputs() -> list[Path]:
    """pydicom's 12-lead ECG and every record of ../shared/data/ecg the engine reads (a WFDB
    record once, by its header)."""
    paths = [Path(get_testdata_file("waveform_ecg.dcm"))]
    root = SHARED_DATA / "ecg"
    if root.is_dir():
        paths += sorted({p.with_suffix(".hea") if (p.with_suffix(".hea")).exists() else p
                         for p in root.rglob("*") if p.is_file() and is_ecg_file(p)})
    return paths


def test_every_code_ecg_measure_emits_is_in_the_vocabulary(folder):
    emitted: dict[str, str] = {}
    for path in engine_inputs():
        emitted |= {f.code.key: path.name for f in run_engine(path).findings}
    for case in SYNTHETIC:
        emitted |= {f.code.key: case for f in synthetic_result(case, folder).findings}
    measure = vocabulary("ecg-measure")
    assert set(emitted) <= set(measure), {k: v for k, v in emitted.items() if k not in measure}
    # the synthetic cases make every statement, so the round trips above cover every label
    assert set(measure) - set(emitted) == set()


@pytest.mark.parametrize("key", list(vocabulary()))
def test_every_label_reads_as_its_own_code(key):
    assert {s.code.key: s.state for s in label(vocabulary()[key])}.get(key) == "present"


def test_phrase_tables_name_only_vocabulary_codes():
    known = set(vocabulary())
    codes = {c for codes, _ in statements._PHRASES for c in codes}
    codes |= {c for codes, _, _ in statements._FIXED for c in codes}
    codes |= {c for b, ns in statements._NARROWER.items() for c in (b, *ns)}
    assert {c for c in codes if not c.startswith("_") and Code.parse(c, c).key not in known} \
        == set()
