"""Label chest radiograph report text with the 14 CheXpert observations (present/absent/uncertain).

Rule-based, in the tradition of NegEx/ConText (Chapman et al. 2001; Harkema et al. 2009) and the
CheXpert labeller (Irvin et al., AAAI 2019): sentences are split, observation mentions are found
from phrase lists (laterality and de-identification placeholders such as ``XXXX`` are ordinary
words and never break a match), then each mention's state comes from the negation and uncertainty
triggers whose scope reaches it (pre-triggers scope forward, post-triggers backward, to the end
of the sentence or a termination term; the nearest trigger wins). Mentions are aggregated per
report by CheXpert's rule: present beats uncertain beats absent; ``no_finding`` is present only
when no observation other than support devices (and no other abnormality such as emphysema or
scoliosis) is present or uncertain.

Three kinds of mention:

- plain phrases ("pneumothorax", "right pleural effusion"): their state is ConText's;
- anatomy with a descriptor ("heart size is normal", "widened mediastinum"): the descriptor
  gives the state, and only a trigger right before it (two words: "no cardiac enlargement")
  changes it;
- fixed phrases ("no acute cardiopulmonary process", "costophrenic angles are sharp"): their
  state is part of the phrase.

Why not medspacy/negspacy: medspacy 1.3 on Python 3.11 pins spaCy < 3.8 and so numpy < 2, which
would downgrade the numpy that torch, MONAI and faiss use here; negspacy scopes negation only (no
uncertainty) and brings spaCy and a dozen packages for it. This module is pure Python regular
expressions (a few thousand reports per second on one core: docs/benchmarks.md).

It never imports ``app`` and does no I/O.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

VERSION = "1.0.0"

OBSERVATIONS: tuple[str, ...] = (
    "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema",
    "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion",
    "pleural_other", "fracture", "support_devices", "no_finding",
)
STATES: tuple[str, ...] = ("present", "absent", "uncertain")

# Each observation's knowledge entry (knowledge_base/cxr/<id>.md).
KNOWLEDGE: dict[str, str] = {
    "enlarged_cardiomediastinum": "cxr-enlarged-cardiomediastinum",
    "cardiomegaly": "cxr-cardiomegaly",
    "lung_opacity": "cxr-lung-opacity",
    "lung_lesion": "cxr-lung-lesion",
    "edema": "cxr-pulmonary-oedema",
    "consolidation": "cxr-consolidation",
    "pneumonia": "cxr-pneumonia",
    "atelectasis": "cxr-atelectasis",
    "pneumothorax": "cxr-pneumothorax",
    "pleural_effusion": "cxr-pleural-effusion",
    "pleural_other": "cxr-pleural-other",
    "fracture": "cxr-fracture",
    "support_devices": "cxr-support-devices",
    "no_finding": "cxr-no-finding",
}

# Internal: abnormalities outside the 14 that still rule out "no finding" (CheXpert's own list
# does the same), and the phrases that say the study is normal.
_OTHER = "_other"
_NORMAL = "no_finding"


@dataclass(frozen=True)
class Label:
    """One observation's state, with the character span of the mention that decided it and the
    span of that mention's sentence (both ``[start, end)`` into the labelled text)."""

    code: str
    state: str
    span: tuple[int, int]
    sentence: tuple[int, int]

    def __post_init__(self) -> None:
        if self.code not in OBSERVATIONS:
            raise ValueError(f"unknown observation {self.code!r}")
        if self.state not in STATES:
            raise ValueError(f"unknown state {self.state!r}; states are {STATES}")
        (s, e), (ss, se) = self.span, self.sentence
        if not (0 <= ss <= s < e <= se):
            raise ValueError(f"span {self.span} must lie inside sentence {self.sentence}")

    def to_dict(self) -> dict:
        return {"code": self.code, "state": self.state, "span": list(self.span)}


# --- mention phrases -------------------------------------------------------------------------
# Regular expressions over lower-cased text; \b is added around each. "s?" plurals, "[- ]?"
# hyphens. Written for MedGate with CheXpert's phrase lists as a guide.

