"""Counts in tool outputs are said the way a person would say them (issue #11)."""

from __future__ import annotations

import pytest

from src.phrases import count_of, say_count
from src.services.amplitude import TrialUsage


@pytest.mark.parametrize(
    ("n", "spoken"),
    [
        (0, "zero"),
        (1, "one"),
        (99, "ninety-nine"),
        (100, "one hundred"),
        (999, "nine hundred and ninety-nine"),
        (2000, "two thousand"),
        (88_115, "over eighty-eight thousand"),
        (1_234_567, "over one million two hundred thousand"),
    ],
)
def test_say_count(n: int, spoken: str) -> None:
    assert say_count(n) == spoken


def test_count_of_pluralises_by_the_number() -> None:
    assert count_of(0, "document") == "zero documents"
    assert count_of(1, "document") == "one document"
    assert count_of(88_115, "document") == "over eighty-eight thousand documents"


@pytest.mark.parametrize(
    ("created", "sent", "expected"),
    [
        (0, 0, "You haven't created any documents yet."),
        (1, 1, "You've created one document and sent one, and it's been completed."),
        (
            99,
            99,
            "You've created ninety-nine documents and sent ninety-nine, all of them completed.",
        ),
        (
            100,
            100,
            "You've created one hundred documents and sent one hundred, all of them completed.",
        ),
        (
            88_115,
            88_115,
            "You've created over eighty-eight thousand documents and sent over "
            "eighty-eight thousand, all of them completed.",
        ),
    ],
)
def test_usage_tool_output_says_counts_naturally(created: int, sent: int, expected: str) -> None:
    usage = TrialUsage(documents_created=created, documents_sent=sent, documents_completed=sent)
    sentence = usage.spoken_summary()
    assert sentence == expected
    assert not any(ch.isdigit() for ch in sentence)
