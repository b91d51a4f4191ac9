"""Tests for drllm.search.tasks.grading: answer extraction, normalisation and option parsing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drllm.search.tasks.grading import (
    answers_match,
    extract_choice,
    extract_final_answer,
    grade_exact,
    normalize_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the result is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{3} then \boxed{\sqrt{x^{2}}}", r"\sqrt{x^{2}}"),
        (r"\boxed{\{1, 2\}", "2"),  # unbalanced braces: falls through to the last number
        ("Work...\n#### 1,234", "1,234"),
        ("The answer is 18 apples.", "18"),
        ("so the answer is: $42$.", "$42$"),
        ("I think 3 plus 4 makes 7", "7"),
        ("no digits here", None),
    ],
)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$5$", "5"),
        (" 5. ", "5"),
        ("5.0", "5"),
        ("0.50", "0.5"),
        (".5", "0.5"),
        ("-0.0", "0"),
        ("1,000,000", "1000000"),
        (r"\dfrac{3}{4}", "3/4"),
        (r"\tfrac12", "1/2"),
        (r"\left(1, 2\right)", "(1,2)"),
        (r"10\!000", "10000"),
        (r"90^\circ", "90"),
        (r"90^{\circ}", "90"),
        (r"5\text{ cm}", "5"),
        (r"\text{(C)}", "(C)"),
        (r"50\%", "50"),
        ("x = 3", "3"),
        (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{3}}{2}"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "same"),
    [
        ("0.5", r"\frac{1}{2}", True),
        ("1/2", r"\frac{1}{2}", True),
        (r"\dfrac{1}{2}", "1/2", True),
        ("5.0", "5", True),
        ("$1,000", "1000", True),
        ("2/4", "1/2", True),
        ("6", "5", False),
        (r"\frac{1}{3}", "0.33", False),
        (None, "5", False),
        (r"\sqrt{2}", r"\sqrt2", False),
    ],
)
def test_answers_match(pred, gold, same):
    assert answers_match(pred, gold) is same


def test_grade_exact_uses_extraction_and_first_line():
    assert grade_exact("48/2 = 24, so 48 + 24 = 72.\n#### 72", "72")
    assert grade_exact("Paris\nbecause it is the capital", "Paris")
    assert not grade_exact("#### 71", "72")


LABELS = ("A", "B", "C", "D")
CHOICES = ("a leg muscle", "a bacterial population", "viral particles", "digestion")


@pytest.mark.parametrize(
    ("text", "index"),
    [
        ("B", 1),
        (" (B)", 1),
        ("B.", 1),
        ("Answer: B", 1),
        ("The answer is (C) because", 2),
        ("C) viral particles", 2),
        (" a bacterial population in the blood", 1),
        ("Viral particles.", 2),
        ("I pick D", 3),
        ("none of these", None),
    ],
)
def test_extract_choice_letters_and_texts(text, index):
    assert extract_choice(text, LABELS, CHOICES) == index


def test_extract_choice_numeric_labels():
    labels = ("1", "2", "3", "4")
    assert extract_choice(" 3", labels, ("red", "blue", "green", "gray")) == 2
    assert extract_choice("Answer: 4", labels, ("red", "blue", "green", "gray")) == 3
    assert extract_choice("12", labels, ("red", "blue", "green", "gray")) is None


_ANSWERS = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="0123456789.,-+/ $\\{}()^%=xabcdefghirt", max_size=24),
    st.sampled_from([r"\frac{1}{2}", r"\dfrac12", r"5\text{ cm}", r"\left(1,2\right)", "0.500", "1,000.0"]),
)


@settings(max_examples=200, deadline=None)
@given(_ANSWERS)
def test_normalize_answer_is_idempotent(raw):
    once = normalize_answer(raw)
    assert normalize_answer(once) == once
