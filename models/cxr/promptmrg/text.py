"""PromptMRG's tokenizer: bert-base-uncased plus the authors' five added tokens.

The authors add the bos token ``[DEC]`` (a special token) and then the four state tokens
``[BLA] [POS] [NEG] [UNC]`` (normal tokens) to bert-base-uncased (``main_test.py``), so their ids
are 30522 to 30526 and the embeddings have 30527 rows. A site mounts the bert-base-uncased
tokenizer folder, with or without the added tokens saved in it: the missing ones are added in
the authors' order and every id is then checked against the embedding rows.

The untrained reference variant needs no download: unless ``config["tokenizer_dir"]`` names a
folder, it uses a WordPiece vocabulary of the word list in ``vocab.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.base import ContractError
from models.cxr.promptmrg.vocab import ADDED_TOKENS, BOS_TOKEN, STATE_TOKENS, reference_vocabulary


def load_tokenizer(folder: Path | None) -> Any:
    """A BertTokenizer from ``folder`` (or the reference word list) with the added tokens."""
    from transformers import BertTokenizer

    if folder is None:
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(reference_vocabulary())})
    else:
        if not folder.is_dir() or not (folder / "vocab.txt").is_file():
            raise ContractError(f"no bert-base-uncased tokenizer (vocab.txt) in {folder}")
        try:
            tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ContractError(f"cannot load a tokenizer from {folder}: {exc}") from exc
    vocab = tok.get_vocab()
    if tok.bos_token != BOS_TOKEN:
        tok.add_special_tokens({"bos_token": BOS_TOKEN})
    missing = [t for t in STATE_TOKENS if t not in vocab and t.lower() not in vocab]
    if missing:
        tok.add_tokens(missing)
    return tok


def added_token_ids(tok: Any) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS]


def check_tokenizer(tok: Any, vocab_size: int) -> None:
    """Refuse a tokenizer whose size or added-token ids disagree with the embedding rows."""
    if len(tok) != vocab_size:
        raise ContractError(f"the tokenizer has {len(tok)} tokens, the decoder's embeddings "
                            f"{vocab_size} rows (bert-base-uncased 30522 + {len(ADDED_TOKENS)} "
                            "added tokens for the released checkpoint)")
    want = list(range(vocab_size - len(ADDED_TOKENS), vocab_size))
    got = added_token_ids(tok)
    if got != want:
        raise ContractError(f"the added tokens {list(ADDED_TOKENS)} have the ids {got}, the "
                            f"checkpoint was trained with {want}")
    for t in STATE_TOKENS:
        if len(tok(t, add_special_tokens=False).input_ids) != 1:
            raise ContractError(f"the tokenizer splits the state token {t}")
