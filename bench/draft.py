"""Draft latency: from ``complete`` to a draft for the 12-lead ECG file, with the job's own
breakdown (queue wait, plan, engine load and run, derived objects, compose, write).

MedGate runs as ``python -m app.cli serve`` with its embedded worker (what ``make run`` starts)
on a temporary data folder, with the knowledge index copied from ``--kb`` (default: the
repository's ``var/kb``, built by ``make run``) or built first when there is none. Each round
stores pydicom's ``waveform_ecg.dcm`` under fresh UIDs by STOW-RS, completes the study
(``POST /api/v1/studies/{uid}/complete``) and polls the study every 20 ms until its report
exists. The first round loads the engines; the others find them loaded. The peer of the
latency is the job's own model time (engine load + run): what is left is MedGate's overhead.

    .venv/bin/python bench/draft.py [--rounds 5] [--kb DIR]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
STAGES = ("queue_wait", "plan", "load", "run", "shadow", "derived", "compose", "write")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"medgate {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def ecg_file(folder: Path, n: int) -> Path:
    """The ECG under new Study, Series and SOP Instance UIDs (a new study every round)."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / f"ecg{n}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def stow(client: httpx.Client, base: str, key: str, path: Path) -> None:
    boundary = "medgatebench"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    rsp = client.post(f"{base}/dicomweb/studies", content=body, headers={
        "Authorization": f"Bearer {key}", "Accept": "application/dicom+json",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    if rsp.status_code != 200:
        raise SystemExit(f"STOW-RS answered {rsp.status_code}: {rsp.text[:500]}")


def one_round(client: httpx.Client, base: str, keys: dict[str, str], folder: Path,
              n: int) -> tuple[float, dict]:
    path = ecg_file(folder, n)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    stow(client, base, keys["pacs"], path)
    reader = {"Authorization": f"Bearer {keys['clinician']}"}
    rsp = client.post(f"{base}/api/v1/studies/{uid}/complete", headers=reader)
    started = time.perf_counter()
    if rsp.status_code != 200:
        raise SystemExit(f"complete answered {rsp.status_code}: {rsp.text[:500]}")
    deadline = started + 300
    while time.perf_counter() < deadline:
        study = client.get(f"{base}/api/v1/studies/{uid}", headers=reader).json()
        done = [j for j in study.get("jobs", []) if j["state"] == "done"]
        if study.get("reports") and done:  # the report and its job commit together
            return time.perf_counter() - started, done[0]["timings"]
        failed = [j for j in study.get("jobs", []) if j["state"] == "failed"]
        if failed:
            raise SystemExit(f"the job failed: {failed[0]['error']}")
        time.sleep(0.02)
    raise SystemExit("no draft within 300 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kb", type=Path, default=REPO / "var" / "kb",
                    help="a built knowledge index to copy (built first when absent)")
    args = ap.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    root = Path(tempfile.mkdtemp(prefix="medgate-draft-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(root / "var"), MEDGATE_HTTP_HOST="127.0.0.1",
               MEDGATE_HTTP_PORT=str(port), MEDGATE_DICOM_PORT=str(free_port()),
               MEDGATE_DICOM_HOST="127.0.0.1")
    proc = None
    try:
        if (args.kb / "meta.json").is_file():
            shutil.copytree(args.kb, root / "var" / "kb")
        else:
            t = time.perf_counter()
            cli(env, "kb", "build")
            print(f"knowledge index built first: {time.perf_counter() - t:.1f} s (not counted)")
        cli(env, "db", "upgrade")
        keys = {role: cli(env, "keys", "create", "--role", role, "--name", f"bench-{role}",
                          *(["--person", "Dr Bench"] if role == "clinician" else []))
                .strip().splitlines()[-1] for role in ("pacs", "clinician")}
        log = root / "medgate.log"
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-migrate"],
                                env=env, cwd=REPO, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:
            for _ in range(300):
                try:
                    if client.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit(f"MedGate did not get ready; log {log}")
            (root / "in").mkdir()
            rounds = [one_round(client, base, keys, root / "in", n) for n in range(args.rounds)]
        _report(rounds)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _report(rounds: list[tuple[float, dict]]) -> None:
    print(f"\n{'round':<6} {'complete->draft s':>17} {'model s':>8} {'overhead s':>10}  "
          + " ".join(f"{s:>10}" for s in STAGES))
    overheads = []
    for i, (latency, timings) in enumerate(rounds):
        st = timings.get("stages", {})
        model = st.get("load", 0.0) + st.get("run", 0.0)
        overheads.append(latency - model)
        print(f"{i + 1:<6} {latency:>17.3f} {model:>8.3f} {latency - model:>10.3f}  "
              + " ".join(f"{st.get(s, float('nan')):>10.3f}" for s in STAGES))
    warm = rounds[1:] or rounds
    engines = {k: v for k, v in warm[-1][1].items() if "@" in k}
    print(f"\nwarm rounds (2..{len(rounds)}): complete->draft median "
          f"{statistics.median(r[0] for r in warm):.3f} s, overhead beyond model time median "
          f"{statistics.median(overheads[1:] or overheads):.3f} s; engine run seconds of the "
          f"last round: {engines}")


if __name__ == "__main__":
    main()
