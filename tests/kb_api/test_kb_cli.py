"""`medgate kb check` accepts the project's corpus and names what is wrong with a broken one."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def _check(root):
    return subprocess.run([sys.executable, "-m", "app.cli", "kb", "check", "--root", str(root)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_kb_check_accepts_the_corpus_and_rejects_broken_entries(tmp_path):
    ok = _check(ROOT / "knowledge_base")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "kb"
    shutil.copytree(ROOT / "knowledge_base", broken)
    af = broken / "ecg" / "ecg-atrial-fibrillation.md"
    af.write_text(af.read_text().replace("domain: ecg", "domain: cardiology"))
    (broken / "ecg" / "ecg-copy.md").write_text(
        (broken / "ecg" / "ecg-lbbb.md").read_text().replace("id: ecg-lbbb", "id: ecg-copy")
        .replace("title:", "titel:"))
    shutil.copy(broken / "ecg" / "ecg-rbbb.md", broken / "cxr" / "ecg-rbbb.md")  # same id twice
    bad = _check(broken)
    assert bad.returncode == 1
    out = bad.stdout
    assert "ecg-atrial-fibrillation" in out and "cardiology" in out
    assert "ecg-copy" in out and "title" in out
    assert "duplicate" in out.lower() and "ecg-rbbb" in out