_PLAIN: dict[str, list[str]] = {
    "enlarged_cardiomediastinum": [
        r"mediastinal (?:widening|enlargement|mass(?:es)?)", r"widening of the mediastinum",
        r"enlargement of the (?:cardio)?mediastin\w*(?: silhouette| contours?)?",
    ],
    "cardiomegaly": [
        r"cardiomegaly", r"cardiac enlargement", r"enlarged heart", r"cardiomyopathy",
        r"enlargement of the (?:heart|cardiac silhouette)",
    ],
    "lung_opacity": [
        r"opacit(?:y|ies)", r"opacification", r"opacified", r"air[- ]?space (?:disease|opacit\w+)",
        r"infiltrat(?:e|es|ion|ive)", r"increased (?:density|densities)",
        r"(?:increased )?interstitial (?:markings?|opacit\w+|pattern|lung disease|prominence)",
        r"reticular(?:\w+)?(?: (?:opacit\w+|markings?|pattern))?", r"reticulation",
        r"(?:parenchymal |linear |lung |pulmonary )?scarring", r"haziness", r"hazy",
        r"ground[- ]glass(?: opacit\w+)?",
    ],
    "lung_lesion": [
        r"mass(?:es)?", r"nodules?", r"nodular (?:opacit\w+|densit\w+|lesions?)", r"lump",
        r"(?:lung |pulmonary |cavitary |cavitating )lesions?", r"tumou?rs?", r"neoplasms?",
        r"carcinoma", r"malignancy", r"cavitation", r"cavity",
    ],
    "edema": [
        r"o?edema(?:tous)?", r"pulmonary (?:vascular )?congestion", r"vascular congestion",
        r"(?:congestive )?heart failure", r"chf", r"fluid overload", r"kerley(?: b)? lines",
        r"septal lines",
    ],
    "consolidation": [r"consolidat(?:ion|ions|ive|ed)"],
    "pneumonia": [
        r"(?:broncho)?pneumonias?", r"infection", r"infectious(?: process)?",
        r"pneumonic", r"pneumonitis",
    ],
    "atelectasis": [r"atelecta\w*", r"collapse[ds]?", r"volume loss"],
    "pneumothorax": [r"(?:hydro)?pneumothora(?:x|ces)", r"ptx"],
    "pleural_effusion": [
        r"(?:pleural )?effusions?", r"pleural fluid", r"hydrothorax", r"hydropneumothorax",
        r"fluid in the (?:\w+ ){0,2}(?:pleural space|fissure)",
    ],
    "pleural_other": [
        r"pleural (?:thickening|plaques?|scar(?:ring)?|calcifications?|fibrosis)",
        r"pleuro[- ]?parenchymal (?:scar(?:ring)?|thickening|opacit\w+)", r"fibrothorax",
        r"pleural[- ]based (?:thickening|opacit\w+)", r"apical (?:pleural )?(?:cap|capping)",
    ],
    "fracture": [r"fractur(?:e|es|ed)", r"fx"],
    "support_devices": [
        r"(?:endotracheal|tracheostomy|trach|et|nasogastric|ng|orogastric|og|feeding|chest|"
        r"enteric|gastric|dobhoff|thoracostomy|pleural|mediastinal) tubes?", r"ett",
        r"tracheostomy", r"(?:central |venous |arterial |dialysis |pulmonary artery |"
        r"swan[- ]ganz |picc |subclavian |jugular |ij |femoral |midline |pigtail |"
        r"indwelling |port[- ]a[- ]cath |tunnell?ed |hemodialysis )+(?:\w+ )?"
        r"(?:lines?|catheters?)", r"picc", r"catheters?", r"pacemakers?", r"pacers?",
        r"(?:pacing |pacer |icd |pacemaker |cardiac |transvenous )leads?",
        r"(?:a)?icd", r"defibrillators?", r"(?:sternotomy|sternal|cerclage) wires?",
        r"median sternotomy", r"sternotomy", r"(?:surgical |vascular )?clips",
        r"(?:prosthetic|mechanical|replacement) (?:\w+ )?valves?", r"valve replacement",
        r"stents?", r"port[- ]?a[- ]?cath", r"(?:chest |power |infusion |venous )ports?",
        r"drains?", r"(?:surgical |orthopedic |fixation |spinal |fusion )hardware",
        r"loop recorder", r"lvad", r"left ventricular assist device", r"impella",
        r"intra[- ]?aortic balloon pump", r"iabp", r"(?:monitoring|ecg|ekg) leads",
        r"(?:support )?devices?", r"lines and tubes", r"tubes and lines", r"lines/tubes",
        r"ng/og tube", r"lines or tubes", r"tubes or lines",
    ],
    _OTHER: [
        r"emphysema(?:tous)?", r"hyperinflat\w*", r"hyperexpan\w*", r"scoliosis",
        r"kyphosis", r"granulomas?", r"granulomatous", r"hiatal? hernia", r"hiatus hernia",
        r"degenerative (?:changes?|disease)", r"spondylosis", r"osteopenia",
        r"calcifi(?:cation|cations|ed)", r"atherosclero\w+", r"tortuous(?: \w+)?",
        r"tortuosity", r"pneumomediastinum", r"pneumoperitoneum", r"free (?:intraperitoneal )?air",
        r"subcutaneous (?:emphysema|air|gas)", r"copd", r"bronchiectasis",
        r"(?:elevated|elevation of the) (?:\w+ )?hemidiaphragm", r"eventration",
        r"metasta\w+", r"bullae?", r"bullous", r"hilar (?:enlargement|prominence|adenopathy)",
        r"lymphadenopathy", r"adenopathy", r"aortic (?:unfolding|ectasia|aneurysm)",
        r"bronchial wall thickening", r"peribronchial (?:thickening|cuffing)",
        r"cephalization", r"deformity", r"osteophytes?",
    ],
}

