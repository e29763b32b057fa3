"""Code Llama at work: completion, infilling and Instruct prompts, token-exact as Meta builds them.

The reference is Meta's `llama/generation.py` and `llama/tokenizer.py` in
github.com/meta-llama/codellama:

- completion (`text_completion`): `BOS` + the code, encoded as is;
- infilling (`infilling_prompt_tokens`, prefix-suffix-middle order):
  `BOS ▁<PRE>` + encode(prefix) + `▁<SUF>` + encode_infilling(suffix) + `▁<MID>`, where
  encode_infilling drops SentencePiece's leading space by encoding `"☺" + suffix` and cutting
  the first two tokens (`▁`, `☺`); the model writes the middle and ends it with `▁<EOT>`.
  In suffix-first order (`suffix_first=True`) the suffix comes before the prefix. The special
  tokens are `▁<PRE>`=32007, `▁<SUF>`=32008, `▁<MID>`=32009, `▁<EOT>`=32010 in Code Llama's
  32016-token vocabulary, which the 7B and 13B base and Instruct models have. Which models
  learned infilling, Meta's sources disagree: the Code Llama paper (arXiv:2308.12950, v3) says
  the 7B, 13B and 70B base and Instruct models, Meta's Code Llama prompt-format page the 7B and
  13B base models only;
- text is encoded as SentencePiece encodes it, with one `▁` in front, also when it starts with
  spaces (indented code), where transformers' Llama tokenizer would drop that `▁`;
- Instruct (`chat_completion`): the Llama 2 chat format, `[INST]`, `<<SYS>>` and all, which
  `llama2_colab.chat.encode_dialog` already builds exactly.

`build_tiny_code_llama` writes an offline stand-in with Code Llama's vocabulary (Llama 2's real
32,000 pieces plus 16, the four infilling tokens at 32007-32010, a SentencePiece `tokenizer.model`),
Code Llama's rope_theta of 1e6 and 16k positions, and random weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from .chat import Message, encode_dialog
from .checks import require_text, require_tokenizer
from .convert import compute_intermediate_size
from .errors import UserFacingError
from .tiny import LLAMA2_CHAT_TEMPLATE, ensure_built, seeded_llama, tiny_cache_dir
from .vocab import LLAMA2_VOCAB_SIZE, build_llama2_tokenizer, write_llama2_tokenizer_model

__all__ = [
    "CODE_LLAMA_VOCAB_SIZE",
    "InfillTokens",
    "TINY_CODE_VERSION",
    "build_tiny_code_llama",
    "decode_infilling",
    "encode_completion",
    "encode_infilling",
    "encode_instruct",
    "ensure_tiny_code_llama",
    "infill_tokens",
    "tiny_code_cache_dir",
    "write_tiny_code_tokenizer_model",
]

CODE_LLAMA_VOCAB_SIZE = 32016
_INFILL_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")  # ids 32007-32010 in Code Llama
_SENTINEL = "☺"  # Meta's encode_infilling prefixes this to drop the leading space
TINY_CODE_VERSION = "3"
_SEED = 0


class InfillTokens(NamedTuple):
    """The ids of Code Llama's infilling tokens in one tokenizer."""

    prefix: int  # ▁<PRE>
    suffix: int  # ▁<SUF>
    middle: int  # ▁<MID>
    eot: int  # ▁<EOT>: the model's end of the middle part


def infill_tokens(tokenizer) -> InfillTokens:
    """Return the ids of ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>; raise if the tokenizer has none."""
    vocab = require_tokenizer(tokenizer, "infill_tokens").get_vocab()
    missing = [p for p in _INFILL_PIECES if p not in vocab]
    if missing:
        raise UserFacingError(
            f"This tokenizer has no {', '.join(missing)}: it is not Code Llama's.",
            "Infilling needs a Code Llama 7B or 13B model, e.g. codellama/CodeLlama-7b-hf.",
        )
    return InfillTokens(*(vocab[p] for p in _INFILL_PIECES))


