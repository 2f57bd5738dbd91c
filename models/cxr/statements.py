"""What a generated CXR sentence states: the 14 CheXpert observations with their display names,
and each sentence of a generated text with the observations the CXR labeller reads in it.
Shared by every CXR family that writes text (PromptMRG, Libra) and by the composer's labeller.
"""

from __future__ import annotations

from models.base import OWN_SCHEME, Code, GeneratedSentence, Statement
from models.cxr import labeller

# The 14 CheXbert observations (CONDITIONS in PromptMRG's models/blip.py, in that order).
OBSERVATIONS: tuple[tuple[str, str], ...] = (
    ("enlarged_cardiomediastinum", "Enlarged cardiomediastinum"),
    ("cardiomegaly", "Cardiomegaly"),
    ("lung_opacity", "Lung opacity"),
    ("lung_lesion", "Lung lesion"),
    ("edema", "Edema"),
    ("consolidation", "Consolidation"),
    ("pneumonia", "Pneumonia"),
    ("atelectasis", "Atelectasis"),
    ("pneumothorax", "Pneumothorax"),
    ("pleural_effusion", "Pleural effusion"),
    ("pleural_other", "Pleural other"),
    ("fracture", "Fracture"),
    ("support_devices", "Support devices"),
    ("no_finding", "No finding"),
)
assert tuple(c for c, _ in OBSERVATIONS) == labeller.OBSERVATIONS  # one vocabulary of codes
MEANING = dict(OBSERVATIONS)


def observation_code(code: str, label: str) -> Code:
    return Code(OWN_SCHEME, code, label)


def statements(text: str) -> tuple[Statement, ...]:
    """What ``text`` says of each observation."""
    return tuple(Statement(observation_code(lab.code, MEANING[lab.code]), lab.state)  # type: ignore[arg-type]
                 for lab in labeller.label(text))


def generated_sentences(text: str) -> list[GeneratedSentence]:
    """Each sentence of ``text`` with the observations it states."""
    out = []
    for (start, end), labels in labeller.label_sentences(text):
        sentence = text[start:end].strip()
        if not sentence:
            continue
        said = tuple(dict.fromkeys(
            Statement(observation_code(lab.code, MEANING[lab.code]), lab.state)  # type: ignore[arg-type]
            for lab in labels))
        out.append(GeneratedSentence(sentence, said))
    return out