# Fixed phrases: (observation, state, pattern). The state is part of the wording.
_FIXED: list[tuple[str, str, str]] = [
    (_NORMAL, "present", r"no acute (?:cardiopulmonary|cardiothoracic|intrathoracic|chest|"
                         r"pulmonary|cardiac or pulmonary)? ?(?:process|processes|abnormalit"
                         r"(?:y|ies)|disease|findings?|pathology|changes?|osseous \w+)"),
    (_NORMAL, "present", r"no (?:active|significant) (?:cardiopulmonary |intrathoracic )?"
                         r"(?:disease|process|abnormality)"),
    (_NORMAL, "present", r"(?:the )?lungs (?:are|remain|appear) (?:\w+ )?clear"),
    (_NORMAL, "present", r"clear lungs"),
    (_NORMAL, "present", r"normal (?:chest )?(?:radiograph|x[- ]?ray|study|examination|exam|"
                         r"film|chest)"),
    (_NORMAL, "present", r"no (?:radiographic |radiological )?(?:evidence of )?"
                         r"acute cardiopulmonary disease"),
    (_NORMAL, "present", r"unremarkable (?:chest )?(?:radiograph|x[- ]?ray|study|examination)"),
    (_NORMAL, "present", r"(?:chest|study|radiograph|examination) (?:is )?(?:otherwise )?"
                         r"(?:normal|unremarkable)"),
    ("pleural_effusion", "absent", r"(?:costophrenic|cp) angles? (?:are|is|remain) "
                                   r"(?:sharp|clear|preserved|well[- ]defined)"),
    ("pleural_effusion", "absent", r"sharp (?:costophrenic|cp) angles?"),
    ("pleural_effusion", "uncertain", r"blunting of the (?:\w+ )?(?:costophrenic|cp) angles?"),
    ("pleural_effusion", "uncertain", r"blunted (?:\w+ )?(?:costophrenic|cp) angles?"),
    ("pleural_effusion", "uncertain", r"(?:\w+ )?(?:costophrenic|cp) angles? (?:is|are) "
                                      r"(?:\w+ )?blunted"),
]

