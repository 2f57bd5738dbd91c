"""The bundled validation studies and the validation runner: every case is well formed and ships
its files, every built-in family has a case and its default version passes on it (with load and
run time and peak memory recorded), and failures are specific: a strict-load key, a weights file
changed after registration, a reference value missed, a site's own case, a family without one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from app.config import reset_settings
from app.dicom.headers import read_header
from app.registry.cases import run_validation, validation_study
from app.registry.defaults import DEFAULT_VERSIONS, default_spec
from models.base import EngineResult, ModelInfo, ModelSpec, StudyInput, register
from models.runtime.manifest import compute_manifest
from models.runtime.validate import SAMPLE_SECONDS, ValidationOutcome, study_for, validate
from models.validation import BUNDLED, CaseError, case_for, cases, load_case
from tests.conftest import shared_file

HEAVY = {"libra", "medrega", "medplib", "ct-assistant", "promptmrg"}
README = BUNDLED / "README.md"
BUILTIN_REFERENCES = {"technical", "ecg-measure", "ct-quant", "slide-quant"}


@pytest.fixture(autouse=True)
def models_dir(tmp_path, monkeypatch):
    """A model folder of the test's own, without site cases unless a test writes some (a
    developer's var/models/validation must not change what these tests see)."""
    folder = tmp_path / "models"
    monkeypatch.setenv("MEDGATE_MODEL_DIR", str(folder))
    reset_settings()
    yield folder
    monkeypatch.undo()
    reset_settings()


def _study(case, family=None, output_dir=None) -> StudyInput:
    return study_for(case, [read_header(p) for p in case.files], output_dir, family=family)


def _numbers(outcome: ValidationOutcome) -> None:
    for value in (outcome.load_seconds, outcome.run_seconds):
        assert isinstance(value, float) and value >= 0
    assert isinstance(outcome.peak_memory_bytes, int) and outcome.peak_memory_bytes >= 0


# -- the cases ---------------------------------------------------------------------------------

def test_every_case_is_well_formed_and_ships_its_files():
    found = cases()
    assert {c.name for c in found} == {"cxr-dx", "ecg-12lead", "ct-3slice", "slide-sm"}
    readme = README.read_text(encoding="utf-8")
    attribution = readme.split("## Attribution", 1)[1]
    total = 0
    for case in found:
        assert case.folder.parent == BUNDLED and case.folder.name == case.name
        raw = json.loads((case.folder / "case.json").read_text(encoding="utf-8"))
        assert [case.folder / f for f in raw["files"]] == list(case.files)
        for path in case.files:
            assert path.is_file()
            read_header(path)  # every file is DICOM the platform reads
            assert f"{case.name}/" in attribution and path.name in attribution, path
            total += path.stat().st_size
        # each family's expectation names only kinds and families the case has
        assert set(case.expect) <= set(case.families)
    assert total < 2.5e6


def test_every_builtin_family_has_exactly_one_bundled_case():
    named: dict[str, list[str]] = {}
    for case in cases():
        for family in case.families:
            named.setdefault(family, []).append(case.name)
    assert {f: len(v) for f, v in named.items() if len(v) > 1} == {}
    assert sorted(DEFAULT_VERSIONS) == sorted(named)
    assert case_for("technical").name == "cxr-dx"
    assert case_for("ct-assistant").before_for("ct-assistant") == ("ct-quant",)
    # the rule-based built-ins carry reference values of their validated version
    for family in BUILTIN_REFERENCES:
        assert case_for(family).expect_for(family)["measurements"], family


def test_the_prompt_goes_to_the_family_that_answers_questions():
    case = case_for("medplib")
    assert case.prompted == ("medplib",)
    assert _study(case, "medplib").prompt == case.prompt
    assert case.prompt.instance_uid == read_header(case.files[0])["SOPInstanceUID"]
    for family in ("technical", "promptmrg", "libra", "medrega"):
        assert _study(case, family).prompt is None


def test_the_slide_is_the_svs_region_pixel_for_pixel():
    from models.pathology.slide import open_slide
    from tests.runtime.make_validation_slide import svs_tiles

    _, expected = svs_tiles(shared_file("pathology/CMU-1-Small-Region.svs"))
    (path,) = case_for("slide-quant").files
    with open_slide([path]) as slide:
        assert slide.dimensions == (960, 960)
        got = slide.read_region(0, 0, 0, 960, 960)
    assert np.array_equal(got, expected)


# -- every built-in family passes on its case --------------------------------------------------