def _encode(tokenizer, text: str) -> list[int]:
    """Encode text as characters (typed `<s>` or `▁<PRE>` stay text), no BOS/EOS added."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode_without_space(tokenizer, text: str) -> list[int]:
    """Meta's encode_infilling: encode text without SentencePiece's added leading space."""
    sentinel = _encode(tokenizer, _SENTINEL)  # [▁, ☺] in Code Llama's vocabulary
    ids = _encode(tokenizer, _SENTINEL + text)
    if ids[: len(sentinel)] != sentinel:
        raise RuntimeError(f"{_SENTINEL!r} merged with the text that follows it: {text[:20]!r}")
    return ids[len(sentinel) :]


def _encode_like_sentencepiece(tokenizer, text: str) -> list[int]:
    """Meta's encode(text): one space marker in front, even if text starts with a space.

    transformers' Llama tokenizer adds no marker when the text starts with a space, so
    `"    return"` loses one of its five `▁`. Encoding `" " + text` without the added space
    gives exactly the marker SentencePiece adds.
    """
    return _encode_without_space(tokenizer, " " + text) if text else []


def encode_completion(tokenizer, code: str) -> list[int]:
    """Return the token ids of a completion prompt: BOS, then the code (Meta's text_completion).

    TypeError if tokenizer is not a tokenizer or code is not a string.
    """
    require_tokenizer(tokenizer, "encode_completion")
    require_text(code, "code", "encode_completion")
    return [tokenizer.bos_token_id] + _encode_like_sentencepiece(tokenizer, code)


def encode_infilling(tokenizer, prefix: str, suffix: str, suffix_first: bool = False) -> list[int]:
    """Return the ids of `<PRE> {prefix} <SUF>{suffix} <MID>` as Meta's infilling_prompt_tokens."""
    require_text(prefix, "prefix", "encode_infilling")
    require_text(suffix, "suffix", "encode_infilling")
    t = infill_tokens(tokenizer)
    bos = tokenizer.bos_token_id
    if suffix_first:  # "<PRE> <SUF>{suf} <MID> {pre}"
        return (
            [bos, t.prefix, t.suffix]
            + _encode_without_space(tokenizer, suffix)
            + [t.middle]
            + _encode_like_sentencepiece(tokenizer, prefix)
        )
    return (
        [bos, t.prefix]
        + _encode_like_sentencepiece(tokenizer, prefix)
        + [t.suffix]
        + _encode_without_space(tokenizer, suffix)
        + [t.middle]
    )


def decode_infilling(tokenizer, ids: Sequence[int]) -> str:
    """Return the middle the model wrote: ids up to ▁<EOT>, decoded without a leading space."""
    t = infill_tokens(tokenizer)
    ids = list(ids)
    if t.eot in ids:
        ids = ids[: ids.index(t.eot)]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    sentinel = _encode(tokenizer, _SENTINEL)[-1]  # Meta: decode([☺] + t)[1:]
    return tokenizer.decode([sentinel] + ids, skip_special_tokens=True)[1:]


def encode_instruct(tokenizer, messages: Sequence[Message]) -> list[int]:
    """Return Code Llama - Instruct's prompt ids: the Llama 2 chat format of chat.encode_dialog."""
    return encode_dialog(tokenizer, messages)


# --- the offline tiny Code Llama ---------------------------------------------------------------


def tiny_code_cache_dir() -> Path:
    """Return where the tiny Code Llama is cached, beside the tiny Llama 2."""
    return tiny_cache_dir().parent / f"tiny-code-llama-v{TINY_CODE_VERSION}"


def write_tiny_code_tokenizer_model(path: str | os.PathLike) -> Path:
    """Write a SentencePiece tokenizer.model laid out like Code Llama's (32016 pieces).

    Code Llama's vocabulary is Llama 2's 32,000 pieces plus 16: the four infilling tokens at
    32007-32010 and twelve more that no prompt uses (here unused slots).
    """
    return write_llama2_tokenizer_model(path, _code_llama_extra(LLAMA2_VOCAB_SIZE))


def _code_llama_extra(start: int) -> list[tuple[str, str]]:
    """Code Llama's 16 entries after Llama 2's pieces, as (piece, SentencePiece type)."""
    extra = [(f"<unused{i}>", "UNUSED") for i in range(start, 32007)]
    extra += [(name, "CONTROL") for name in _INFILL_PIECES]
    return extra + [(f"<unused{i}>", "UNUSED") for i in range(32011, CODE_LLAMA_VOCAB_SIZE)]


def build_tiny_code_llama(out_dir: str | os.PathLike) -> Path:
    """Write the tiny Code Llama - Instruct (model, tokenizer.model, HF tokenizer) to out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_tiny_code_tokenizer_model(out / "tokenizer.model")
    # Built from the pieces, not converted from tokenizer.model: see vocab.merges_by_score.
    extra = _code_llama_extra(LLAMA2_VOCAB_SIZE)
    build_llama2_tokenizer(extra, chat_template=LLAMA2_CHAT_TEMPLATE).save_pretrained(out)
    notice = resources.files("llama2_colab").joinpath("data/LLAMA2_NOTICE.txt")
    (out / "LLAMA2_NOTICE.txt").write_bytes(notice.read_bytes())  # the vocabulary is Meta's
    config = LlamaConfig(
        vocab_size=CODE_LLAMA_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=compute_intermediate_size(64, multiple_of=32),  # 192, Meta's rule
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=16384,  # Code Llama: 16k training sequences, rope_theta 1e6
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    model = seeded_llama(config)
    # A trained model never predicts the slots no text maps to; give them zero logits so the
    # tiny one's greedy gibberish is made of real pieces rather than `<unused123>`.
    tokenizer_vocab = json.loads((out / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
    unused = [i for piece, i in tokenizer_vocab.items() if piece.startswith("<unused")]
    with torch.no_grad():
        model.lm_head.weight[unused] = 0.0
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(
        "Offline tiny Code Llama built by llama2_colab: Code Llama's vocabulary layout (32016 "
        "tokens, <PRE>/<SUF>/<MID>/<EOT> at 32007-32010), rope_theta 1e6, random weights "
        "(seed 0). It writes gibberish.\n",
        encoding="utf-8",
    )
    return out


def ensure_tiny_code_llama(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cached tiny Code Llama directory, building it first if it is missing."""
    target = Path(cache_dir) if cache_dir is not None else tiny_code_cache_dir()
    return ensure_built(target, build_tiny_code_llama)