# Anatomy + descriptor: the descriptor gives the state.
_HEART = (r"(?:heart(?: size| silhouette| shadow| contours?)?|cardiac (?:size|silhouette|"
          r"shadow|contours?|diameter|dimensions)|cardiac(?= (?:and|&) mediastinal))")
_MEDIASTINUM = (r"(?:cardio[- ]?mediastinal(?: silhouette| contours?| size| width| shadow)?|"
                r"cardio[- ]?mediastinum|(?:superior )?mediastinum|mediastinal (?:silhouette|"
                r"contours?|width|configuration|shadow))")
_DESC = re.compile(
    r"\b(?P<uncertain>borderline(?: enlarged| size| in size)?|top[- ]normal|upper (?:limits? "
    r"of )?normal|(?:at )?(?:the )?upper limits? of normal|stable|unchanged|similar|"
    r"not (?:significantly |well )?(?:changed|assessed|evaluated))\b|"
    r"\b(?P<absent>not (?:\w+ )?(?:enlarged|widened|increased|prominent)|normal|"
    r"unremarkable|within normal limits|wnl|upper normal limits)\b|"
    r"\b(?P<present>enlarged|enlargement|widened|widening|wide|large|increased|prominent|"
    r"prominence|cardiomegaly)\b")
_ANATOMY: list[tuple[str, str]] = [("cardiomegaly", _HEART),
                                   ("enlarged_cardiomediastinum", _MEDIASTINUM)]
_CLAUSE_BREAK = re.compile(r"[,;:()]|\b(?:and (?:the|there|a|an|no)|but|with|without|while|"
                           r"whereas|however|although)\b")
_ANATOMY_AFTER_WORDS = 8
_ANATOMY_BEFORE_WORDS = 5
_ANATOMY_TRIGGER_WORDS = 2

# --- ConText triggers ------------------------------------------------------------------------
# (kind, direction, phrases). Literal phrases; longest match wins where several start together.
# kind: neg, unc, pseudo (a phrase that looks like a trigger and is not), term (ends a scope).
_IS = ("is", "are", "was", "were", "has been", "have been")


def _with_verbs(*tails: str, bare: bool = True) -> list[str]:
    return [f"{v} {t}" for v in _IS for t in tails] + (list(tails) if bare else [])


