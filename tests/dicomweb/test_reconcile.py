"""After a crash the store and the database agree again (issue 10, item 1): dead writers'
temporary files go, whole and valid files without a row are indexed, anything else is
quarantined (never deleted), and rows without a file are reported. Both databases."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pydicom
from pydicom.uid import generate_uid

from tests.conftest import ROOT
from tests.dicomweb.conftest import make_instance, row_counts


def _write(path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_crash_leftovers_are_indexed_quarantined_or_reported(medgate):
    from app.db.session import session_factory
    from app.dicom import store
    from app.dicom.reconcile import reconcile

    factory = session_factory()
    root = medgate.store_dir
    tmp_kept = store.tmp_dir()
    # 1. stored the ordinary way
    good = tmp_kept / "good.dcm"
    good.write_bytes(make_instance())
    kept = store.store_path(factory, good)
    good.unlink()
    # 2. renamed into place, transaction lost: a whole, valid instance without a row
    orphan_bytes = make_instance(PatientID="PID-ORPHAN")
    ds = pydicom.dcmread(io.BytesIO(orphan_bytes), stop_before_pixels=True)
    orphan = store.final_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    _write(orphan, orphan_bytes)
    # 3. half a file at a final path
    half = root / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    _write(half, orphan_bytes[: len(orphan_bytes) // 2])
    # 4. valid, but its series belongs to another study: the store would refuse it
    clash = make_instance(series=kept.series_uid, study=generate_uid())
    cds = pydicom.dcmread(io.BytesIO(clash), stop_before_pixels=True)
    clash_path = store.final_path(cds.StudyInstanceUID, cds.SeriesInstanceUID,
                                  cds.SOPInstanceUID)
    _write(clash_path, clash)
    # 5. spool files: a writer of this host that is gone, this live process, another host
    other_host = tmp_kept / "in-somehost-0-abc.part"
    other_host.write_bytes(b"x")
    gone = tmp_kept / f"in-{store.WRITER.split('-')[0]}-999999999-abc.part"
    gone.write_bytes(b"x")
    live = tmp_kept / f"in-{store.WRITER}-live.part"
    live.write_bytes(b"x")
    # 6. a row whose file vanished
    lost_file = tmp_kept / "lost.dcm"
    lost_file.write_bytes(make_instance())
    lost = store.store_path(factory, lost_file)
    lost_file.unlink()
    lost.path.unlink()
    before = row_counts()

    # the CLI reports without touching anything
    out = subprocess.run([sys.executable, "-m", "app.cli", "store", "check", "--min-age", "0",
                          "--json"], cwd=ROOT, env=dict(os.environ), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    found = json.loads(out.stdout)
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert sorted(found["orphans"]) == sorted([rel(orphan), rel(half), rel(clash_path)])
    assert found["stale_tmp"] == 1 and found["missing"] == [rel(lost.path)]
    assert row_counts() == before and half.exists()

    done = reconcile(factory, repair=True, min_age=0)
    assert done.indexed == [rel(orphan)]
    reasons = dict(done.quarantined)
    assert set(reasons) == {rel(half), rel(clash_path)}
    assert reasons[rel(half)].startswith("refused:")
    assert "already belongs to another study" in reasons[rel(clash_path)]
    quarantine = medgate.data_dir.resolve() / "quarantine"
    assert (quarantine / rel(half)).read_bytes() == orphan_bytes[: len(orphan_bytes) // 2]
    assert not half.exists() and not clash_path.exists()
    assert done.removed_tmp == [gone.name] and live.exists() and other_host.exists()
    assert done.missing == [rel(lost.path)]
    after = row_counts()
    assert after["instance"] == before["instance"] + 1
    assert orphan.read_bytes() == orphan_bytes
    # a second pass finds only what needs a person
    again = reconcile(factory, repair=True, min_age=0)
    assert (again.indexed, again.quarantined, again.missing) == ([], [], [rel(lost.path)])
    live.unlink()
    other_host.unlink()
