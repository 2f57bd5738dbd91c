"""`medgate reports label --domain cxr FILE.jsonl`, run as a real subprocess on 3,000 lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from models.cxr.labeller import label

ROOT = Path(__file__).resolve().parents[2]
SET = Path(__file__).parent / "data" / "labeller_set.jsonl"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "reports", "label", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=240, input=stdin)


def test_three_thousand_reports_give_one_line_each_in_order(tmp_path):
    items = [json.loads(line) for line in SET.read_text().splitlines() if line.strip()]
    lines = [{"id": f"r{n}", "text": items[n % len(items)]["text"]} for n in range(3000)]
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    done = run("--domain", "cxr", str(path))

    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["id"] for o in out] == [x["id"] for x in lines]
    for o, x in zip(out[:len(items) + 5], lines, strict=False):
        assert o["findings"] == [lab.to_dict() for lab in label(x["text"])]
        for f in o["findings"]:
            s, e = f["span"]
            assert 0 <= s < e <= len(x["text"])


def test_a_bad_line_gets_an_error_line_naming_it_and_exit_1_the_rest_are_labelled(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"id": "a", "text": "No pneumothorax."}\n'
                    "this is not json\n"
                    '{"id": "b"}\n'
                    "\n"
                    '{"id": "c", "text": "Small left effusion."}\n')
    done = run("--domain", "cxr", str(path))
    assert done.returncode == 1
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["id"] for o in out] == ["a", None, "b", "c"]
    assert out[1]["line"] == 2 and "not JSON" in out[1]["error"]
    assert out[2]["line"] == 3 and '"text"' in out[2]["error"]
    assert out[3]["findings"] == [{"code": "pleural_effusion", "state": "present",
                                   "span": [11, 19]}]
    assert "line 2:" in done.stderr and "line 3:" in done.stderr


def test_standard_input_and_an_unknown_domain():
    done = run("-", stdin='{"id": 1, "text": "Cardiomegaly."}\n')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": 1, "findings": [
        {"code": "cardiomegaly", "state": "present", "span": [0, 12]}]}
    refused = run("--domain", "ct", "-", stdin="")
    assert refused.returncode == 2 and "cxr" in refused.stderr
