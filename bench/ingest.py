"""Ingest benchmark: instances per second into MedGate and into Orthanc, same machine, same run.

A synthetic CT series (default 200 slices, 512x512, 16-bit, Explicit VR Little Endian, about
513 KiB each) is written with pydicom, then stored into each server by two paths:

* STOW-RS: one ``multipart/related; type="application/dicom"`` POST per ``--batch`` instances
  (default 10), streamed from disk with httpx by ``--clients`` concurrent clients (default 4),
  the same batching and concurrency for both servers;
* C-STORE: dcmtk ``storescu``, one association, all files.

Each path gets its own study (fresh UIDs), so nothing is a duplicate. Both servers get a short
warm-up first. MedGate runs as ``python -m app.cli serve`` (API, DICOM SCP and grouping loop; no
embedded AI worker, so nothing else competes for the CPU) on a temporary data folder, with
``--http-workers`` HTTP processes (default one per CPU; ``MEDGATE_HTTP_WORKERS``); Orthanc is
the Debian package with its DICOMweb plugin, a temporary configuration on loopback, and its own
defaults otherwise (SQLite index, ``SyncStorageArea`` on: it fsyncs like MedGate). Both stop at
the end and every temporary folder is removed.

The disk's own fsync rate is measured too, in the same temporary folder (the data folders'
filesystem): files of the instance's size written and fsynced one by one (file and folder each
time), in batches (each file fsynced, one folder fsync per batch), and in batches by as many
writers as there are clients. It is the physical ceiling of any durable store on this machine.

    .venv/bin/python bench/ingest.py [--slices 200] [--batch 10] [--clients 4] [--repeat 3]
                                     [--http-workers N] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGINS = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7"]
CHUNK = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the synthetic series

def phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A body-like ellipse (soft tissue, lungs, spine) in HU, to which each slice adds noise."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    img = np.full((size, size), -1000.0)                       # air
    img[(x / 0.85) ** 2 + (y / 0.65) ** 2 < 1] = 40.0           # soft tissue
    for cx in (-0.4, 0.4):
        img[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -850.0  # lungs
    img[(x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1] = 700.0    # vertebra
    return img + rng.normal(0, 5, img.shape)


def write_series(folder: Path, slices: int, size: int, seed: int) -> list[Path]:
    """A CT series with a realistic header; returns the file paths in slice order."""
    rng = np.random.default_rng(seed)
    base = phantom(size, rng)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    accession = f"BENCH{seed:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(slices):
        hu = base + rng.normal(0, 12, base.shape)
        pixels = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
        ds.StudyTime = ds.SeriesTime = "101500"
        ds.ContentTime = f"1015{i % 60:02d}"
        ds.AccessionNumber = accession
        ds.Modality = "CT"
        ds.Manufacturer = "MedGate Bench"
        ds.InstitutionName = "Synthetic Hospital"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
        ds.SeriesDescription = "AXIAL 1.25 mm"
        ds.ManufacturerModelName = "Phantom 3000"
        ds.PatientName = f"Bench^Patient{seed}"
        ds.PatientID = f"BENCH{seed:04d}"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "1.25"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = i + 1
        z = -200.0 + 1.25 * i
        ds.ImagePositionPatient = [-250.0, -250.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [0.976562, 0.976562]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = pixels.tobytes()
        path = folder / f"CT{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ---------------------------------------------------------------- servers

@dataclass
class Server:
    name: str
    http: str        # base URL of the DICOMweb root
    aet: str
    dicom_port: int
    headers: dict[str, str]
    procs: list[subprocess.Popen]
    log: Path

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_http(url: str, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{what} did not answer at {url}; log: {log}\n{tail(log)}")


def echo(port: int, aet: str) -> bool:
    return subprocess.run(["echoscu", "-to", "2", "-aec", aet, "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0


def tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def start_medgate(tmp: Path, http_workers: int) -> Server:
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGATE_")}
    env.update(MEDGATE_DATA_DIR=str(tmp / "var"), MEDGATE_DICOM_PORT=str(dicom_port),
               MEDGATE_DICOM_HOST="127.0.0.1", MEDGATE_HTTP_HOST="127.0.0.1",
               MEDGATE_HTTP_PORT=str(http_port), MEDGATE_EMBEDDED_WORKER="false",
               MEDGATE_HTTP_WORKERS=str(http_workers))
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=REPO, check=True, capture_output=True)
    created = subprocess.run([*cli, "keys", "create", "--role", "pacs", "--name", "bench"],
                             env=env, cwd=REPO, check=True, capture_output=True, text=True)
    key = created.stdout.strip().splitlines()[-1]
    for peer in ("BENCHSCU", "ECHOSCU"):  # the calling AE titles of storescu and echoscu
        subprocess.run([*cli, "peers", "add", peer, "--host", "127.0.0.1", "--store"], env=env,
                       cwd=REPO, check=True, capture_output=True)
    log = tmp / "medgate.log"
    procs = [subprocess.Popen([*cli, "serve", "--no-migrate"], env=env, cwd=REPO,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)]
    server = Server("MedGate", f"http://127.0.0.1:{http_port}/dicomweb", "MEDGATE", dicom_port,
                    {"Authorization": f"Bearer {key}"}, procs, log)
    try:
        _await_medgate(server, http_port, env, cli, tmp)
    except BaseException:
        server.stop()
        raise
    return server


def _await_medgate(server: Server, http_port: int, env: dict[str, str], cli: list[str],
                   tmp: Path) -> None:
    """`medgate serve` starts the API and the DICOM SCP; wait for both to answer."""
    wait_http(f"http://127.0.0.1:{http_port}/healthz", "MedGate", server.log)
    deadline = time.monotonic() + 60
    while not echo(server.dicom_port, "MEDGATE"):
        if time.monotonic() > deadline:
            raise SystemExit(f"MedGate's DICOM SCP did not answer\n{tail(server.log)}")
        time.sleep(0.3)


def start_orthanc(tmp: Path) -> Server:
    http_port, dicom_port = free_port(), free_port()
    plugin = next((p for p in DICOMWEB_PLUGINS if Path(p).exists()), None)
    if plugin is None:
        raise SystemExit("the Orthanc DICOMweb plugin is not installed (orthanc-dicomweb)")
    config = {
        "Name": "bench", "StorageDirectory": str(tmp / "storage"),
        "IndexDirectory": str(tmp / "index"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [plugin], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomCheckCalledAet": False, "SaveJobs": False,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log = tmp / "orthanc.log"
    proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = Server("Orthanc", f"http://127.0.0.1:{http_port}/dicom-web", "ORTHANC", dicom_port,
                    {}, [proc], log)
    try:
        wait_http(f"http://127.0.0.1:{http_port}/system", "Orthanc", log)
    except BaseException:
        server.stop()
        raise
    return server


# ---------------------------------------------------------------- the two paths

def multipart(paths: list[Path], boundary: str) -> tuple[Iterator[bytes], int]:
    head = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
    end = f"\r\n--{boundary}--\r\n".encode()
    length = sum(len(head) + p.stat().st_size + 2 for p in paths) - 2 + len(end)

    def body() -> Iterator[bytes]:
        for i, path in enumerate(paths):
            yield (b"\r\n" if i else b"") + head
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    yield chunk
        yield end
    return body(), length


def _post(client: httpx.Client, server: Server, part: list[Path]) -> None:
    boundary = uuid.uuid4().hex
    body, length = multipart(part, boundary)
    headers = {**server.headers, "Accept": "application/dicom+json",
               "Content-Length": str(length),
               "Content-Type": f'multipart/related; type="application/dicom"; '
                               f"boundary={boundary}"}
    rsp = client.post(f"{server.http}/studies", content=body, headers=headers)
    stored = len(rsp.json().get("00081199", {}).get("Value", [])) if rsp.content else 0
    if rsp.status_code != 200 or stored != len(part):
        raise SystemExit(f"{server.name} STOW-RS answered {rsp.status_code} with "
                         f"{stored}/{len(part)} stored: {rsp.text[:500]}")


def stow(server: Server, paths: list[Path], batch: int, clients: int = 1) -> float:
    """Store ``paths`` by STOW-RS, ``batch`` instances per request, ``clients`` requests in
    flight at a time (each client its own connection); returns seconds."""
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    workers = max(1, min(clients, len(batches)))
    pool = [httpx.Client(timeout=600) for _ in range(workers)]
    try:
        def run(w: int) -> None:
            for part in batches[w::workers]:
                _post(pool[w], server, part)

        with ThreadPoolExecutor(workers) as ex:
            start = time.perf_counter()
            for f in [ex.submit(run, w) for w in range(workers)]:
                f.result()
            return time.perf_counter() - start
    finally:
        for client in pool:
            client.close()


def cstore(server: Server, folder: Path) -> float:
    """Store every file of ``folder`` with one storescu association; returns seconds."""
    cmd = ["storescu", "-R", "+sd", "-aet", "BENCHSCU", "-aec", server.aet, "127.0.0.1",
           str(server.dicom_port), str(folder)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"storescu to {server.name} failed: {done.stderr[-2000:]}")
    return seconds


def count(server: Server, study: str) -> int:
    rsp = httpx.get(f"{server.http}/studies", params={"StudyInstanceUID": study,
                                                      "includefield": "00201208"},
                    headers={**server.headers, "Accept": "application/dicom+json"}, timeout=60)
    rsp.raise_for_status()
    found = rsp.json()
    return int(found[0]["00201208"]["Value"][0]) if found else 0


# ---------------------------------------------------------------- the disk

def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(folder: Path, names: list[str], data: bytes, batch: int) -> None:
    """Write ``names``; each file is fsynced, and its folder once per ``batch`` files."""
    for i in range(0, len(names), batch):
        fds = []
        for name in names[i:i + batch]:
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            fds.append(fd)
        for fd in fds:
            os.fsync(fd)
            os.close(fd)
        _fsync_dir(folder)


def disk_rates(folder: Path, files: int, size: int, batch: int,
               writers: int) -> list[tuple[str, float]]:
    """Files per second written durably into ``folder``'s filesystem: (label, files/s)."""
    data = os.urandom(size)
    out = []
    for label, per, n in (("fsync each file and its folder, 1 writer", 1, 1),
                          (f"fsync each file, folder once per {batch}, 1 writer", batch, 1),
                          (f"fsync each file, folder once per {batch}, {writers} writers",
                           batch, writers)):
        names = [f"f{i:05d}.bin" for i in range(files)]
        subs = [folder / f"w{w}" for w in range(n)]
        for sub in subs:
            sub.mkdir(parents=True)
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as ex:
            for f in [ex.submit(_write_durably, subs[w], names[w::n], data, per)
                      for w in range(n)]:
                f.result()
        out.append((label, files / (time.perf_counter() - start)))
        for sub in subs:
            shutil.rmtree(sub)
    return out