@pytest.mark.parametrize("family", [
    pytest.param(f, marks=pytest.mark.slow) if f in HEAVY else f for f in DEFAULT_VERSIONS])
def test_the_default_version_of_every_builtin_family_passes(family):
    spec = default_spec(family)
    outcome = run_validation(spec)
    assert outcome.passed, outcome.error
    assert outcome.error is None and all(c["passed"] for c in outcome.checks)
    _numbers(outcome)
    assert outcome.peak_gpu_bytes is None  # a CPU spec
    s = outcome.summary
    assert s["case"] == case_for(family).name
    assert s["model"]["family"] == family and s["model"]["version"] == spec.version
    assert s["trained"] is (spec.variant != "reference")
    names = {c["check"] for c in outcome.checks}
    assert {"load", "run", "result", "family", "version"} <= names
    if spec.variant == "reference":
        assert "trained" in names
    for name in case_for(family).expect_for(family).get("measurements", {}):
        assert f"measurement.{name}" in names
    if family == "ct-assistant":
        assert s["before"] == ["ct-quant"]
    assert json.loads(json.dumps(outcome.to_dict()))["passed"] is True


# -- failures are specific ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def merl_checkpoint(tmp_path_factory):
    """A small MERL checkpoint (the reference architecture, saved as the authors save theirs)
    and its config; and the same one with a key removed."""
    import torch

    from models.ecg.merl import REFERENCE_CONFIG, bundled_tokenizer_dir
    from models.ecg.merl_net import MerlModel

    small = {k: v for k, v in REFERENCE_CONFIG.items() if k not in ("seed", "thresholds")}
    torch.manual_seed(3)
    state = MerlModel(small).state_dict()
    folder = tmp_path_factory.mktemp("merl")
    good = folder / "good" / "merl.pth"
    good.parent.mkdir()
    torch.save({"model_state_dict": state}, good)
    dropped = "proj_e.0.weight"
    bad = folder / "bad" / "merl.pth"
    bad.parent.mkdir()
    torch.save({"model_state_dict": {k: v for k, v in state.items() if k != dropped}}, bad)
    config = {**small, "tokenizer_dir": str(bundled_tokenizer_dir())}
    return good, bad, dropped, config


def _merl_spec(path: Path, config: dict) -> ModelSpec:
    return ModelSpec("merl", "site-1", variant="checkpoint", weights_path=str(path),
                     sha256=compute_manifest(path).digest, config=config)


def test_a_checkpoint_that_loads_strictly_passes_and_says_trained(merl_checkpoint):
    good, _, _, config = merl_checkpoint
    outcome = run_validation(_merl_spec(good, config), manifest=compute_manifest(good))
    assert outcome.passed, outcome.error
    _numbers(outcome)
    checks = {c["check"]: c for c in outcome.checks}
    assert checks["manifest"]["passed"] and checks["trained"]["passed"]
    assert checks["raw.scores"]["passed"] and outcome.summary["trained"] is True


def test_a_missing_key_fails_the_strict_load_and_is_named(merl_checkpoint):
    _, bad, dropped, config = merl_checkpoint
    outcome = run_validation(_merl_spec(bad, config), manifest=compute_manifest(bad))
    assert outcome.passed is False
    assert dropped in outcome.error and "1 missing" in outcome.error
    assert outcome.checks[-1]["check"] == "load" and not outcome.checks[-1]["passed"]
    assert outcome.load_seconds is None and outcome.run_seconds is None
    assert outcome.summary == {"case": "ecg-12lead"}


def test_weights_changed_after_registration_are_refused_by_name(merl_checkpoint, tmp_path):
    good, _, _, config = merl_checkpoint
    folder = tmp_path / "ckpt"
    shutil.copytree(good.parent, folder)
    weights = folder / good.name
    manifest = compute_manifest(folder)
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    spec = ModelSpec("merl", "site-1", variant="checkpoint", weights_path=str(folder),
                     sha256=manifest.digest, config=config)
    outcome = run_validation(spec, manifest=manifest)
    assert outcome.passed is False
    assert f"weights file {good.name} changed since registration" in outcome.error
    assert [c["check"] for c in outcome.checks] == ["manifest"]
    assert outcome.load_seconds is None


