"""The offline tiny Llama 2 tokenizes exactly like Llama 2: its real 32,000-piece vocabulary.

SentencePiece itself is the reference (Meta's Llama 2 code encodes with it): the tokenizer.model
the package writes must give Llama 2's ids, and transformers' tokenizer in the tiny model's
folder must give SentencePiece's ids for every text. The expected ids below are Llama 2's
(llama.cpp's tokenizer test vectors for Llama 2, transformers' LlamaTokenizer docs, the issue).
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")

from llama2_colab.vocab import (  # noqa: E402
    LLAMA2_VOCAB_SHA256,
    LLAMA2_VOCAB_SIZE,
    load_llama2_pieces,
    write_llama2_tokenizer_model,
)

JAPANESE = "人工知能の分野での主要な貢献者は誰ですか?\n"  # the article's prompt (notebook 03)
# (text, Llama 2's ids from SentencePiece: no BOS)
KNOWN = [
    ("[INST]", [518, 25580, 29962]),
    ("Hello this is a test", [15043, 445, 338, 263, 1243]),
    ("Hello world", [15043, 3186]),
    (" Hello", [29871, 15043]),  # a leading space is a piece of its own
    ("    Hello", [268, 15043]),  # four spaces: one whitespace piece, then the word
    ("    Hello\n    Hello", [268, 15043, 13, 1678, 15043]),
    ("🦙", [29871, 243, 162, 169, 156]),  # no piece: its 4 UTF-8 bytes (byte fallback)
    ("\n", [29871, 13]),
    ("3333", [29871, 29941, 29941, 29941, 29941]),  # digits split one by one
]
# Texts a lesson shows or a learner types: prose, code, chat markup, other scripts, bytes.
TEXTS = [t for t, _ in KNOWN] + [
    JAPANESE,
    "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]",
    "typed </s> and <s> and <unk> stay text",
    "def fibonacci(n):\n    if n < 2:\n        return n\n\treturn fibonacci(n - 1)",
    "Ünïcödé, émoji 🤗🦙, Ελληνικά, русский, 中文, हिन्दी, العربية",
    "a\tb\r\nc\x00\x7f",
    "▁ already a marker",
    "  double space inside  and at the end  ",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "What is 12,345.67 + 0.5? It is 12,346.17!",
]


@pytest.fixture(scope="module")
def sp(tmp_path_factory):
    path = write_llama2_tokenizer_model(tmp_path_factory.mktemp("spm") / "tokenizer.model")
    return spm.SentencePieceProcessor(model_file=str(path))


@pytest.fixture(scope="module")
def hf(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def hf_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def test_the_vocabulary_is_llama_2s_layout(sp):
    pieces = load_llama2_pieces()
    assert len(pieces) == sp.vocab_size() == LLAMA2_VOCAB_SIZE == 32000
    assert [p for p, _, _ in pieces[:4]] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.id_to_piece(259) == "▁▁" and sp.id_to_piece(29871) == "▁"
    assert sp.id_to_piece(31999) == "给"


@pytest.mark.parametrize(("text", "ids"), KNOWN, ids=[repr(t) for t, _ in KNOWN])
def test_sentencepiece_gives_llama_2s_ids(sp, text, ids):
    assert sp.encode(text) == ids
    assert sp.decode(ids) == text


def test_the_articles_japanese_prompt_costs_what_it_costs_on_a_t4(sp, hf):
    ids = sp.encode(JAPANESE)
    # 14 characters have a piece; 貢, 献 and 誰 fall back to 3 UTF-8 bytes each.
    assert len(ids) == 29 and hf(JAPANESE).input_ids == [1] + ids
    assert [sp.id_to_piece(i) for i in ids[13:16]] == ["<0xE8>", "<0xB2>", "<0xA2>"]
    assert hf.decode(hf(JAPANESE).input_ids, skip_special_tokens=True) == JAPANESE


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_transformers_tokenizer_matches_sentencepiece(sp, hf, text):
    """The tiny model's tokenizer.json gives SentencePiece's ids, Llama 2's merges included.

    One known difference, the same for the real Llama 2 in transformers: text that starts with
    a space (or a `▁`) gets no extra `▁` in front (SentencePiece adds one), so it tokenizes as
    SentencePiece does the text without that first character.
    """
    same = text[1:] if text[:1] in (" ", "▁") else text
    assert hf_ids(hf, text) == sp.encode(same)
    assert hf.decode(hf_ids(hf, text)) == same


def test_the_tiny_folder_carries_a_tokenizer_model_sentencepiece_loads(tiny_dir, sp):
    own = spm.SentencePieceProcessor(model_file=str(Path(tiny_dir) / "tokenizer.model"))
    assert [own.encode(t) for t in TEXTS] == [sp.encode(t) for t in TEXTS]
    assert "LLAMA 2 Community License" in (Path(tiny_dir) / "LLAMA2_NOTICE.txt").read_text()


def test_whitespace_runs_merge_last_as_in_llama_2(hf):
    # Meta scored the whitespace-only pieces -1e9: indentation keeps the word's own `▁`.
    ids = hf_ids(hf, "x\n    return x")
    assert hf.convert_ids_to_tokens(ids)[-3:] == ["▁▁▁", "▁return", "▁x"]


def test_the_tiny_model_has_llama_2s_vocabulary_size(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    assert len(tokenizer) == model.config.vocab_size == 32000
    assert model.get_input_embeddings().weight.shape == (32000, model.config.hidden_size)
    assert tokenizer("[INST]", add_special_tokens=False).input_ids == [518, 25580, 29962]


def test_the_shipped_vocabulary_is_the_checked_one():
    data = resources.files("llama2_colab").joinpath("data/llama2_vocab.json").read_bytes()
    assert hashlib.sha256(data).hexdigest() == LLAMA2_VOCAB_SHA256
    script = (Path(__file__).parent.parent / "scripts" / "build_llama2_vocab.py").read_text()
    source_sha = json.loads(data)["source_sha256"]
    assert re.search(rf'GGUF_SHA256 = "{source_sha}"', script)
    # The sha256 the issue recorded for llama-cpp-python 0.3.36's ggml-vocab-llama-spm.gguf.
    assert source_sha == "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"
    notice = resources.files("llama2_colab").joinpath("data/LLAMA2_NOTICE.txt").read_text()
    assert "Copyright (c) Meta Platforms, Inc. All Rights Reserved." in notice


def test_a_damaged_vocabulary_is_refused_with_a_clear_message(tmp_path, monkeypatch):
    """A copy of the package whose vocabulary was cut short says so instead of mis-tokenizing."""
    import shutil
    import subprocess
    import sys

    import llama2_colab

    copy = tmp_path / "llama2_colab"
    shutil.copytree(Path(llama2_colab.__file__).parent, copy)
    vocab = copy / "data" / "llama2_vocab.json"
    vocab.write_bytes(vocab.read_bytes()[:-100])
    code = (
        "from llama2_colab.vocab import write_llama2_tokenizer_model as w\n"
        "from llama2_colab.errors import UserFacingError\n"
        "try:\n    w('t.model')\nexcept UserFacingError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "vocabulary (data/llama2_vocab.json) is damaged" in out and "Reinstall" in out
    assert not (tmp_path / "t.model").exists()
