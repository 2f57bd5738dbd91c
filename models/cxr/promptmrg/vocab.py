"""The tokens PromptMRG adds to bert-base-uncased, and the word list of the reference variant's
vocabulary. Pure data: ``tree`` (which sizes the embeddings from it) and ``text`` (the tokenizer)
both read it.

The authors add the bos token ``[DEC]`` and then the four state tokens (``main_test.py``); the
state tokens are indexed as in ``SCORES`` of their ``models/blip.py``. The words are
chest-radiograph report words written for MedGate, not taken from any dataset.
"""

from __future__ import annotations

from functools import cache

BERT_VOCAB = 30522
STATE_TOKENS = ("[BLA]", "[POS]", "[NEG]", "[UNC]")
BOS_TOKEN = "[DEC]"
ADDED_TOKENS = (BOS_TOKEN, *STATE_TOKENS)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
REFERENCE_WORDS = """
. , : ; - ( ) / the a an and or of in on at to with without is are was were be been has have
no not any new old there this that these those as by for from than then may likely possibly
probably suggest suggests suggesting consistent compatible concerning cannot excluded seen
noted identified evident appear appears appearing unchanged stable improved improving worsened
worsening increased decreased interval since prior comparison study exam radiograph chest
frontal lateral view views pa ap portable upright supine semi erect film image
heart cardiac size silhouette mediastinum mediastinal contour contours hilar hila normal
enlarged enlargement cardiomegaly cardiomediastinal top borderline mild mildly moderate
moderately severe severely small large tiny minimal trace subtle focal diffuse patchy
lung lungs pulmonary vascular vasculature congestion edema interstitial alveolar airspace
opacity opacities opacification consolidation consolidations pneumonia infection aspiration
atelectasis atelectatic collapse scarring fibrosis nodule nodules mass lesion lesions
effusion effusions pleural pneumothorax thickening fluid blunting costophrenic angle angles
right left bilateral base bases basilar apex apical upper lower middle mid lobe zone zones
retrocardiac perihilar peripheral central medial
fracture fractures rib ribs osseous bony structures spine degenerative changes deformity
tube tubes line lines catheter catheters pacemaker device devices wire wires sternotomy
clips endotracheal enteric nasogastric picc tip terminates projects over svc atrium
clear well expanded inflated hyperinflated aerated acute process cardiopulmonary
abnormality abnormalities finding findings impression otherwise grossly within limits
free air diaphragm hemidiaphragm elevated elevation aorta aortic tortuous calcified
calcification knob soft tissue tissues visualized limited evaluation due low volumes
volume technique rotation overlying
""".split()


@cache
def reference_vocabulary() -> tuple[str, ...]:
    """The reference tokenizer's base vocabulary (before the five added tokens)."""
    words = list(dict.fromkeys(w for w in REFERENCE_WORDS if w not in SPECIAL_TOKENS))
    return SPECIAL_TOKENS + tuple(words)
