"""The weights against the config, from transformers' loading report.

After loading, `refuse_weight_mismatch` reads the report: a config that does not match its
weights (more layers than the weights hold, another vocabulary size) is refused, naming what
disagrees, never run with layers of random values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from .errors import UserFacingError

__all__ = ["WeightDiff", "count_spans", "refuse_weight_mismatch"]

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Config fields a tensor's size comes from, in the order a mismatch is blamed on them.
_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size")


class WeightDiff(NamedTuple):
    """How a checkpoint's tensors differ from the model its config builds."""

    expected: frozenset[str]  # every weight the config's model has
    missing: frozenset[str]  # expected, absent from the weights: would be random values
    unexpected: frozenset[str]  # in the weights, with no place in the model: left unused
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, weights, config)

    @classmethod
    def from_loading_info(cls, model, info: dict) -> WeightDiff:
        """The diff in transformers' `output_loading_info=True` report for a loaded model."""
        mismatched = []
        for name, found, wanted, *_ in info.get("mismatched_keys") or ():
            mismatched.append((name, tuple(found), tuple(wanted)))
        return cls(
            frozenset(name for name, _ in model.named_parameters()),
            frozenset(info.get("missing_keys") or ()),
            frozenset(info.get("unexpected_keys") or ()),
            tuple(sorted(mismatched)),
        )


def count_spans(numbers: Iterable[int]) -> str:
    """Return whole numbers in words, runs joined: "0 to 3", "0 and 5", "1, 2 and 6 to 9"."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    items: list[str] = []
    for low, high in runs:
        if high > low + 1:
            items.append(f"{low} to {high}")
        else:  # one number, or two in a row: each said alone
            items += [str(n) for n in range(low, high + 1)]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _layer(name: str) -> int | None:
    found = _LAYER.search(name)
    return int(found.group(1)) if found else None


def _layers_said(diff: WeightDiff, config: dict) -> tuple[list[str], set[int], set[int]]:
    """(what is wrong with whole layers, layers missing whole, layers extra) of a diff."""
    per_layer: dict[int, int] = {}
    for name in diff.expected:
        if (i := _layer(name)) is not None:
            per_layer[i] = per_layer.get(i, 0) + 1
    lacking: dict[int, int] = {}
    for name in diff.missing:
        if (i := _layer(name)) is not None:
            lacking[i] = lacking.get(i, 0) + 1
    gone = {i for i, n in lacking.items() if n == per_layer.get(i)}
    extra = {i for name in diff.unexpected if (i := _layer(name)) is not None} - set(per_layer)
    if not gone and not extra:
        return [], gone, extra
    held = (set(per_layer) - gone) | extra
    said = (
        f"config.json says num_hidden_layers={config.get('num_hidden_layers', len(per_layer))}, "
        f"but the weights hold {len(held)} layer{'s' * (len(held) != 1)}"
        + (f" ({count_spans(held)})" if held else "")
    )
    if gone:
        said += f": layer{'s' * (len(gone) > 1)} {count_spans(gone)} would run on random values"
    if extra:
        said += f"{';' if gone else ':'} layer{'s' * (len(extra) > 1)} {count_spans(extra)} of "
        said += "the weights would go unused"
    return [said], gone, extra


def _shape_said(name: str, found: tuple, wanted: tuple, config: dict) -> tuple[str, str]:
    """(the config field blamed, or the tensor's name; one mismatch in words)."""
    shapes = f"{name} is {' x '.join(map(str, found)) or 'a scalar'} in the weights"
    for field in _SIZE_FIELDS:
        value = config.get(field)
        for have, want in zip(found, wanted, strict=False):
            if have != want and want == value:
                return field, f"config.json says {field}={value:,}, but {shapes}"
    return name, f"{shapes}, {' x '.join(map(str, wanted))} by config.json"


def _shapes_said(diff: WeightDiff, config: dict) -> list[str]:
    """The size mismatches in words: one example per config field blamed, with a count."""
    blamed: dict[str, list[str]] = {}
    for name, found, wanted in diff.mismatched:
        field, text = _shape_said(name, found, wanted, config)
        blamed.setdefault(field, []).append(text)
    said = [
        texts[0] + (f" (and {len(texts) - 1} more tensor{'s' * (len(texts) > 2)})")
        if len(texts) > 1
        else texts[0]
        for texts in blamed.values()
    ]
    return said[:3] + ([f"{len(said) - 3} more tensors differ"] if len(said) > 3 else [])


def refuse_weight_mismatch(diff: WeightDiff, config: dict, where: str) -> None:
    """Raise UserFacingError if the weights do not fill the config's model, exactly.

    A weight missing would be drawn at random (transformers only warns), one left over means
    the model runs without it, and a size that differs is another model: each is named by
    what config.json says and what the weights hold.
    """
    said, gone, extra = _layers_said(diff, config)
    said += _shapes_said(diff, config)
    for names, how in (
        (sorted(n for n in diff.missing if _layer(n) not in gone), "the weights lack"),
        (sorted(n for n in diff.unexpected if _layer(n) not in extra), "the weights hold"),
    ):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            unused = "" if how == "the weights lack" else ", for which the model has no place"
            said.append(f"{how} {', '.join(names[:3])}{more}{unused}")
    if said:
        raise UserFacingError(
            f"{where}: its config.json and its weights disagree: {'; '.join(said)}.",
            "They come from different models, or config.json was edited: put back the "
            "config.json that came with these weights (or download the model again). A model "
            "its weights do not fill exactly would answer from random values, or without what "
            "it learned, so it is not used.",
        )
