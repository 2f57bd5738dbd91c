"""What a signed ECG report says, coded with the codes the ECG engines' findings use.

To measure how well a model version agrees with the cardiologist, the statements of the signed
text are read with exactly the codes of the findings of ``ecg-measure`` (``models.ecg.interpret``)
and ``merl`` (``merl:<class>`` of ``merl_prompts.json``): compare ``Statement.code.key`` with
``Code.parse(finding.code, finding.label).key``.

Rule-based, in the manner of the CXR labeller (``models.cxr.labeller``: NegEx/ConText):

- sentences are split, and statement mentions found from phrase tables: the labels the draft
  writes (``interpret.py``; the composer writes a finding as its label plus measurements in
  brackets) and the words cardiologists write ("AF", "SR", "LBBB", "1st degree AV block", "STEMI",
  "PVCs"); the longest mention wins where two overlap. A concept both families name yields both
  codes ("AF": ``ecg-atrial-fibrillation`` and ``merl:AFIB``);
- a mention's state comes from the nearest negation or uncertainty trigger whose scope reaches
  it ("no AF", "AF is not seen", "possible LVH", "LVH?"); a scope ends at the sentence end, a
  termination word ("but", "with", ";") or a comma, except across a list closed by "or"/"nor"
  ("no AF, flutter or heart block"). Some wordings carry their state ("abnormal ECG",
  "QTc normal");
- broader and narrower statements imply each other one way only: saying "inferior ST elevation"
  says "ST elevation"; denying "ST elevation" denies it in every territory ("no AV block" denies
  first-degree AV block, "no acute ischaemic changes" denies ST elevation and depression);
- per code, present beats uncertain beats absent (CheXpert's aggregation).

It never imports ``app`` and reads only ``merl_prompts.json`` (not ``models.ecg.merl``, which
imports torch).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from models.base import Code, Statement
from models.ecg import criteria as C

VERSION = "1.0.0"
FAMILIES = ("ecg-measure", "merl")
MERL_PROMPTS = Path(__file__).with_name("merl_prompts.json")

# --- vocabulary ------------------------------------------------------------------------------
# Every code models/ecg/interpret.py can emit, with the label it writes (without the variable
# parts: rate response, leads, counts). interpret.py names its codes only at its call sites, so
# this table is kept here and tests/ecg/test_statements.py fails when the two drift apart. The ST
# elevation codes are the knowledge ids of criteria.ST_TERRITORIES, as interpret.py uses them.
_TERRITORY_CODES: dict[str, str] = {t: str(spec["knowledge"])
                                    for t, spec in C.ST_TERRITORIES.items()}
_MEASURE: dict[str, str] = {
    "ecg-signal-quality": "Poor signal quality",
    "ecg-sinus-rhythm": "Sinus rhythm",
    "ecg-sinus-bradycardia": "Sinus bradycardia",
    "ecg-sinus-tachycardia": "Sinus tachycardia",
    "ecg-atrial-fibrillation": "Atrial fibrillation",
    "ecg-rhythm-undetermined": "Rhythm not classified",
    "ecg-first-degree-av-block": "First-degree AV block",
    "ecg-rbbb": "Complete right bundle branch block",
    "ecg-lbbb": "Complete left bundle branch block",
    "ecg-ivcd": "Non-specific intraventricular conduction delay",
    "ecg-prolonged-qt": "Prolonged QT interval",
    "ecg-normal-axis": "Normal QRS axis",
    "ecg-left-axis-deviation": "Left axis deviation",
    "ecg-right-axis-deviation": "Right axis deviation",
    "ecg-extreme-axis-deviation": "Extreme (northwest) QRS axis",
    "ecg-lvh-voltage": "Left ventricular hypertrophy by voltage criteria",
    **{code: f"ST elevation, {t} leads" for t, code in _TERRITORY_CODES.items()},
    "ecg-st-depression": "ST depression",
    "ecg-low-voltage": "Low QRS voltage",
    "ecg-premature-ventricular-complex": "Premature ventricular complex",
    "ecg-premature-atrial-complex": "Premature atrial complex",
    "ecg-normal-ecg": "Normal ECG",
    "ecg-atrial-flutter": "Atrial flutter",
    "ecg-junctional-rhythm": "Junctional rhythm",
    "ecg-paced-rhythm": "Paced rhythm",
    "ecg-second-degree-av-block-mobitz-1": "Second-degree AV block, Mobitz type I (Wenckebach)",
    "ecg-second-degree-av-block-mobitz-2": "Second-degree AV block, Mobitz type II",
    "ecg-third-degree-av-block": "Third-degree (complete) AV block",
    "ecg-incomplete-rbbb": "Incomplete right bundle branch block",
}


def _key(value: str) -> str:
    return Code.parse(value, value).key


@cache
def _family_vocabulary(family: str) -> dict[str, str]:
    if family == "ecg-measure":
        return {_key(v): label for v, label in _MEASURE.items()}
    if family == "merl":
        classes = json.loads(MERL_PROMPTS.read_text(encoding="utf-8"))["classes"]
        return {_key(f"merl:{c}"): str(info.get("label", c)) for c, info in classes.items()}
    raise ValueError(f"unknown ECG family {family!r}; families are {FAMILIES}")


def vocabulary(family: str | None = None) -> dict[str, str]:
    """Code key (``99MEDGATE:ecg-lbbb``, ``99MEDGATE:merl:CLBBB``) -> label of every statement
    ``family`` can make; both families when ``family`` is None."""
    families = FAMILIES if family is None else (family,)
    return {k: v for f in families for k, v in _family_vocabulary(f).items()}


# --- concepts --------------------------------------------------------------------------------
# The codes one concept has in each family that names it.
SINUS = ("ecg-sinus-rhythm", "merl:SR")
BRADY = ("ecg-sinus-bradycardia", "merl:SBRAD")
TACHY = ("ecg-sinus-tachycardia", "merl:STACH")
AF = ("ecg-atrial-fibrillation", "merl:AFIB")
FLUTTER = ("ecg-atrial-flutter", "merl:AFLT")
JUNCTIONAL = ("ecg-junctional-rhythm",)
PACED = ("ecg-paced-rhythm",)
MOBITZ1 = ("ecg-second-degree-av-block-mobitz-1",)
MOBITZ2 = ("ecg-second-degree-av-block-mobitz-2",)
AVB3 = ("ecg-third-degree-av-block",)
IRBBB = ("ecg-incomplete-rbbb",)
UNDETERMINED = ("ecg-rhythm-undetermined",)
AVB1 = ("ecg-first-degree-av-block", "merl:1AVB")
RBBB = ("ecg-rbbb", "merl:CRBBB")
LBBB = ("ecg-lbbb", "merl:CLBBB")
IVCD = ("ecg-ivcd", "merl:IVCD")
LAFB = ("merl:LAFB",)
NORMAL_AXIS = ("ecg-normal-axis",)
LAD = ("ecg-left-axis-deviation", "merl:LAD")
RAD = ("ecg-right-axis-deviation", "merl:RAD")
EXTREME_AXIS = ("ecg-extreme-axis-deviation",)
LVH = ("ecg-lvh-voltage", "merl:LVH")
STE = ("merl:STE",)  # the territories a mention names are added from the text around it
STD = ("ecg-st-depression", "merl:STD")
LOW_VOLTAGE = ("ecg-low-voltage", "merl:LVOLT")
LONG_QT = ("ecg-prolonged-qt", "merl:LNGQT")
PVC = ("ecg-premature-ventricular-complex", "merl:PVC")
PAC = ("ecg-premature-atrial-complex", "merl:PAC")
NORMAL = ("ecg-normal-ecg", "merl:NORM")
QUALITY = ("ecg-signal-quality",)

# Broad concepts no engine codes ("_..."), and broad codes, with the narrower codes they cover.
# Stating a narrower one states the broader one; denying a broader one denies every narrower one.
_NARROWER: dict[str, tuple[str, ...]] = {
    "merl:STE": tuple(_TERRITORY_CODES.values()),
    "_st-change": (*STE, *STD),
    "_av-block": (*AVB1, "_second-degree", *AVB3),
    "_second-degree": (*MOBITZ1, *MOBITZ2),
    "_bundle-branch-block": (*RBBB, *LBBB),
    "_wide-qrs": ("_bundle-branch-block", *IVCD),
    "_axis-deviation": (*LAD, *RAD, *EXTREME_AXIS),
    "_ectopy": (*PVC, *PAC),
}
_BROADER: dict[str, tuple[str, ...]] = {
    n: tuple(b for b, ns in _NARROWER.items() if n in ns)
    for n in {x for ns in _NARROWER.values() for x in ns}}

# --- phrases ---------------------------------------------------------------------------------
# Regular expressions over lower-cased text; each must stand as whole words. "s?" plurals,
# "[- ]?" hyphens. Their state comes from the triggers around them.
_ECTOPIC = r"(?:complex(?:es)?|contractions?|beats?|depolari[sz]ations?)"
_TERR = (r"(?:extensive |high )?(?:(?:antero|infero)[- ]?)?"
         r"(?:septal|lateral|anterior|inferior|posterior)")
_PHRASES: list[tuple[tuple[str, ...], list[str]]] = [
    (SINUS, [r"(?:normal |regular )?sinus rhythm", r"n?sr"]),
    (BRADY, [r"sinus brady(?:cardia|cardic rhythm)?"]),
    (TACHY, [r"sinus tachy(?:cardia|cardic rhythm)?"]),
    (AF, [r"atrial fibrillation", r"atrial fib", r"a\.? ?fib", r"a-fib", r"afib", r"af"]),
    (FLUTTER, [r"atrial flutter", r"flutter", r"afl"]),
    (UNDETERMINED, [r"rhythm not classified", r"unclassified rhythm",
                    r"(?:undetermined|indeterminate|unknown) rhythm",
                    r"rhythm (?:is )?(?:undetermined|indeterminate|unclear)"]),
    (AVB1, [r"(?:first|1st|1) ?-?(?:degree|deg\.?|°) ?-?(?:(?:av|a-v|atrio-?ventricular|heart)"
            r" )?(?:block|avb|hb)", r"1avb", r"prolonged pr(?: interval)?",
            r"pr(?: interval)? prolongation", r"long pr(?: interval)?",
            r"pr(?: interval)? (?:is |was )?(?:mildly |markedly )?prolonged"]),
    (RBBB, [r"(?:complete )?right bundle[- ]branch block", r"(?:complete )?rbbb"]),
    (IRBBB, [r"incomplete right bundle[- ]branch block", r"incomplete rbbb", r"partial rbbb",
             r"irbbb"]),
    (JUNCTIONAL, [r"(?:accelerated )?junctional (?:escape )?rhythm", r"(?:av )?nodal rhythm",
                  r"accelerated junctional", r"junctional escape"]),
    (PACED, [r"(?:ventricular|atrial|dual[- ]chamber|av sequential|a-v sequential|atrial-sensed)"
             r"(?: or dual-chamber)? (?:\(dual-chamber\) )?paced rhythm", r"paced rhythm",
             r"(?:ventricular|atrial|dual[- ]chamber|av sequential) pacing",
             r"pacemaker rhythm", r"paced ecg"]),
    (MOBITZ1, [r"(?:second|2nd|2)[- ]?degree (?:(?:av|a-v|atrio-?ventricular|heart) )?block,? "
               r"(?:mobitz )?type (?:i|1)(?: \(wenckebach\))?", r"mobitz (?:type )?(?:i|1)",
               r"wenckebach(?: phenomenon| block| periodicity)?"]),
    (MOBITZ2, [r"(?:second|2nd|2)[- ]?degree (?:(?:av|a-v|atrio-?ventricular|heart) )?block,? "
               r"(?:mobitz )?type (?:ii|2)", r"mobitz (?:type )?(?:ii|2)"]),
    ((*MOBITZ1, *MOBITZ2), [r"(?:second|2nd|2)[- ]?degree (?:(?:av|a-v|atrio-?ventricular|"
                            r"heart) )?block(?:,? type not determined)?"]),
    (AVB3, [r"(?:third|3rd|3)[- ]?degree (?:\(complete\) )?(?:(?:av|a-v|atrio-?ventricular|"
            r"heart) )?block", r"complete (?:av|a-v|atrio-?ventricular|heart) block", r"chb"]),
    (LBBB, [r"(?:complete )?left bundle[- ]branch block", r"(?:complete )?lbbb"]),
    (IVCD, [r"(?:non[- ]?specific )?(?:intra[- ]?ventricular|iv) conduction "
            r"(?:delay|defect|disturbance|abnormality)", r"(?:ns)?ivcd"]),
    (LAFB, [r"left anterior (?:fascicular block|hemi-?block)", r"lafb", r"lahb"]),
    (NORMAL_AXIS, [r"normal (?:qrs |frontal |electrical |cardiac )?(?:plane )?axis",
                   r"(?:qrs |frontal )?axis (?:is )?(?:normal|within normal limits)"]),
    (LAD, [r"left axis(?: deviation)?", r"lad"]),
    (RAD, [r"right axis(?: deviation)?", r"rad"]),
    (EXTREME_AXIS, [r"extreme (?:\(northwest\) )?(?:qrs |frontal )?axis(?: deviation)?",
                    r"extreme right axis(?: deviation)?", r"north[- ]?west(?:erly)? (?:qrs )?axis",
                    r"no[- ]man'?s[- ]land axis"]),
    (LVH, [r"left ventricular hypertrophy(?: by voltage(?: criteria)?)?", r"lv hypertrophy",
           r"lvh(?: by voltage(?: criteria)?)?",
           r"(?:voltage )?criteria for (?:lvh|left ventricular hypertrophy)"]),
    (STE, [r"st[- ]?(?:segment[- ])?elevations?", r"elevated st(?:[- ]segments?)?",
           r"st(?:[- ]segments?)? (?:is |are )?elevated", r"stemi", r"ste",
           r"st[- ]elevation (?:myocardial infarction|mi)"]),
    (STD, [r"st[- ]?(?:segment[- ])?depressions?", r"depressed st(?:[- ]segments?)?",
           r"st(?:[- ]segments?)? (?:is |are )?depressed"]),
    ((*STE, *STD), [r"st[- ]?(?:segment[- ])?(?:elevation|depression)s? ?(?:or|and|nor|/) ?"
                    r"(?:elevation|depression)s?"]),
    (LOW_VOLTAGE, [r"low (?:qrs |limb[- ]lead |precordial[- ]lead |chest[- ]lead |limb "
                   r"|precordial )?voltages?(?: qrs)?", r"low qrs (?:amplitudes?|voltages?)",
                   r"small qrs complexes"]),
    (LONG_QT, [r"(?:prolonged|long|lengthened) (?:corrected )?qtc?(?: interval)?",
               r"qtc?(?: interval)? prolongation", r"long qt syndrome", r"lqts",
               r"qtc?(?: interval)? (?:is |was |remains |appears )?(?:mildly |moderately "
               r"|markedly |significantly |slightly )?(?:prolonged|long)"]),
    (PVC, [r"pvcs?", r"vpcs?", r"vpbs?", r"vebs?", rf"premature ventricular {_ECTOPIC}",
           rf"ventricular premature {_ECTOPIC}", r"ventricular ectopi(?:cs?|c beats?|y)",
           r"ventricular extra-?systoles?", r"ventricular (?:bigeminy|trigeminy|couplets?)"]),
    (PAC, [r"pacs?", r"apcs?", r"apbs?", r"sves?", rf"premature (?:atrial|supraventricular) "
           rf"{_ECTOPIC}", rf"(?:atrial|supraventricular) premature {_ECTOPIC}",
           r"(?:atrial|supraventricular) ectopi(?:cs?|c beats?|y)",
           r"(?:atrial|supraventricular) extra-?systoles?", r"atrial (?:bigeminy|trigeminy)"]),
    (NORMAL, [r"normal (?:12[- ]lead )?(?:ecg|ekg|electrocardiogram|tracing)",
              r"(?:ecg|ekg|electrocardiogram|tracing) (?:is |was |appears )?(?:normal|within "
              r"normal limits|unremarkable)"]),
    (QUALITY, [r"poor (?:signal |tracing |recording )?quality(?: tracing| recording)?",
               r"(?:signal|tracing|recording) quality (?:is )?poor",
               r"noisy (?:tracing|recording|signal|leads?)",
               r"(?:motion |muscle |baseline |movement )?arte?facts?", r"baseline wander"]),
    # broad concepts: stated, they say nothing coded; denied, they deny what they cover
    (("_st-change",), [r"(?:acute |new )?isch(?:a)?emic (?:st[- ]?t? )?changes?",
                       r"st[- ]t(?:[- ]wave)? changes?", r"st(?:[- ]segment)? (?:changes?|"
                       r"deviations?|abnormalit(?:y|ies))", r"acute changes"]),
    (("_av-block",), [r"(?:av|a-v|atrio-?ventricular|heart) block", r"avb"]),
    (("_bundle-branch-block",), [r"bundle[- ]branch block", r"bbb"]),
    (("_wide-qrs",), [r"(?:wide|broad|widened) qrs(?: complex(?:es)?)?", r"qrs widening",
                      r"broad complex(?:es)?"]),
    (("_axis-deviation",), [r"axis deviation"]),
    (("_ectopy",), [r"ectop(?:y|ics?)", r"ectopic beats?", r"extra-?systoles?",
                    rf"premature {_ECTOPIC}"]),
]

# Wordings that carry their state: (codes, state, patterns). Triggers do not change it.
_FIXED: list[tuple[tuple[str, ...], str, list[str]]] = [
    (NORMAL, "absent", [r"abnormal (?:ecg|ekg|electrocardiogram|tracing)",
                        # one finding then "otherwise normal ECG": the ECG is not normal
                        r"otherwise (?:normal|unremarkable)(?: (?:ecg|ekg|tracing))?"]),
    (NORMAL, "uncertain", [r"borderline (?:normal )?(?:ecg|ekg|electrocardiogram|tracing)"]),
    (LONG_QT, "absent", [r"normal qtc?(?: interval)?",
                         r"qtc?(?: interval)? (?:is |was )?(?:normal|within normal limits|"
                         r"not prolonged)"]),
    (AVB1, "absent", [r"normal pr(?: interval)?",
                      r"pr(?: interval)? (?:is |was )?(?:normal|within normal limits|"
                      r"not prolonged)"]),
    (("_wide-qrs",), "absent", [r"narrow qrs(?: complex(?:es)?)?", r"narrow complex(?:es)?",
                                r"normal qrs (?:duration|width)",
                                r"qrs (?:duration |width )?(?:is )?normal"]),
    (QUALITY, "absent", [r"(?:good|adequate|acceptable) (?:signal |tracing |recording )?quality"]),
]

# Wordings that contain a phrase above and mean something no engine codes ("incomplete RBBB" is
# not RBBB; "complete heart block" is not a denied AV block; "proximal LAD" is the artery).
_NOT_CODED: list[str] = [
    r"incomplete (?:left )?(?:bundle[- ]branch block|bbb)", r"incomplete lbbb",
    r"partial lbbb", r"ilbbb",
    r"(?:2:1|3:1|high[- ]grade|advanced)(?:[- ]degree)?(?: (?:or|and|/) (?:second|third|2nd|3rd)"
    r"(?:[- ]degree)?)? (?:(?:av|a-v|atrio-?ventricular|heart) )?(?:block|avb|hb)",
    r"non[- ]?st[- ]?(?:segment[- ])?elevation(?: myocardial infarction| mi| acs)?",
    r"non[- ]?stemi", r"nstemi", r"nste[- ]?(?:acs|mi)",
    r"(?:proximal|prox|mid|distal|ostial) lad",
    r"left anterior descending(?: coronary)?(?: artery)?",
    r"lad (?:artery|territory|occlusion|lesion|stenosis|disease|ischa?emia|infarct\w*|stent\w*|"
    r"culprit|wraparound|wrap-around)",
    r"broad complex tachycardia", r"wide complex tachycardia",
]

# ST elevation territories: a territory word just before the mention, or after it a territory
# ("ST elevation, inferior leads", "in the lateral leads") or a lead list ("in II, III and aVF").
_TERR_LIST = rf"{_TERR}(?:\s*(?:,|and|&|/)\s*{_TERR})*"
_LEAD = r"(?:iii|ii|i|avr|avl|avf|v[1-9])(?![a-z0-9])"
_LEAD_LIST = rf"{_LEAD}(?:\s*(?:,|and|&|/|-|to)\s*{_LEAD})*"
_TERR_BEFORE = re.compile(rf"(?<![a-z0-9])({_TERR_LIST})[\s-]+$")
_TERR_AFTER = re.compile(
    rf"^\s*,?\s*(?:(?:in|at|over|across|involving|of)\s+)?(?:the\s+)?"
    rf"(?:(?P<territory>{_TERR_LIST})(?:\s+(?:leads?|territory|wall|region)|(?=\s*(?:[.,;)]|$)))"
    rf"|(?:leads?\s+)?\(?(?P<leads>{_LEAD_LIST}))")
_LEAD_TERRITORY = {lead.lower(): t for t, spec in C.ST_TERRITORIES.items()
                   for lead in spec["leads"]}  # type: ignore[union-attr]

# --- ConText triggers ------------------------------------------------------------------------
# kind -> direction -> literal phrases (longest match wins where several start together). A
# phrase listed both ways ("possible": "possible LVH", "LVH possible") looks both ways. Pseudo
# triggers and termination terms have no direction: they end the scope of others.
_TRIGGERS: dict[str, dict[str, list[str]]] = {
    "neg": {
        "fwd": ["no", "not", "without", "negative for", "absence of", "absent", "no evidence of",
                "no sign of", "no signs of", "no definite", "no convincing", "no obvious",
                "free of", "resolution of", "resolved", "rather than", "instead of",
                "ruled out", "rules out", "excluded", "nor", "neither", "no longer",
                "there is no", "there are no", "none"],
        "bwd": ["is not seen", "are not seen", "not seen", "not present", "is absent",
                "are absent", "absent", "has resolved", "have resolved", "resolved",
                "no longer seen", "no longer present", "not identified", "not evident",
                "not demonstrated", "not met", "excluded", "ruled out", "is gone"],
    },
    "unc": {
        "fwd": ["possible", "possibly", "probable", "probably", "likely", "?", "query",
                "questionable", "suspected", "suspect", "suspicious for", "suggestive of",
                "suggests", "suggesting", "cannot exclude", "can not exclude", "can't exclude",
                "cannot rule out", "can not rule out", "can't rule out", "rule out", "r/o",
                "consider", "borderline", "equivocal", "may be", "may represent", "might be",
                "could be", "could represent", "no new", "evaluate for", "differential includes"],
        "bwd": ["cannot be excluded", "can not be excluded", "can't be excluded",
                "cannot be ruled out", "not excluded", "not ruled out", "is possible",
                "possible", "?", "is likely", "likely", "is suspected", "suspected",
                "is questioned", "is borderline", "borderline", "to be considered"],
    },
    # look like a trigger and are not: "no change in LBBB" states LBBB
    "pseudo": {"fwd": ["no change", "no significant change", "no interval change",
                       "not changed", "no other", "not only", "without change",
                       "no further change"]},
    # end a trigger's scope: "no AF but LBBB", "possible LVH; RBBB", "AF with RVR"
    "term": {"fwd": ["but", "however", "although", "though", "except", "apart from",
                     "aside from", "other than", "which", "while", "whereas", "with", "now",
                     ";", "there is", "there are"]},
}
_TRIGGER_KIND: dict[str, tuple[str, set[str]]] = {}
for _kind, _by_direction in _TRIGGERS.items():
    for _direction, _phrases in _by_direction.items():
        for _p in _phrases:
            _TRIGGER_KIND.setdefault(_p, (_kind, set()))[1].add(_direction)
# Short scopes, in words between trigger and mention (others: _FWD_WORDS / _BWD_WORDS).
_FWD_WORDS, _BWD_WORDS = 6, 5
_SHORT_FWD = {"not": 3, "borderline": 3, "?": 3, "likely": 3, "probably": 3, "possibly": 3}
_SHORT_BWD = {"?": 2, "possible": 3, "likely": 3, "borderline": 2}
# Between two mentions these words mean one or the other: both uncertain, unless denied.
_ALTERNATIVE = re.compile(r"^\s*(?:or|versus|vs\.?|and/or|/)\s*$")
_LIST_OR = re.compile(r"(?<![a-z])(?:or|nor)(?![a-z])")


def _whole(pattern: str) -> str:
    return rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])"


def _phrase_regex(phrase: str) -> str:
    body = r"\s+".join(re.escape(w) for w in phrase.split())
    return _whole(body) if re.match(r"\w", phrase) else body


_PHRASE_RE = [(codes, None, re.compile(_whole("|".join(ps)))) for codes, ps in _PHRASES]
_PHRASE_RE += [(codes, state, re.compile(_whole("|".join(ps)))) for codes, state, ps in _FIXED]
_PHRASE_RE += [((), None, re.compile(_whole("|".join(_NOT_CODED))))]
_TRIGGER_RE = re.compile("|".join(_phrase_regex(p) for p in
                                  sorted(_TRIGGER_KIND, key=len, reverse=True)))
_WORD_RE = re.compile(r"[a-z0-9°]+(?:['/.-][a-z0-9]+)*|\?")
# A full stop or "!" before a space, a "?" right after a word ("LVH? RBBB"), a line break.
_SENT_END = re.compile(r"[.!](?=\s|$)|(?<=[a-z0-9)])\?(?=\s|$)|\n")
_NO_SPLIT_BEFORE_DOT = ("vs", "e.g", "i.e", "approx", "cf", "dr")
_RANK = {"present": 2, "uncertain": 1, "absent": 0}


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    codes: tuple[str, ...]
    state: str | None  # fixed by the wording, or None: from the triggers around it


@dataclass(frozen=True)
class _Trigger:
    start: int
    end: int
    phrase: str
    kind: str
    directions: frozenset[str]


def _sentences(low: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in _SENT_END.finditer(low):
        if m.group() == "." and re.search(r"(?<![a-z])(?:" + "|".join(
                re.escape(w) for w in _NO_SPLIT_BEFORE_DOT) + r")$", low[start:m.start()]):
            continue  # "AF vs. flutter" is one sentence
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(low)))
    return [(s, e) for s, e in spans if low[s:e].strip()]


def _territories(low: str, m: re.Match[str], s: int, e: int) -> tuple[str, ...]:
    """The ST elevation codes of the territories the text names around an ST elevation
    mention; none when it names none."""
    names: set[str] = set()
    before = _TERR_BEFORE.search(low, s, m.start())
    after = _TERR_AFTER.search(low[m.end():e])
    words = " ".join(x.group(1) for x in (before,) if x)
    if after and after.group("territory"):
        words += " " + after.group("territory")
    for w in re.findall(r"antero|infero|septal|lateral|anterior|inferior", words):
        names.add({"antero": "anterior", "infero": "inferior"}.get(w, w))
    if "extensive" in words and "anterior" in names:
        names |= {"septal", "lateral"}  # "extensive anterior": V1-V6, I, aVL
    if after and after.group("leads"):
        leads = after.group("leads")
        for a, b in re.findall(r"v([1-9])\s*(?:-|to)\s*v([1-9])", leads):
            leads += " " + " ".join(f"v{n}" for n in range(int(a), int(b) + 1))
        names |= {_LEAD_TERRITORY[x] for x in re.findall(_LEAD, leads) if x in _LEAD_TERRITORY}
    return tuple(_TERRITORY_CODES[t] for t in C.ST_TERRITORIES if t in names)


def _mentions(low: str, s: int, e: int) -> list[_Mention]:
    """The mentions of one sentence; where two overlap the longer wins."""
    found = []
    for codes, state, rx in _PHRASE_RE:
        for m in rx.finditer(low, s, e):
            said = codes
            if "merl:STE" in codes:
                territories = _territories(low, m, s, e)
                if territories:  # the broad ST elevation code follows from them (_BROADER)
                    said = tuple(c for c in codes if c != "merl:STE") + territories
            found.append(_Mention(m.start(), m.end(), said, state))
    found.sort(key=lambda x: (-(x.end - x.start), x.start))
    kept: list[_Mention] = []
    for x in found:
        if all(x.end <= k.start or k.end <= x.start for k in kept):
            kept.append(x)
    return sorted(kept, key=lambda x: x.start)


def _triggers(low: str, s: int, e: int, mentions: list[_Mention]) -> list[_Trigger]:
    out = []
    for m in _TRIGGER_RE.finditer(low, s, e):
        if any(m.start() < x.end and x.start < m.end() for x in mentions):
            continue  # a trigger inside a mention is that mention's own wording
        phrase = " ".join(m.group().split())
        kind, directions = _TRIGGER_KIND[phrase]
        if phrase == "?":  # "LVH?" looks back, "? LVH" and "?LVH" look forward
            after_word = m.start() > s and re.match(r"[a-z0-9)]", low[m.start() - 1])
            directions = {"bwd"} if after_word else {"fwd"}
        out.append(_Trigger(m.start(), m.end(), phrase, kind, frozenset(directions)))
    return out


def _clause(triggers: list[_Trigger], s: int, e: int, at: int) -> tuple[int, int]:
    """The stretch around position ``at`` that no termination term or pseudo-trigger breaks."""
    start, end = s, e
    for t in triggers:
        if t.kind in ("term", "pseudo"):
            if t.end <= at:
                start = max(start, t.end)
            elif t.start >= at:
                end = min(end, t.start)
    return start, end


def _scope(low: str, triggers: list[_Trigger], t: _Trigger, s: int, e: int
           ) -> tuple[int, int]:
    """Where trigger ``t`` reaches, before and after it: its clause, cut at the nearest comma
    unless an "or"/"nor" shows a list under the one trigger ("no AF, flutter or block")."""
    start, end = _clause(triggers, s, e, t.start)
    comma = low.find(",", t.end, end)
    if comma >= 0 and not _LIST_OR.search(low, comma, end):
        end = comma
    comma = low.rfind(",", start, t.start)
    if comma >= 0 and not _LIST_OR.search(low, comma, t.start):
        start = comma + 1
    return start, end


def _states(low: str, s: int, e: int, mentions: list[_Mention]) -> list[str]:
    """ConText: each mention's state from the nearest trigger that reaches it."""
    triggers = _triggers(low, s, e, mentions)
    words = [w.start() for w in _WORD_RE.finditer(low, s, e)]

    def between(a: int, b: int) -> int:
        return sum(a <= w < b for w in words)

    out = []
    for x in mentions:
        best: tuple[int, str] | None = None  # (words between, kind)
        for t in triggers:
            if x.state is not None or t.kind not in ("neg", "unc"):
                continue
            lo, hi = _scope(low, triggers, t, s, e)
            if "fwd" in t.directions and t.end <= x.start < hi:
                gap, limit = between(t.end, x.start), _SHORT_FWD.get(t.phrase, _FWD_WORDS)
                fixed_between = any(t.end <= y.start and y.end <= x.start and y.state
                                    for y in mentions)
            elif "bwd" in t.directions and lo <= x.start and x.end <= t.start:
                gap, limit = between(x.end, t.start), _SHORT_BWD.get(t.phrase, _BWD_WORDS)
                fixed_between = any(x.end <= y.start and y.end <= t.start and y.state
                                    for y in mentions)
            else:
                continue
            if gap <= limit and not fixed_between and (best is None or gap < best[0]):
                best = (gap, t.kind)
        if x.state is not None:
            out.append(x.state)
        else:
            out.append("present" if best is None else
                       "absent" if best[1] == "neg" else "uncertain")
    for i in range(len(mentions) - 1):  # "AF or flutter", "LBBB vs IVCD": one or the other
        a, b = mentions[i], mentions[i + 1]
        if (a.state is None and b.state is None and "absent" not in (out[i], out[i + 1])
                and _ALTERNATIVE.match(low[a.end:b.start])):
            out[i] = out[i + 1] = "uncertain"
    return out


def _implied(codes: tuple[str, ...], state: str) -> set[str]:
    """The codes a mention states: its own, the broader ones when it states them present or
    uncertain, the narrower ones when it denies them."""
    links = _NARROWER if state == "absent" else _BROADER
    out, todo = set(), list(codes)
    while todo:
        code = todo.pop()
        if code not in out:
            out.add(code)
            todo.extend(links.get(code, ()))
    return {c for c in out if not c.startswith("_")}


def label(text: str) -> list[Statement]:
    """The statements ``text`` makes, one per code, in vocabulary order: present beats
    uncertain beats absent when a code is said several times."""
    low = text.lower()
    best: dict[str, str] = {}
    for s, e in _sentences(low):
        mentions = _mentions(low, s, e)
        for x, state in zip(mentions, _states(low, s, e, mentions), strict=True):
            for code in _implied(x.codes, state):
                key = _key(code)
                if key not in best or _RANK[state] > _RANK[best[key]]:
                    best[key] = state
    vocab = vocabulary()
    return [Statement(Code.parse(key, vocab[key]), best[key])  # type: ignore[arg-type]
            for key in vocab if key in best]


__all__ = ["FAMILIES", "MERL_PROMPTS", "VERSION", "label", "vocabulary"]