def test_a_reference_value_missed_fails_its_check_with_the_numbers():
    case = case_for("ecg-measure")
    expect = case.expect_for("ecg-measure")
    expect["measurements"] = {**expect["measurements"],
                              "heart_rate": {"value": 120, "tolerance": 5, "unit": "/min"},
                              "qrs_fragmentation": {"value": 0, "tolerance": 1}}
    expect["findings"] = {"ecg-sinus-rhythm": "absent"}
    outcome = validate(default_spec("ecg-measure"), _study(case), expect)
    assert outcome.passed is False
    checks = {c["check"]: c for c in outcome.checks}
    hr = checks["measurement.heart_rate"]
    assert not hr["passed"]
    assert re.fullmatch(r"61\.\d+ /min, reference 120 ± 5 /min: off by 5\d\.\d+ /min",
                        hr["detail"]), hr["detail"]
    assert outcome.error == f"measurement.heart_rate: {hr['detail']}"  # the first failure
    assert "no measurement 'qrs_fragmentation'" in checks["measurement.qrs_fragmentation"][
        "detail"]
    assert checks["finding.ecg-sinus-rhythm"]["detail"] == (
        "ecg-sinus-rhythm present, expected absent")
    assert checks["measurement.qrs_duration"]["passed"]  # the others still checked
    _numbers(outcome)


def test_a_unit_that_differs_from_the_reference_fails():
    case = case_for("ecg-measure")
    expect = {"measurements": {"qrs_duration": {"value": 0.076, "tolerance": 0.01, "unit": "s"}}}
    outcome = validate(default_spec("ecg-measure"), _study(case), expect)
    assert not outcome.passed and "qrs_duration is in 'ms', the reference in 's'" in outcome.error


class SiteEngine:
    """A site plugin family (registered like tests/plugins' engines): it holds ``hold_mb`` of
    memory while loading and fails in run() when configured to."""

    family: ClassVar[str] = "test-site-hog"
    tasks: ClassVar[tuple[str, ...]] = ("measure",)
    domains: ClassVar[tuple[str, ...]] = ("ecg",)

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def load(self) -> None:
        block = np.ones(int(self.spec.config.get("hold_mb", 0)) << 20, np.uint8)
        self.checksum = int(block[::4096].sum())
        # held for ten sampling periods: where the kernel's high-water mark cannot be reset
        # (some sandboxes refuse /proc/self/clear_refs) only the sampler sees the peak
        time.sleep(10 * SAMPLE_SECONDS)
        del block

    def run(self, study: StudyInput) -> EngineResult:
        if self.spec.config.get("fail"):
            raise RuntimeError("the site model crashed")
        return EngineResult(model=ModelInfo(self.family, self.spec.version), trained=True)


@pytest.fixture
def site_family():
    from models import base

    register("test-site-hog")(SiteEngine)
    yield "test-site-hog"
    base._REGISTRY.pop("test-site-hog", None)


# Peak memory is the process's: in a long test process other threads free memory while the
# block is held, so the peak is measured in a fresh interpreter.
_PEAK_SCRIPT = """
import sys
from pathlib import Path
from models.base import ModelSpec, register
from models.runtime.validate import validate
from models.validation import case_for
from tests.runtime.test_validation_cases import SiteEngine, _study
register("test-site-hog")(SiteEngine)
case = case_for("test-site-hog", [Path(sys.argv[1])])
out = validate(ModelSpec("test-site-hog", "1", config={"hold_mb": 96}), _study(case), {})
print(out.passed, out.peak_memory_bytes)
"""


def _site_case(root: Path, name: str, families: list[str], **extra) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("waveform_ecg.dcm"), folder / "ecg.dcm")
    data = {"name": name, "domain": "ecg", "files": ["ecg.dcm"], "families": families,
            "prompt": None, **extra}
    (folder / "case.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_memory_is_sampled_and_a_crash_is_an_outcome(site_family, tmp_path):
    _site_case(tmp_path, "site-ecg", [site_family])
    case = case_for(site_family, [tmp_path])
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(tmp_path)], check=True,
                          capture_output=True, text=True, cwd=Path(__file__).parents[2],
                          timeout=300)
    passed, peak = done.stdout.split()[-2:]
    assert passed == "True", done.stdout + done.stderr
    assert int(peak) >= 64 << 20  # 96 MiB held for a moment during load
    crashed = validate(ModelSpec(site_family, "1", config={"fail": True}), _study(case), {})
    assert crashed.passed is False and crashed.run_seconds is None
    assert crashed.error == "RuntimeError: the site model crashed"
    assert isinstance(crashed.load_seconds, float)


@pytest.fixture
def site_dir(models_dir):
    return models_dir / "validation"