# ---------------------------------------------------------------- main

def machine() -> str:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    orthanc = subprocess.run([ORTHANC_BIN, "--version"], capture_output=True, text=True)
    return (f"{platform.node()}: nproc={os.cpu_count()} ({cpu}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, pydicom "
            f"{pydicom.__version__}, {orthanc.stdout.splitlines()[0] if orthanc.stdout else ''}")


def warm_up(servers: list[Server], root: Path, size: int, batch: int, clients: int) -> None:
    """A few instances by each path into each server (imports, caches, first connections)."""
    files = write_series(root / "data" / "warmup", 2 * clients + 2, size, seed=1)
    for server in servers:
        stow(server, files[:2 * clients], 2, clients)
        folder = root / "data" / "warmup-cstore"
        folder.mkdir(exist_ok=True)
        for p in files[2 * clients:]:
            shutil.copy(p, folder / p.name)
        cstore(server, folder)
        shutil.rmtree(folder)
    shutil.rmtree(root / "data" / "warmup")


def one_round(servers: list[Server], root: Path, args: argparse.Namespace,
              seed: int) -> dict[tuple[str, str], float]:
    """Fresh STOW and C-STORE series (new UIDs), stored into every server; seconds by
    (server, path). The series are deleted afterwards."""
    series = {name: write_series(root / "data" / name, args.slices, args.size, seed + i)
              for i, name in enumerate(("stow", "cstore"))}
    out: dict[tuple[str, str], float] = {}
    for server in servers:
        out[server.name, "STOW-RS"] = stow(server, series["stow"], args.batch, args.clients)
        out[server.name, "C-STORE"] = cstore(server, root / "data" / "cstore")
        for path_name, files in (("STOW-RS", series["stow"]), ("C-STORE", series["cstore"])):
            study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            got = count(server, study)
            if got != len(files):
                raise SystemExit(f"{server.name} {path_name}: {got}/{len(files)} indexed")
    shutil.rmtree(root / "data" / "stow")
    shutil.rmtree(root / "data" / "cstore")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="rows and columns")
    ap.add_argument("--batch", type=int, default=10, help="instances per STOW-RS request")
    ap.add_argument("--clients", type=int, default=4, help="concurrent STOW-RS clients")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds (fresh series each); the median round is reported")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--http-workers", type=int, default=os.cpu_count() or 1,
                    help="MEDGATE_HTTP_WORKERS for MedGate (default: one per CPU, as Orthanc's "
                         "HTTP threads use every core)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="medgate-bench-ingest-"))
    servers: list[Server] = []
    try:
        print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
        print(f"machine: {machine()}")
        print(f"MedGate: MEDGATE_HTTP_WORKERS={args.http_workers} (HTTP server processes); "
              "Orthanc: its own thread pool")
        # appended at once: stopped on error
        servers.append(start_medgate(root / "medgate", args.http_workers))
        servers.append(start_orthanc(root / "orthanc"))
        warm_up(servers, root, args.size, args.batch, args.clients)
        rounds = []
        for r in range(args.repeat):
            rounds.append(one_round(servers, root, args, seed=10 + 2 * r))
        instance = args.size * args.size * 2 + 2048
        disk = [disk_rates(root / "disk", args.slices, instance, args.batch, args.clients)
                for _ in range(args.repeat)]
        mib = args.slices * instance / 2**20
        print(f"series: {args.slices} CT slices {args.size}x{args.size} 16-bit (~{mib:.0f} MiB) "
              f"per path and round; STOW-RS {args.batch} instances per request, {args.clients} "
              f"concurrent clients; C-STORE one storescu association; {args.repeat} round(s), "
              "median shown")
        (mg, orth) = (servers[0].name, servers[1].name)
        print(f"\n{'path':<9} {'server':<48} {'seconds':>8} {'inst/s':>8} {'min-max inst/s':>15}")
        for path_name in ("STOW-RS", "C-STORE"):
            for name in (mg, orth):
                rates = [args.slices / r[name, path_name] for r in rounds]
                med = statistics.median(rates)
                print(f"{path_name:<9} {name:<48} {args.slices / med:8.2f} {med:8.1f} "
                      f"{min(rates):7.1f}-{max(rates):<7.1f}")
        print()
        for path_name in ("STOW-RS", "C-STORE"):
            ratios = [r[orth, path_name] / r[mg, path_name] for r in rounds]
            ratio = statistics.median(ratios)
            print(f"ratio MedGate/Orthanc instances per second, {path_name}: {ratio:.2f} "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"{'at least' if ratio >= 1 else 'below'} Orthanc)")
        print(f"\ndisk (same filesystem as the data folders), {args.slices} files of "
              f"{instance / 2**20:.2f} MiB, median of {args.repeat}:")
        for k, (label, _) in enumerate(disk[0]):
            rate = statistics.median(d[k][1] for d in disk)
            print(f"  {label:<52} {rate:8.1f} files/s {rate * instance / 2**20:8.1f} MiB/s")
        best = max(statistics.median(d[k][1] for d in disk) for k in range(len(disk[0])))
        stow_mg = statistics.median(args.slices / r[mg, "STOW-RS"] for r in rounds)
        print(f"MedGate STOW-RS at {stow_mg / best:.0%} of the disk's best durable file rate "
              f"({stow_mg:.1f} of {best:.1f} files/s)")
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
