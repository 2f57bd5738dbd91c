"""Conversation templates: how one user turn becomes the prompt a family was trained on.

Three separator styles cover the hosted families (the authors' ``conversation.py`` files):

- ``two`` (Vicuna v1, Libra's ``libra_v1``, MedPLIB's ``llava_v1``):
  ``SYSTEM USER: msg ASSISTANT:``;
- ``llama3`` (Libra's ``libra_llama_3`` for the 3B model): header-id blocks ending ``<|eot_id|>``;
- ``mpt`` (InternVL's ``Hermes-2``, ChatML): ``<|im_start|>system\\n...<|im_end|><|im_start|>user
  \\nmsg<|im_end|><|im_start|>assistant\\n``.

Only one user turn is rendered (a report or one question); the answer is left open.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.base import ContractError

STYLES = ("two", "llama3", "mpt")


@dataclass(frozen=True)
class Template:
    name: str
    style: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str = ""
    # the text that ends the answer (the authors' stop string)
    stop: str = ""

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ContractError(f"template {self.name}: style must be one of {STYLES}")

    def render(self, message: str) -> str:
        """The prompt for one user ``message``, ending where the assistant starts."""
        user, assistant = self.roles
        if self.style == "two":
            return f"{self.system}{self.sep}{user}: {message}{self.sep}{assistant}:"
        if self.style == "mpt":
            return f"{self.system}{self.sep}{user}{message}{self.sep}{assistant}"
        system = (f"<|start_header_id|>system<|end_header_id|>\n\n{self.system}{self.sep2}"
                  if self.system else "")
        # the open turn keeps the role as written ("ASSISTANT"), and the authors strip the
        # prompt, which removes the blank line after it
        return (f"<|begin_of_text|>{system}<|start_header_id|>user<|end_header_id|>\n\n"
                f"{message}{self.sep2}\n<|start_header_id|>{assistant}<|end_header_id|>")


# Libra ``libra/conversation.py`` (0d6c56a): ``conv_libra_v1`` and ``conv_libra_llama_3``.
LIBRA_V1 = Template(
    name="libra_v1", style="two",
    system="The assistant specialized in comparing Chest X-ray images, identifying "
           "differences, and noting temporal changes.",
    roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop="</s>")
LIBRA_LLAMA_3 = Template(
    name="libra_llama_3", style="llama3",
    system="You are a helpful language and vision assistant. You are able to understand the "
           "visual content that the user provides, and assist the user with a variety of tasks "
           "using natural language.The assistant specialized in comparing Chest X-ray images, "
           "identifying differences, and noting temporal changes.",
    roles=("USER", "ASSISTANT"), sep="<|begin_of_text|>", sep2="<|eot_id|>", stop="<|eot_id|>")
# InternVL ``src/internvl/conversation.py`` (MedRegA dfdb0db): ``Hermes-2``.
HERMES_2 = Template(
    name="Hermes-2", style="mpt", system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), sep="<|im_end|>",
    stop="<|im_end|>")

# MedPLIB ``model/medplib/conversation.py`` (9c3efe9): ``conv_llava_v1`` (train_ds_medplib.py
# --conv_type default "llava_v1"); conversation_demo.py's medplib_v1, used by the demo, is the
# same text.
LLAVA_V1 = Template(
    name="llava_v1", style="two",
    system="A chat between a curious human and an artificial intelligence assistant. The "
           "assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop="</s>")
# conv_vicuna_v1, which vqa_infer.py selects with conv_templates['v1']: "user" for "human".
VICUNA_V1 = Template(
    name="vicuna_v1", style="two",
    system="A chat between a curious user and an artificial intelligence assistant. The "
           "assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>", stop="</s>")

TEMPLATES = {t.name: t for t in (LIBRA_V1, LIBRA_LLAMA_3, HERMES_2, LLAVA_V1, VICUNA_V1)}


def template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ContractError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]