def test_a_site_case_is_found_before_the_bundled_one(site_dir, site_family):
    ours = {"ecg-measure": {"outputs": ["measurements"], "measurements": {
        "heart_rate": {"value": 61, "tolerance": 5, "unit": "/min"}}}}
    _site_case(site_dir, "our-ecg", ["ecg-measure", site_family], expect=ours)
    case, study = validation_study("ecg-measure")
    assert case.name == "our-ecg" and case.folder == (site_dir / "our-ecg").resolve()
    assert study.metadata[0]["Modality"] == "ECG" and study.domain == "ecg"
    outcome = run_validation(default_spec("ecg-measure"))
    assert outcome.passed and outcome.summary["case"] == "our-ecg"
    # the site's own plugin family has its case too; other families keep the bundled ones
    assert validation_study(site_family)[0].name == "our-ecg"
    assert validation_study("merl")[0].name == "ecg-12lead"


def test_a_family_without_a_case_is_a_case_error(site_dir):
    with pytest.raises(CaseError, match="no validation case names the family 'no-such-family'"):
        case_for("no-such-family")
    with pytest.raises(CaseError, match=re.escape(str(site_dir))):
        validation_study("no-such-family")
    with pytest.raises(CaseError):
        run_validation(ModelSpec("no-such-family", "1"))


@pytest.mark.parametrize(("change", "message"), [
    ({"colour": "blue"}, r"unknown key\(s\) \['colour'\]"),
    ({"files": ["ecg.dcm", "missing.dcm"]}, r"file missing\.dcm does not exist"),
    ({"files": ["../ecg.dcm"]}, "must be a relative path inside the case folder"),
    ({"domain": "mri"}, "'domain' must be one of"),
    ({"expect": {"ecg-measure": {"outputs": ["sounds"]}}}, r"must list kinds of"),
    ({"expect": {"ecg-measure": {"measurements": {"heart_rate": {"value": 60}}}}},
     r"measurement 'heart_rate' needs a 'tolerance' >= 0"),
    ({"expect": {"merl": {}}}, r"'expect' names \['merl'\], which 'families' does not list"),
    ({"prompt": {"question": "q", "instance_uid": "1.2.3", "box": [0, 0, 1, 1]}},
     "points at instance 1.2.3, which no file of the case is"),
    ({"before": {"ecg-measure": ["ecg-measure"]}}, "names the family itself"),
])
def test_a_malformed_case_json_is_refused_with_what_is_wrong(tmp_path, change, message):
    folder = _site_case(tmp_path, "broken", ["ecg-measure"])
    data = {**json.loads((folder / "case.json").read_text()), **change}
    (folder / "case.json").write_text(json.dumps(data))
    with pytest.raises(CaseError, match=message) as err:
        load_case(folder)
    assert str(folder / "case.json") in str(err.value)
    # a site folder holding it blocks the search, naming it, rather than being skipped
    with pytest.raises(CaseError, match=message):
        case_for("ecg-measure", [tmp_path])


def test_a_case_json_that_is_not_json_or_lacks_keys(tmp_path):
    folder = _site_case(tmp_path, "broken", ["ecg-measure"])
    (folder / "case.json").write_text("{not json")
    with pytest.raises(CaseError, match="not JSON"):
        load_case(folder)
    (folder / "case.json").write_text(json.dumps({"name": "x", "domain": "ecg"}))
    with pytest.raises(CaseError, match=r"missing key\(s\) \['files', 'families'\]"):
        load_case(folder)
    with pytest.raises(CaseError, match="no such file"):
        load_case(tmp_path / "nowhere")


def test_a_failure_of_the_family_run_before_is_named(site_dir):
    # a site case for the CT assistant whose study ct-quant cannot measure (no CT series)
    _site_case(site_dir, "not-ct", ["ct-assistant"], domain="ct",
               before={"ct-assistant": ["ct-quant"]})
    outcome = run_validation(default_spec("ct-assistant"))
    assert outcome.passed is False and outcome.summary == {"case": "not-ct"}
    assert outcome.error == ("ct-quant@1.0.0 (run before ct-assistant on case not-ct) failed: "
                             "the study has no CT series to measure")
    assert [c["check"] for c in outcome.checks] == ["before"]


def test_a_cuda_spec_records_gpu_memory_or_is_refused_without_cuda():
    import torch

    spec = replace(default_spec("merl"), device="cuda")
    outcome = run_validation(spec)
    if torch.cuda.is_available():
        assert outcome.passed, outcome.error
        assert isinstance(outcome.peak_gpu_bytes, int) and outcome.peak_gpu_bytes > 0
    else:
        assert outcome.passed is False and "cuda" in outcome.error.lower()
        assert outcome.peak_gpu_bytes is None and outcome.load_seconds is None
