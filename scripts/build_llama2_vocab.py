"""Derive llama2_colab/data/llama2_vocab.json, Llama 2's 32,000 SentencePiece pieces, once.

Source: `vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf` in llama-cpp-python's source
distribution on PyPI (0.3.36). That file is the vocabulary of Meta's Llama 2 `tokenizer.model`
(pieces, scores, piece types; no weights), converted by llama.cpp for its tokenizer tests. The
vocabulary is Meta's, under the Llama 2 Community License (redistribution allowed with the
licence and its attribution notice; see llama2_colab/data/LLAMA2_NOTICE.txt).

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36   # or any copy of it
    python scripts/build_llama2_vocab.py llama_cpp_python-0.3.36.tar.gz

The gguf's sha256 is checked before anything is written; the output records it, and
llama2_colab.vocab checks the output's own sha256 when it loads it. Only the standard library
is needed (a GGUF header reader is below).
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import tarfile
from pathlib import Path

GGUF_NAME = "ggml-vocab-llama-spm.gguf"
GGUF_SHA256 = "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"
SOURCE = "llama-cpp-python 0.3.36 sdist (PyPI): vendor/llama.cpp/models/" + GGUF_NAME
OUT = Path(__file__).resolve().parent.parent / "llama2_colab" / "data" / "llama2_vocab.json"
# SentencePiece piece types, as llama.cpp stores them in tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6
# GGUF value types 0-7 and 10-12 and their struct formats (8 is a string, 9 an array).
_SCALAR = dict(zip([0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12], "BbHhIif?Qqd", strict=True))


def read_gguf_metadata(data: bytes) -> dict:
    """Return the key/value metadata of a GGUF file (the tensors are not read)."""
    pos = 0

    def take(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return data[pos - n : pos].decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return text()
        if kind == 9:
            item, n = take("I"), take("Q")
            return [value(item) for _ in range(n)]
        return take(_SCALAR[kind])

    if data[:4] != b"GGUF":
        raise SystemExit("not a GGUF file")
    pos = 4
    take("I")  # version
    take("Q")  # tensor count
    meta = {}
    for _ in range(take("Q")):
        key = text()
        meta[key] = value(take("I"))
    return meta


def read_source(path: Path) -> bytes:
    """Return the gguf's bytes from the sdist (.tar.gz) or from the .gguf file itself."""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith("/models/" + GGUF_NAME):
                    return tar.extractfile(member).read()
        raise SystemExit(f"{path} holds no models/{GGUF_NAME}")
    return path.read_bytes()


def derive(data: bytes) -> dict:
    """Return the compact vocabulary: pieces in id order plus the scores no rule gives."""
    meta = read_gguf_metadata(data)
    pieces = meta["tokenizer.ggml.tokens"]
    scores = meta["tokenizer.ggml.scores"]
    types = meta["tokenizer.ggml.token_type"]
    assert len(pieces) == len(scores) == len(types) == 32000, len(pieces)
    # The layout every Llama 2 tokenizer.model has: <unk>, <s>, </s>, 256 bytes, then merges.
    assert types[:3] == [UNKNOWN, CONTROL, CONTROL] and pieces[:3] == ["<unk>", "<s>", "</s>"]
    assert pieces[3:259] == [f"<0x{b:02X}>" for b in range(256)] and set(types[3:259]) == {BYTE}
    assert set(types[259:]) == {NORMAL}
    assert all(s == 0.0 for s in scores[:259])
    # A normal piece's score is its merge rank, -(id - 259), except the whitespace-only pieces,
    # which Meta's trainer scored -1e9 (so they never win a merge over a real word).
    overrides = {i: scores[i] for i in range(259, 32000) if scores[i] != -(i - 259)}
    assert all(s == -1e9 and set(pieces[i]) == {"▁"} for i, s in overrides.items()), overrides
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    return {
        "about": "Llama 2's SentencePiece vocabulary (Meta's tokenizer.model), derived by "
        "scripts/build_llama2_vocab.py. Llama 2 is licensed under the LLAMA 2 Community "
        "License, Copyright (c) Meta Platforms, Inc. All Rights Reserved. See LLAMA2_NOTICE.txt.",
        "source": SOURCE,
        "source_sha256": GGUF_SHA256,
        "layout": "ids 0-2 <unk> <s> </s>; 3-258 byte pieces <0x00>..<0xFF> (score 0); "
        "259-31999 normal pieces, score -(id - 259) unless listed in whitespace_scores",
        "whitespace_scores": {str(i): int(s) for i, s in overrides.items()},
        "pieces": pieces,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    data = read_source(Path(argv[0]))
    digest = hashlib.sha256(data).hexdigest()
    if digest != GGUF_SHA256:
        raise SystemExit(f"{GGUF_NAME}: sha256 {digest}, expected {GGUF_SHA256}; not written")
    text = json.dumps(derive(data), ensure_ascii=False, indent=0) + "\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")
    print(f"sha256 {hashlib.sha256(OUT.read_bytes()).hexdigest()}  (llama2_colab.vocab checks it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