_TRIGGERS: list[tuple[str, str, list[str]]] = [
    ("neg", "fwd", [
        "no", "not", "without", "no evidence of", "no radiographic evidence of", "no sign of",
        "no signs of", "no definite", "no convincing", "no findings of", "no findings to suggest",
        "negative for", "free of", "clear of", "absence of", "absent", "resolution of",
        "interval resolution of", "resolved", "resolving of", "removal of",
        "interval removal of", "no longer", "there is no", "there are no", "nor", "neither",
        "rules out", "ruled out", "exclude", "excluded", "no residual", "no visible",
        "to suggest", "to indicate",
        "no appreciable", "no discernible", "no focal", "no suspicious",
    ]),
    ("neg", "bwd", [
        *_with_verbs("not seen", "not identified", "not present", "not demonstrated",
                     "not evident", "not visualized", "not appreciated", "not visible",
                     "not detected", "absent", "resolved", "cleared", "removed",
                     "excluded", "ruled out", "no longer seen", "no longer present",
                     "no longer visible", "no longer identified"),
        "has resolved", "have resolved", "resolved", "has cleared", "have cleared",
        "removed", "is gone", "are gone", "not seen", "not identified",
    ]),
    ("unc", "fwd", [
        "possible", "possibly", "probable", "probably", "likely", "most likely", "questionable",
        "question of", "suspected", "suspect", "suspicious for", "suspicion for",
        "suspicion of", "concerning for", "concern for", "worrisome for", "may represent",
        "may reflect", "may indicate", "could represent", "could reflect", "might represent",
        "may be", "could be", "might be", "may", "might", "could", "suggestive of",
        "suggesting", "suggests", "suggest", "cannot exclude", "can not exclude",
        "can't exclude", "cannot rule out", "can not rule out", "cannot be excluded",
        "differential diagnosis includes", "differential includes", "differential diagnosis of",
        "presumed", "presumably", "equivocal", "borderline", "no new", "no evidence to rule out",
        "clinical correlation for", "correlate clinically for", "versus", "vs", "vs.",
        "and/or", "rule out", "r/o", "evaluate for", "assess for", "cannot be ruled out",
        "not excluded", "indeterminate", "favor", "favored", "favoring",
    ]),
    ("unc", "bwd", [
        *_with_verbs("not excluded", "not ruled out", "possible", "suspected", "questioned",
                     "likely", "not entirely excluded", "a consideration", "considered",
                     "not well seen", "not well visualized", "not well evaluated",
                     "poorly evaluated", "incompletely evaluated", "obscured", bare=False),
        "cannot be excluded", "can not be excluded", "cannot be ruled out",
        "can not be ruled out", "may be present", "could be present", "might be present",
        "may be seen", "not excluded", "versus", "vs", "vs.", "and/or", "?",
    ]),
    ("pseudo", "fwd", [
        "no change", "no significant change", "no interval change", "no significant interval "
        "change", "not changed", "no increase", "without change", "without interval change",
        "not only", "no further change", "no substantial change", "no appreciable change",
        "gram negative", "not significantly changed", "no other", "no obvious change",
    ]),
    ("term", "both", [
        "but", "however", "although", "though", "yet", "which", "who", "apart from",
        "aside from", "except", "except for", "otherwise", "other than",
        "with the exception of", "there is", "there are", "and there is", "and there are",
        "while", "whereas", "is present", "are present", "is seen", "are seen", "is noted",
        "are noted", "is identified", "are identified", "is again seen", "are again seen",
        "and the", ";", "has developed", "have developed", "has increased", "has decreased",
        "persists", "persist", "remains", "remain", "in the setting of", "with",
    ]),
    # phrases that contain a termination word and are not one ("consistent with pneumonia")
    ("skip", "both", ["consistent with", "compatible with", "associated with",
                      "in keeping with", "along with"]),
]

# Triggers whose forward scope is short (a word or two) rather than the rest of the clause.
_SHORT_FWD = {"not": 3, "absent": 2, "resolved": 3, "exclude": 3, "excluded": 3, "suspect": 3,
              "may": 4, "might": 4, "could": 4, "likely": 4, "probably": 4, "possibly": 4,
              "favor": 3, "favored": 3, "favoring": 3, "borderline": 3, "nor": 4, "versus": 2,
              "vs": 2, "vs.": 2, "and/or": 2}
_SHORT_BWD = {"versus": 1, "vs": 1, "vs.": 1, "and/or": 1, "?": 4}
# Between two mentions these words mean "one or the other" (both uncertain) unless negated.
_ALTERNATIVE = re.compile(r"^\W*(?:\w+\W+){0,2}?(?:or|versus|vs\.?|and/or)\W+(?:\w+\W+){0,2}?$")


def _phrase_regex(phrase: str) -> str:
    words = phrase.split()
    body = r"\s+".join(re.escape(w) for w in words)
    left = r"\b" if re.match(r"\w", phrase) else ""
    right = r"\b" if re.search(r"\w$", phrase) else ""
    return left + body + right


_TRIGGER_KIND: dict[str, tuple[str, str]] = {}
for _kind, _direction, _phrases in _TRIGGERS:
    for _p in _phrases:
        _key = " ".join(_p.split())
        # a phrase that is both a pre- and post-trigger keeps both directions
        old = _TRIGGER_KIND.get(_key)
        if old and old[0] == _kind and old[1] != _direction:
            _TRIGGER_KIND[_key] = (_kind, "both")
        elif not old:
            _TRIGGER_KIND[_key] = (_kind, _direction)
_TRIGGER_RE = re.compile("|".join(_phrase_regex(p) for p in
                                  sorted(_TRIGGER_KIND, key=len, reverse=True)))

