"""Benchmark: MedGate's CXR report labeller against a plain keyword + NegEx-window peer.

Both run in the same process on the same hand-written set (tests/cxr/data/labeller_set.jsonl).
The peer uses the labeller's own plain mention phrases, calls a mention absent when a negation
trigger occurs within the 5 words before it and uncertain when an uncertainty trigger does
(NegEx, Chapman et al. 2001, without its post-triggers, pseudo-triggers or terminations), and
aggregates by the same CheXpert rule. Printed: per-observation F1 (metric:
``models.cxr.labeller.f1_by_observation``), macro-F1 for the whole set and for the held-out
batch, and reports per second on the set repeated to about 5,000 reports.

    .venv/bin/python bench/labeller.py
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.cxr import labeller  # noqa: E402

SET = ROOT / "tests" / "cxr" / "data" / "labeller_set.jsonl"

_NEG = re.compile(r"\b(?:no|not|without|negative for|free of|absence of|resolved|no evidence of)\b")
_UNC = re.compile(r"\b(?:possible|possibly|probable|may|might|could|likely|questionable|"
                  r"suspicious|concerning|suspected|cannot exclude|versus|vs)\b")
_WORDS = re.compile(r"\S+")


def baseline(text: str) -> dict[str, str]:
    """Keyword mention + NegEx window (5 words before): {code: state}."""
    low = text.lower()
    states: dict[str, list[str]] = {}
    for code, rx in labeller._PLAIN_RE.items():  # the labeller's own plain phrase lists
        for m in rx.finditer(low):
            window = " ".join(_WORDS.findall(low[:m.start()])[-5:])
            state = ("absent" if _NEG.search(window) else
                     "uncertain" if _UNC.search(window) else "present")
            states.setdefault(code, []).append(state)
    out = {}
    for code, found in states.items():
        best = max(found, key={"absent": 0, "uncertain": 1, "present": 2}.get)
        if code != "_other":
            out[code] = best
    finding = any(s != "absent" for c, ss in states.items() if c != "support_devices"
                  for s in ss)
    if states and not finding:
        out["no_finding"] = "present"
    return out


def medgate(text: str) -> dict[str, str]:
    return {lab.code: lab.state for lab in labeller.label(text)}


def main() -> None:
    items = [json.loads(line) for line in SET.read_text().splitlines() if line.strip()]
    gold = [i["labels"] for i in items]
    held = [n for n, i in enumerate(items) if i.get("batch") == "heldout"]
    f1 = {}
    for name, fn in (("medgate", medgate), ("baseline", baseline)):
        pred = [fn(i["text"]) for i in items]
        f1[name] = labeller.f1_by_observation(gold, pred)
        f1[name + "_heldout"] = labeller.f1_by_observation([gold[n] for n in held],
                                                           [pred[n] for n in held])
    print(f"set: {len(items)} items ({len(held)} held out), {SET.relative_to(ROOT)}")
    print("| observation | MedGate F1 | baseline F1 |\n|---|---|---|")
    for code in (*labeller.OBSERVATIONS, "macro"):
        name = f"**{code}**" if code == "macro" else code
        d = 4 if code == "macro" else 3
        print(f"| {name} | {f1['medgate'][code]:.{d}f} | {f1['baseline'][code]:.{d}f} |")
    print(f"| macro, held-out batch only | {f1['medgate_heldout']['macro']:.4f} | "
          f"{f1['baseline_heldout']['macro']:.4f} |")

    texts = [i["text"] for i in items]
    texts = (texts * (5000 // len(texts) + 1))[:5000]
    rates = {}
    for name, fn in (("medgate", lambda ts: labeller.label_many(ts)),
                     ("baseline", lambda ts: [baseline(t) for t in ts])):
        fn(texts[:200])  # warm
        t0 = time.perf_counter()
        fn(texts)
        rates[name] = len(texts) / (time.perf_counter() - t0)
    print(f"\nreports/s on {len(texts)} reports: MedGate {rates['medgate']:.0f}, baseline "
          f"{rates['baseline']:.0f}, ratio {rates['medgate'] / rates['baseline']:.2f}")


if __name__ == "__main__":
    main()
