"""Llama 2's own tokenizer, offline: the 32,000 SentencePiece pieces, written as a tokenizer.model.

The pieces ship inside the package (`data/llama2_vocab.json`, 340 KB, derived once by
`scripts/build_llama2_vocab.py` from llama.cpp's copy of Meta's vocabulary, its sha256 recorded).
`write_llama2_tokenizer_model` turns them back into a SentencePiece model with Meta's settings
(BPE, byte fallback, a dummy-prefix space, no normalization), so `sentencepiece` splits every
text into the same ids as Meta's own tokenizer: `[INST]` is 518, 25580, 29962. transformers'
`LlamaTokenizer` gives those ids too, except for a text that starts with a space (or a `▁`):
there, like meta-llama/Llama-2-7b-hf in transformers, it adds no `▁` in front where SentencePiece
adds one, so it gives SentencePiece's ids for the text without that first character
(tests/test_vocab.py). No token and no network are needed.

The vocabulary is Meta's: Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c)
Meta Platforms, Inc. All Rights Reserved (`data/LLAMA2_NOTICE.txt`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken

from .errors import UserFacingError

__all__ = [
    "LLAMA2_VOCAB_SHA256",
    "LLAMA2_VOCAB_SIZE",
    "build_llama2_tokenizer",
    "load_llama2_pieces",
    "merges_by_score",
    "read_tokenizer_model",
    "tokenizer_from_pieces",
    "write_llama2_tokenizer_model",
]

LLAMA2_VOCAB_SIZE = 32000
# sha256 of data/llama2_vocab.json as scripts/build_llama2_vocab.py writes it.
LLAMA2_VOCAB_SHA256 = "6b68836271d2b09d308e8020712354c964089cb4255fdfade28fda5e75932a54"
_DATA = "data/llama2_vocab.json"
_REINSTALL = "Reinstall the helper: pip install --force-reinstall llama2-colab (or its git URL)."


def load_llama2_pieces() -> list[tuple[str, float, str]]:
    """Return Llama 2's pieces in id order as (piece, score, type), type as SentencePiece names."""
    try:
        raw = resources.files("llama2_colab").joinpath(_DATA).read_bytes()
    except OSError:
        raise UserFacingError(
            f"Llama 2's vocabulary ({_DATA}) is missing from the llama2_colab package.", _REINSTALL
        ) from None
    if hashlib.sha256(raw).hexdigest() != LLAMA2_VOCAB_SHA256:
        raise UserFacingError(
            f"Llama 2's vocabulary ({_DATA}) is damaged: its sha256 is not the one recorded.",
            _REINSTALL,
        )
    data = json.loads(raw)
    whitespace = {int(i): float(s) for i, s in data["whitespace_scores"].items()}
    out: list[tuple[str, float, str]] = []
    for i, piece in enumerate(data["pieces"]):
        if i == 0:
            out.append((piece, 0.0, "UNKNOWN"))
        elif i < 3:
            out.append((piece, 0.0, "CONTROL"))
        elif i < 259:
            out.append((piece, 0.0, "BYTE"))
        else:
            out.append((piece, whitespace.get(i, -float(i - 259)), "NORMAL"))
    return out


def merges_by_score(pieces: Sequence[tuple[str, float, str]]) -> list[tuple[str, str]]:
    """Return the BPE merges SentencePiece applies, best first: normal pieces' splits, by score.

    SentencePiece merges the pair whose merged piece scores highest. Meta scored the whitespace-only
    pieces (`▁▁`, `▁▁▁▁`...) -1e9, so `"    return"` becomes `▁▁▁` + `▁return`; merges ordered by
    id instead (what transformers 5.24 derives from a tokenizer.model) give `▁▁▁▁` + `return`.
    """
    ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    normal = {piece for piece, _, kind in pieces if kind == "NORMAL"}
    found: list[tuple[float, int, int, str, str]] = []
    for piece, score, kind in pieces:
        if kind != "NORMAL":
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                found.append((-score, -len(left), -len(right), left, right))
    found.sort(key=lambda m: (m[0], m[1], m[2], ids[m[3]], ids[m[4]]))
    return [(left, right) for *_, left, right in found]