_PLAIN_RE = {code: re.compile(r"\b(?:" + "|".join(ps) + r")\b") for code, ps in _PLAIN.items()}
_FIXED_RE = [(code, state, re.compile(r"\b(?:" + p + r")\b")) for code, state, p in _FIXED]
_ANATOMY_RE = [(code, re.compile(r"\b" + p + r"\b")) for code, p in _ANATOMY]
_WORD_RE = re.compile(r"[a-z0-9]+(?:['/.-][a-z0-9]+)*|\?")
_SENT_END = re.compile(r"[.!?](?=\s|$)|\n")
_NO_SPLIT_BEFORE_DOT = ("vs", "dr", "e.g", "i.e", "approx", "mr", "mrs", "ms", "st", "no")


@dataclass(frozen=True)
class _Mention:
    code: str
    kind: str  # plain, anatomy, fixed
    start: int
    end: int
    state: str  # the state before ConText (anatomy, fixed) or "present" (plain)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans ``[start, end)``, each ending after its full stop, question or
    exclamation mark, or before a line break; leading and trailing spaces excluded. A full stop
    inside a number ("0.55") or after "vs", "Dr" or "e.g" does not end a sentence."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENT_END.finditer(text):
        if m.group() == ".":
            word = re.search(r"([A-Za-z.]+)$", text[start:m.start()])
            if word and word.group(1).lower() in _NO_SPLIT_BEFORE_DOT:
                # "No." alone is a word, not an abbreviation, unless followed by a digit
                if word.group(1).lower() != "no" or re.match(r"\s*\d", text[m.end():]):
                    continue
        end = m.end() if m.group() != "\n" else m.start()
        _add_span(text, start, end, spans)
        start = m.end()
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


def _find_mentions(low: str, s: int, e: int) -> list[_Mention]:
    """Mentions inside one sentence ``low[s:e]``; overlaps resolved longest first."""
    found: list[_Mention] = []
    for code, state, rx in _FIXED_RE:
        for m in rx.finditer(low, s, e):
            found.append(_Mention(code, "fixed", m.start(), m.end(), state))
    for code, rx in _PLAIN_RE.items():
        for m in rx.finditer(low, s, e):
            found.append(_Mention(code, "plain", m.start(), m.end(), "present"))
    for code, rx in _ANATOMY_RE:
        for m in rx.finditer(low, s, e):
            hit = _anatomy_state(low, m.start(), m.end(), s, e)
            if hit is not None:
                state, ds, de = hit
                found.append(_Mention(code, "anatomy", min(ds, m.start()), max(de, m.end()),
                                      state))
    # Longest first; a mention that overlaps a longer one of another kind or observation is
    # dropped, except an exact tie of span (one phrase, two observations: hydropneumothorax).
    found.sort(key=lambda x: (-(x.end - x.start), x.start))
    kept: list[_Mention] = []
    for mention in found:
        clash = False
        for k in kept:
            if mention.start < k.end and k.start < mention.end:
                tie = (k.start, k.end) == (mention.start, mention.end) and k.code != mention.code
                both_anatomy = k.kind == mention.kind == "anatomy" and k.code != mention.code
                if both_anatomy:
                    continue  # "normal heart size and mediastinal contours": two sizes at once
                if not tie or k.kind != mention.kind:
                    clash = True
                    break
        if not clash:
            kept.append(mention)
    kept.sort(key=lambda x: x.start)
    return kept


def _anatomy_state(low: str, a: int, b: int, s: int, e: int) -> tuple[str, int, int] | None:
    """The state an anatomy word's descriptor gives, from the same clause (a few words before or
    after it), and the descriptor's span; None when it has no descriptor."""
    after = low[b:e]
    brk = _CLAUSE_BREAK.search(after)
    stop = b + (brk.start() if brk else len(after))
    words = list(_WORD_RE.finditer(low, b, stop))[:_ANATOMY_AFTER_WORDS]
    stop = words[-1].end() if words else b
    before_words = list(_WORD_RE.finditer(low, s, a))[-_ANATOMY_BEFORE_WORDS:]
    bstart = a
    for w in reversed(before_words):
        if _CLAUSE_BREAK.search(low, w.end(), bstart):
            break
        bstart = w.start()
    hits = [m for m in _DESC.finditer(low, bstart, a)] + [m for m in _DESC.finditer(low, b, stop)]
    if not hits:
        return None
    for kind in ("uncertain", "present", "absent"):
        for m in hits:
            if m.group(kind):
                if kind == "uncertain" and m.group(kind) in ("stable", "unchanged", "similar") \
                        and any(h.group("present") or h.group("absent") for h in hits):
                    continue  # "stable enlarged heart": stability qualifies a stated size
                return kind, m.start(), m.end()
    return None


