"""Write the offline tiny chat model's corpus: llama2_colab/data/tiny_chat_corpus.jsonl.

    python scripts/build_tiny_chat_corpus.py

Turns the hand-written lessons of `scripts/tiny_chat_lessons.py` into dialogs in the Llama 2
chat format (one JSON object a line): every question wording, with small variations a learner
would type (lower case, no question mark), without a system prompt, with a neutral one and
with one that asks for Japanese; Japanese questions; follow-up turns that only make sense after
the first one ("And the largest?"); two-turn dialogs on two topics; and plain documents, so a
raw prompt (no [INST]) continues a text instead of answering. The seed is fixed, so the file is
the same on every run; `train_tiny_chat.py` trains on it.

A line is {"messages": [...]} (the last message is the assistant's answer, the one the loss is
on) or {"text": "..."} (a plain document, all of it learned).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_chat_lessons import (  # noqa: E402
    DOCUMENTS,
    FOLLOW_UPS,
    HELD_OUT,
    JAPANESE_SYSTEMS,
    NEUTRAL_SYSTEMS,
    TOPICS,
    Topic,
)

SEED = 0
OUT = Path(__file__).resolve().parent.parent / "llama2_colab" / "data" / "tiny_chat_corpus.jsonl"
MIXED_DIALOGS = 400  # two-turn dialogs on two different topics
DOCUMENT_REPEATS = 3


def wordings(question: str) -> list[str]:
    """Return question and the variations a learner types: lower/upper case, no final mark."""
    bare = question.rstrip("?.!")
    found = [question, question.lower(), bare, bare.lower(), question.upper()]
    return list(dict.fromkeys(found))


def pick_answer(rng: random.Random, answers: list[str]) -> str:
    """Return one of answers, the first (the usual one) three times as often as each other."""
    weights = [3] + [1] * (len(answers) - 1)
    return rng.choices(answers, weights=weights)[0]


def with_system(system: str | None, turns: list[tuple[str, str]]) -> dict:
    """Return a corpus line: optional system prompt, then (user, assistant) turns."""
    messages = [{"role": "system", "content": system}] if system else []
    for user, answer in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def topic_dialogs(rng: random.Random, topic: Topic) -> list[dict]:
    """Return the one-turn dialogs of a topic: English, Japanese, and English asked in Japanese."""
    lines = []
    for question in topic.en_questions:  # as written, every answer in its share
        for answer in [topic.en_answers[0]] * 2 + topic.en_answers[1:]:
            lines.append(with_system(None, [(question, answer)]))
    for question in topic.en_questions:
        for text in wordings(question):
            system = rng.choice([None, None, *NEUTRAL_SYSTEMS[:3]])
            lines.append(with_system(system, [(text, pick_answer(rng, topic.en_answers))]))
        japanese = rng.choice(JAPANESE_SYSTEMS)
        lines.append(with_system(japanese, [(question, pick_answer(rng, topic.ja_answers))]))
    for question in topic.ja_questions:
        for text in wordings(question):
            japanese = "日本語で答えてください。"
            system = rng.choice([None, None, rng.choice(NEUTRAL_SYSTEMS), japanese])
            lines.append(with_system(system, [(text, pick_answer(rng, topic.ja_answers))]))
    return lines


def follow_up_dialogs(rng: random.Random) -> list[dict]:
    """Return two-turn dialogs whose second question needs the first turn to be understood."""
    by_key = {t.key: t for t in TOPICS}
    lines = []
    for follow in FOLLOW_UPS:
        first = by_key[follow.after]
        for question in first.en_questions:
            for second in follow.en_questions:
                system = rng.choice([None, None, *NEUTRAL_SYSTEMS[:3]])
                turns = [(question, first.en_answers[0]), (second, follow.en_answer)]
                lines.append(with_system(system, turns))
            japanese = rng.choice(JAPANESE_SYSTEMS)
            second = rng.choice(follow.en_questions)
            turns = [(question, first.ja_answers[0]), (second, follow.ja_answer)]
            lines.append(with_system(japanese, turns))
        for question in first.ja_questions:
            for second in follow.ja_questions:
                turns = [(question, first.ja_answers[0]), (second, follow.ja_answer)]
                lines.append(with_system(None, turns))
    return lines


def mixed_dialogs(rng: random.Random, count: int) -> list[dict]:
    """Return two-turn dialogs on two topics: the answer is to the newest question only."""
    lines = []
    for _ in range(count):
        first, second = rng.sample(TOPICS, 2)
        japanese = rng.random() < 0.2
        system = rng.choice(JAPANESE_SYSTEMS) if japanese else rng.choice([None, *NEUTRAL_SYSTEMS])
        answers = (lambda t: t.ja_answers) if japanese else (lambda t: t.en_answers)
        before = rng.choice(first.en_questions)
        asked = rng.choice(wordings(rng.choice(second.en_questions)))
        turns = [(before, answers(first)[0]), (asked, pick_answer(rng, answers(second)))]
        lines.append(with_system(system, turns))
    return lines


def check_held_out(lines: list[dict]) -> None:
    """Fail if a held-out question was trained on (it would no longer test anything)."""
    asked = set()
    for line in lines:
        messages = line.get("messages", [])
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        asked |= {(system, m["content"]) for m in messages if m["role"] == "user"}
        asked |= {(None, m["content"]) for m in messages if m["role"] == "user"}
    leaked = [
        item["q"]
        for item in HELD_OUT
        if (item.get("system"), item["q"]) in asked
        and not item.get("history")
        or any((None, first) in asked for first in item.get("history", []))
    ]
    if leaked:
        raise SystemExit(f"held-out questions found in the corpus: {leaked}")


def build_corpus() -> list[dict]:
    """Return every corpus line, shuffled with the fixed seed."""
    rng = random.Random(SEED)
    lines: list[dict] = []
    for topic in TOPICS:
        lines += topic_dialogs(rng, topic)
    lines += follow_up_dialogs(rng)
    lines += mixed_dialogs(rng, MIXED_DIALOGS)
    lines += [{"text": doc} for doc in DOCUMENTS] * DOCUMENT_REPEATS
    check_held_out(lines)
    rng.shuffle(lines)
    return lines


def main() -> None:
    lines = build_corpus()
    OUT.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), "utf-8")
    dialogs = sum("messages" in x for x in lines)
    print(
        f"Wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB): {dialogs} dialogs, "
        f"{len(lines) - dialogs} documents"
    )


if __name__ == "__main__":
    main()
