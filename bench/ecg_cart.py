"""The acquiring cart's measurements beside MedGate's, for every DICOM ECG at hand that carries
them (pydicom's test files and /work/shared/data, searched recursively).

Table 1: RR, rate, PR, QRS, QT, QTc and the P/QRS/T axes: cart, MedGate, MedGate - cart.
Table 2: the cart's median-beat fiducials against MedGate's delineator run on the *same stored
median beat* (the cart's MEDIAN BEAT group) and on MedGate's own median beat, in ms from each
one's QRS onset. Where MedGate-on-the-cart's-beat agrees with the cart but MedGate's own median
does not, the difference comes from how the median beat is built, not from the delineator.

Run from the repository root:  .venv/bin/python bench/ecg_cart.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

FIDUCIAL_ROWS = (("p_on", "P onset"), ("p_off", "P offset"), ("qrs_on", "QRS onset"),
                 ("r", "R / fiducial point"), ("qrs_off", "QRS offset (J)"),
                 ("t_end", "T offset"))


def candidates() -> list[Path]:
    from pydicom.data import get_testdata_files

    from models.ecg.signal import is_ecg_file

    paths = [Path(p) for p in get_testdata_files()]
    if DATA.is_dir():
        paths += [p for p in sorted(DATA.rglob("*")) if p.is_file()]
    out = []
    for p in paths:
        if p.suffix.lower() in (".hea", ".dat", ".mat", ".atr", ".csv", ".txt", ".json"):
            continue  # WFDB and text files carry no DICOM annotations
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_ecg_file(p):
                out.append(p)
    return out


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def diff(ours: float | None, cart: float | None, angle: bool = False) -> float | None:
    if ours is None or cart is None:
        return None
    d = ours - cart
    return (d + 180.0) % 360.0 - 180.0 if angle else d


def measurement_table(cart, values: dict[str, float]) -> list[str]:
    rows = ["| measurement | cart | MedGate | difference (MedGate - cart) |",
            "|---|---|---|---|"]

    def get(name: str, formula: str | None = None):
        return next((m for m in cart.measurements if m.name == name
                     and (formula is None or m.formula == formula)), None)

    for label, name, ours_key in (
            ("RR (ms)", "rr_interval", "rr_interval"),
            ("heart rate (/min)", "heart_rate", "heart_rate"),
            ("PR (ms)", "pr_interval", "pr_interval"),
            ("QRS (ms)", "qrs_duration", "qrs_duration"),
            ("QT (ms)", "qt_interval", "qt_interval")):
        m = get(name)
        c = m.value if m else None
        o = values.get(ours_key)
        rows.append(f"| {label} | {fmt(c)} | {fmt(o)} | {fmt(diff(o, c), 1)} |")
    for m in (x for x in cart.measurements if x.name == "qtc"):
        stated = m.formula or "correction not stated"
        for ours_key, ours_label in (("qtc_bazett", "Bazett"), ("qtc_fridericia", "Fridericia")):
            o = values.get(ours_key)
            same = m.formula is None or m.formula == ours_label
            d = fmt(diff(o, m.value), 1) if same else "(other formula)"
            rows.append(f"| QTc (ms), cart: {stated}; MedGate: {ours_label} | {fmt(m.value)} "
                        f"| {fmt(o)} | {d} |")
    for k in ("p", "qrs", "t"):
        m = get(f"{k}_axis")
        c = m.value if m else None
        o = values.get(f"{k}_axis")
        rows.append(f"| {k.upper()} axis (deg) | {fmt(c)} | {fmt(o)} | "
                    f"{fmt(diff(o, c, angle=True), 1)} |")
    return rows


def delineate_stored_median(group, cart_fid, rr_ms: float) -> dict[str, float] | None:
    """MedGate's delineator on the cart's stored median beat, resampled to MedGate's 500 Hz
    (the rate its thresholds run at). Returns fiducial times in ms from the group start."""
    from models.ecg.delineate import delineate
    from models.ecg.signal import TARGET_FS, resample

    sig = resample(group.signals_mv, group.fs, TARGET_FS)
    fs = TARGET_FS
    # R: the largest summed deflection in the middle of the beat, found without the cart's
    # fiducials so the delineation stays MedGate's own
    dev = np.abs(sig - np.median(sig, axis=1, keepdims=True)).sum(axis=0)
    lo, hi = int(0.2 * sig.shape[1]), int(0.8 * sig.shape[1])
    r = lo + int(np.argmax(dev[lo:hi]))
    fid, _ = delineate(sig, fs, r, None, rr_ms, with_p=True)
    return {k: v * 1000.0 / fs for k, v in vars(fid).items() if v is not None}


def fiducial_table(rec, analysis_raw: dict, rr_ms: float) -> list[str]:
    cart_fid = rec.cart.median_fiducials
    if cart_fid is None:
        return ["(the cart stored no median-beat fiducials)"]
    group = next((g for g in rec.groups if g.label == cart_fid.group_label), None)
    ours_on_cart = delineate_stored_median(group, cart_fid, rr_ms) if group else None
    own = analysis_raw.get("median_fiducials_ms") or {}  # ms from MedGate's R
    rows = [f"Cart median beat: multiplex group {cart_fid.multiplex_group} "
            f"({cart_fid.group_label}, {cart_fid.fs:g} Hz, {cart_fid.n_samples} samples); "
            "MedGate's delineator on it at 500 Hz; ms from each beat's own QRS onset.", "",
            "| fiducial | cart | MedGate on cart's median | difference | MedGate's own median "
            "| difference |", "|---|---|---|---|---|---|"]
    on_c = ours_on_cart.get("qrs_on") if ours_on_cart else None
    on_o = own.get("qrs_on")
    for key, label in FIDUCIAL_ROWS:
        c = cart_fid.ms_from(key)
        a = (ours_on_cart[key] - on_c if ours_on_cart and key in ours_on_cart
             and on_c is not None else None)
        b = own[key] - on_o if key in own and on_o is not None else None
        rows.append(f"| {label} | {fmt(c)} | {fmt(a)} | {fmt(diff(a, c))} | {fmt(b)} | "
                    f"{fmt(diff(b, c))} |")
    if ours_on_cart and on_c is not None and cart_fid.get("qrs_on"):
        rows += ["", f"QRS onset on the stored beat: cart {cart_fid.get('qrs_on').ms:.0f} ms, "
                     f"MedGate {on_c:.0f} ms from the group start "
                     f"({on_c - cart_fid.get('qrs_on').ms:+.0f} ms)."]
    return rows


def main() -> None:
    from models.base import ModelSpec, StudyInput, build
    from models.ecg.signal import read_ecg

    engine = build(ModelSpec("ecg-measure", "1.0.0"))
    found = 0
    for path in candidates():
        try:
            rec = read_ecg(path)
        except ValueError as exc:
            print(f"{path.name}: not read ({exc})")
            continue
        if rec.cart is None or not rec.cart.measurements:
            continue
        found += 1
        res = engine.run(StudyInput("ecg", [path]))
        values = res.raw["values"]
        print(f"## {path.name} ({rec.cart.device or 'device not named'})\n")
        print("\n".join(measurement_table(rec.cart, values)))
        print()
        print("\n".join(fiducial_table(rec, res.raw, values.get("rr_interval", 1000.0))))
        if rec.cart.notes:
            print("\nReader notes: " + " | ".join(rec.cart.notes))
        print()
    if not found:
        print("no DICOM ECG with cart measurements found")


if __name__ == "__main__":
    main()