def _word_index(starts: list[int], pos: int) -> int:
    return bisect_right(starts, pos) - 1


def _states(low: str, s: int, e: int, mentions: list[_Mention]) -> list[str]:
    """ConText: the state of each mention in sentence ``low[s:e]``."""
    words = [m.start() for m in _WORD_RE.finditer(low, s, e)]
    triggers = []
    for m in _TRIGGER_RE.finditer(low, s, e):
        key = " ".join(m.group().split())
        kind, direction = _TRIGGER_KIND[key]
        if kind != "term" and any(m.start() < x.end and x.start < m.end() for x in mentions
                                  if x.kind == "fixed"):
            continue  # a trigger inside a fixed phrase is that phrase's own wording
        triggers.append((m.start(), m.end(), key, kind, direction))
    out = []
    for x in mentions:
        if x.kind == "fixed":
            out.append(x.state)
            continue
        best: tuple[int, str] | None = None  # (distance in words, kind)
        xs, xe = _word_index(words, x.start), _word_index(words, x.end - 1)
        for ts, te, key, kind, direction in triggers:
            if kind in ("term", "pseudo", "skip"):
                continue
            if x.kind == "anatomy" and ts < x.end and x.start < te:
                if kind == "unc" and x.state == "present":
                    best = (0, kind)  # "the heart may be mildly enlarged"
                continue
            if te <= x.start and direction in ("fwd", "both"):
                ti = _word_index(words, te - 1)
                dist = xs - ti
                limit = _SHORT_FWD.get(key, 10 ** 6)
                if x.kind == "anatomy":
                    limit = min(limit, _ANATOMY_TRIGGER_WORDS)
                if dist > limit or _blocked(triggers, te, x.start, mentions, x):
                    continue
            elif ts >= x.end and direction in ("bwd", "both"):
                ti = _word_index(words, ts)
                dist = ti - xe
                limit = _SHORT_BWD.get(key, 10 ** 6)
                if x.kind == "anatomy":
                    limit = min(limit, _ANATOMY_TRIGGER_WORDS)
                if dist > limit or _blocked(triggers, x.end, ts, mentions, x):
                    continue
            else:
                continue
            if best is None or dist < best[0]:
                best = (dist, kind)
        if best is None:
            out.append(x.state)
        elif best[1] == "neg":
            out.append("absent" if x.kind != "anatomy" or x.state == "present" else x.state)
        else:
            out.append("uncertain" if x.state != "absent" else x.state)
    _alternatives(low, mentions, out)
    return out


def _blocked(triggers: list, a: int, b: int, mentions: list[_Mention], x: _Mention) -> bool:
    """A termination term, a pseudo-trigger or an anatomy/fixed phrase (which states itself)
    between a trigger and a mention ends the trigger's scope."""
    for ts, te, _key, kind, _d in triggers:
        if kind in ("term", "pseudo") and a <= ts and te <= b:
            return True
    return any(a <= m.start and m.end <= b and m.kind != "plain" for m in mentions if m is not x)


def _alternatives(low: str, mentions: list[_Mention], out: list[str]) -> None:
    """"atelectasis or pneumonia", "effusion versus thickening": both uncertain, unless the
    first is negated ("no effusion or pneumothorax" stays absent)."""
    for i in range(len(mentions) - 1):
        a, b = mentions[i], mentions[i + 1]
        if a.kind != "plain" or b.kind != "plain" or out[i] == "absent" or out[i + 1] == "absent":
            continue
        if _ALTERNATIVE.match(low[a.end:b.start]):
            out[i] = out[i + 1] = "uncertain"