def build_llama2_tokenizer(extra: Sequence[tuple[str, str]] = (), chat_template: str | None = None):
    """Return transformers' LlamaTokenizer with Llama 2's vocabulary and merges, as in the Hub repo.

    Built from the pieces directly (not converted from a tokenizer.model), so the merges follow
    the scores as SentencePiece's do. `extra` as in `write_llama2_tokenizer_model`; its CONTROL
    entries become special tokens.
    """
    pieces = load_llama2_pieces() + [(piece, 0.0, kind) for piece, kind in extra]
    return tokenizer_from_pieces(pieces, chat_template)


def tokenizer_from_pieces(
    pieces: Sequence[tuple[str, float, str]], chat_template: str | None = None
):
    """Return a LlamaTokenizer for SentencePiece pieces (piece, score, type) in id order.

    Ids 0, 1 and 2 are <unk>, <s> and </s> as in every Llama tokenizer.model; a CONTROL piece
    after them (Code Llama's `▁<PRE>`...) becomes a special token.
    """
    from transformers import LlamaTokenizer

    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    specials = [
        AddedToken(piece, normalized=False, special=True)
        for i, (piece, _, kind) in enumerate(pieces)
        if kind == "CONTROL" and i > 2
    ]
    # legacy=False, add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False:
    # as in Llama-2-7b-chat-hf's tokenizer_config.json (a clean-up would eat the space before
    # punctuation, and transformers 5.15 warns about it on every decode).
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges_by_score(pieces),
        legacy=False,
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        padding_side="left",
    )
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def read_tokenizer_model(path: str | os.PathLike) -> list[tuple[str, float, str]]:
    """Return the pieces of a SentencePiece tokenizer.model as (piece, score, type), in id order.

    Raises UserFacingError for a file that is not a SentencePiece BPE model (Llama's kind).
    """
    pb = _sentencepiece_proto("Reading tokenizer.model")
    fetch_again = "Use the tokenizer.model that Meta's download.sh fetched with the weights."
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UserFacingError(
            f"{path} cannot be read: {err.strerror or err}.",
            "Check that it is a file you can read (chmod u+r), then run convert again.",
        ) from None
    if not data:
        raise UserFacingError(f"{path} is empty: the download did not finish.", fetch_again)
    model = pb.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as err:  # protobuf's DecodeError, whose module differs across versions
        raise UserFacingError(
            f"{path} is not a SentencePiece tokenizer.model ({type(err).__name__}).", fetch_again
        ) from None
    if model.trainer_spec.model_type != pb.TrainerSpec.BPE or not model.pieces:
        raise UserFacingError(
            f"{path} is a SentencePiece model but not a BPE one, so it is not Llama's tokenizer.",
            fetch_again,
        )
    kinds = pb.ModelProto.SentencePiece.Type
    pieces = [(p.piece, p.score, kinds.Name(p.type)) for p in model.pieces]
    if not all(isinstance(piece, str) for piece, _, _ in pieces):  # bytes: not valid UTF-8
        raise UserFacingError(f"{path} is damaged: a piece is not valid text.", fetch_again)
    return pieces


def _sentencepiece_proto(doing: str):
    """Return sentencepiece's protobuf module, or raise UserFacingError with the pip command."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:
        raise UserFacingError(
            f"{doing} needs the `{err.name}` package.", "pip install sentencepiece protobuf"
        ) from None
    return sentencepiece_model_pb2


def write_llama2_tokenizer_model(
    path: str | os.PathLike, extra: Sequence[tuple[str, str]] = ()
) -> Path:
    """Write Llama 2's tokenizer.model to path; `extra` appends (piece, type) entries after 31999.

    Code Llama's vocabulary is Llama 2's plus 16 entries, which is what `extra` is for.
    """
    pb = _sentencepiece_proto("Writing Llama 2's tokenizer.model")
    model = pb.ModelProto()
    # Meta's settings for Llama 2 (its tokenizer.model's trainer_spec and normalizer_spec).
    t = model.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = LLAMA2_VOCAB_SIZE + len(extra)
    t.byte_fallback = True
    t.split_digits = True
    t.allow_whitespace_only_pieces = True
    t.max_sentencepiece_length = 16
    t.character_coverage = 0.99995
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    t.unk_surface = " \u2047 "
    n = model.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    kinds = pb.ModelProto.SentencePiece
    for piece, score, kind in load_llama2_pieces():
        model.pieces.add(piece=piece, score=score, type=getattr(kinds, kind))
    for piece, kind in extra:
        model.pieces.add(piece=piece, score=0.0, type=getattr(kinds, kind))
    out = Path(path)
    out.write_bytes(model.SerializeToString())
    return out
