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
  32016-token vocabulary. Meta trained infilling into the 7B and 13B models (base and
  Instruct), not into 34B, 70B or the Python models;
- text is encoded as SentencePiece encodes it, with one `▁` in front, also when it starts with
  spaces (indented code), where transformers' Llama tokenizer would drop that `▁`;
- Instruct (`chat_completion`): the Llama 2 chat format, `[INST]`, `<<SYS>>` and all, which
  `llama2_colab.chat.encode_dialog` already builds exactly.

`build_tiny_code_llama` writes an offline stand-in with Code Llama's vocabulary layout (32016
entries, the four infilling tokens at 32007-32010, a real SentencePiece `tokenizer.model`),
Code Llama's rope_theta of 1e6 and 16k positions, and random weights.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from .chat import Message, encode_dialog
from .convert import compute_intermediate_size, write_hf_tokenizer
from .errors import UserFacingError
from .tiny import ensure_built, tiny_cache_dir

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
TINY_CODE_VERSION = "1"
_SEED = 0
_PIECE_VOCAB = 700
# A few lines of code next to the bundled prose, so code splits into sensible pieces.
_CODE_LINES = [
    "def fibonacci(n):",
    "    if n < 2:",
    "        return n",
    "    return fibonacci(n - 1) + fibonacci(n - 2)",
    "def remove_non_ascii(s: str) -> str:",
    '    """Remove non-ASCII characters from a string."""',
    "    result = ''.join(c for c in s if ord(c) < 128)",
    "    return result",
    "for i in range(10):",
    "    print(i, fibonacci(i))",
    "import numpy as np",
    "x = np.array([1, 2, 3])",
    "class Stack:",
    "    def __init__(self):",
    "        self.items = []",
    "    def push(self, item):",
    "        self.items.append(item)",
]


class InfillTokens(NamedTuple):
    """The ids of Code Llama's infilling tokens in one tokenizer."""

    prefix: int  # ▁<PRE>
    suffix: int  # ▁<SUF>
    middle: int  # ▁<MID>
    eot: int  # ▁<EOT>: the model's end of the middle part


def infill_tokens(tokenizer) -> InfillTokens:
    """Return the ids of ▁<PRE>, ▁<SUF>, ▁<MID>, ▁<EOT>; raise if the tokenizer has none."""
    vocab = tokenizer.get_vocab()
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
    """Return the token ids of a completion prompt: BOS, then the code (Meta's text_completion)."""
    return [tokenizer.bos_token_id] + _encode_like_sentencepiece(tokenizer, code)


def encode_infilling(tokenizer, prefix: str, suffix: str, suffix_first: bool = False) -> list[int]:
    """Return the ids of `<PRE> {prefix} <SUF>{suffix} <MID>` as Meta's infilling_prompt_tokens."""
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
    """Write a SentencePiece tokenizer.model laid out like Code Llama's (32016 pieces)."""
    corpus = resources.files("llama2_colab").joinpath("data/tiny_corpus.txt").read_text("utf-8")
    buf = io.BytesIO()
    # Llama's trainer settings: BPE, byte fallback, digits split, whitespace kept as it is.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines() + _CODE_LINES),
        model_writer=buf,
        model_type="bpe",
        vocab_size=_PIECE_VOCAB,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    model = pb.ModelProto()
    model.ParseFromString(buf.getvalue())
    piece = pb.ModelProto.SentencePiece
    if _SENTINEL not in {p.piece for p in model.pieces}:  # a single piece in Code Llama too
        model.pieces.add(piece=_SENTINEL, score=-1e4, type=piece.NORMAL)
    # Unused slots up to 32007, the four infilling tokens, unused slots up to 32016.
    while len(model.pieces) < 32007:
        model.pieces.add(piece=f"<unused{len(model.pieces)}>", score=0.0, type=piece.UNUSED)
    for name in _INFILL_PIECES:
        model.pieces.add(piece=name, score=0.0, type=piece.CONTROL)
    while len(model.pieces) < CODE_LLAMA_VOCAB_SIZE:
        model.pieces.add(piece=f"<unused{len(model.pieces)}>", score=0.0, type=piece.UNUSED)
    out = Path(path)
    out.write_bytes(model.SerializeToString())
    return out


def build_tiny_code_llama(out_dir: str | os.PathLike) -> Path:
    """Write the tiny Code Llama - Instruct (model, tokenizer.model, HF tokenizer) to out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        spm_path = write_tiny_code_tokenizer_model(Path(tmp) / "tokenizer.model")
        write_hf_tokenizer(spm_path, out, chat=True)
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
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
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