def _sentence_mentions(text: str) -> list[tuple[tuple[int, int], list[tuple[_Mention, str]]]]:
    low = text.lower()
    result = []
    for s, e in split_sentences(text):
        mentions = _find_mentions(low, s, e)
        states = _states(low, s, e, mentions) if mentions else []
        result.append(((s, e), list(zip(mentions, states, strict=True))))
    return result


_RANK = {"present": 2, "uncertain": 1, "absent": 0}


def _aggregate(items: list[tuple[tuple[int, int], _Mention, str]], *,
               report: bool) -> list[Label]:
    """CheXpert's aggregation: per observation present > uncertain > absent, the first mention
    with the winning state deciding the span. ``no_finding`` is present when no observation
    other than support devices (and no other abnormality) is present or uncertain; in a report
    it needs at least one mention of anything, in a single sentence a normality phrase."""
    best: dict[str, tuple[int, tuple[int, int], _Mention]] = {}
    normal: tuple[tuple[int, int], _Mention] | None = None
    finding = False
    for sent, m, state in items:
        if m.code == _NORMAL:
            normal = normal or (sent, m)
            continue
        if state in ("present", "uncertain") and m.code != "support_devices":
            finding = True
        if m.code == _OTHER:
            continue
        rank = _RANK[state]
        if m.code not in best or rank > best[m.code][0]:
            best[m.code] = (rank, sent, m)
    labels = [Label(code, next(s for s, r in _RANK.items() if r == rank),
                    (m.start, m.end), sent)
              for code, (rank, sent, m) in best.items()]
    if not finding:
        if normal is not None:
            labels.append(Label(_NORMAL, "present", (normal[1].start, normal[1].end), normal[0]))
        elif report and items:
            sent, m, _ = items[0]
            labels.append(Label(_NORMAL, "present", (m.start, m.end), sent))
    order = {c: i for i, c in enumerate(OBSERVATIONS)}
    return sorted(labels, key=lambda lab: order[lab.code])


def label(text: str) -> list[Label]:
    """One Label per observation the text mentions (unmentioned observations are not listed)."""
    items = [(sent, m, st) for sent, ms in _sentence_mentions(text) for m, st in ms]
    return _aggregate(items, report=True)


def label_sentences(text: str) -> list[tuple[tuple[int, int], list[Label]]]:
    """Per sentence: its span and its own labels (``no_finding`` only from a normality phrase
    such as "no acute cardiopulmonary process")."""
    return [(sent, _aggregate([(sent, m, st) for m, st in ms], report=False))
            for sent, ms in _sentence_mentions(text)]


def label_many(texts: Iterable[str]) -> list[list[Label]]:
    """``label`` for each text; compiled patterns are shared, so thousands take seconds."""
    return [label(t) for t in texts]


def f1_by_observation(gold: list[dict[str, str]], predicted: list[dict[str, str]]
                      ) -> dict[str, float]:
    """Per observation, F1 over (text, state) pairs: TP = texts where both list the observation
    with the same state; FP = texts where the prediction lists it with another state or gold does
    not list it; FN = texts where gold lists it and the prediction has another state or none.
    F1 = 2TP / (2TP + FP + FN); 1.0 when neither ever lists it. ``macro`` is their mean."""
    out: dict[str, float] = {}
    for code in OBSERVATIONS:
        tp = fp = fn = 0
        for g, p in zip(gold, predicted, strict=True):
            gs, ps = g.get(code), p.get(code)
            if gs is not None and gs == ps:
                tp += 1
                continue
            fp += ps is not None
            fn += gs is not None
        out[code] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    out["macro"] = sum(out[c] for c in OBSERVATIONS) / len(OBSERVATIONS)
    return out


def knowledge_ids() -> list[str]:
    """The knowledge entries the labeller cites, in observation order."""
    return [KNOWLEDGE[c] for c in OBSERVATIONS]


__all__ = ["KNOWLEDGE", "OBSERVATIONS", "STATES", "VERSION", "Label", "label", "label_many",
           "label_sentences", "split_sentences", "knowledge_ids", "f1_by_observation"]
