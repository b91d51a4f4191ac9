r"""Grading of model outputs: final-answer extraction, answer normalisation and option parsing.

Exact-answer tasks (GSM8K, MATH, custom jsonl) compare the final answer a model wrote with the gold
answer after both pass through :func:`normalize_answer`; simple numbers also compare by exact
rational value, so ``"0.5"``, ``"1/2"`` and ``"\frac{1}{2}"`` all match. Multiple-choice tasks read
which option a completion names with :func:`extract_choice`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed\s+([^\s$]+)")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_NUMBER_THEN_WORDS = re.compile(r"([-+]?[\d,]*\.?\d+)\s+[A-Za-z].*")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?:\D|$))")
_FRAC_BRACED = re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_TRAILING_UNIT = re.compile(r"(?<=[\d}])\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_SIMPLE_TOKEN = re.compile(r"[-+]?[\w.]+")
_SHORT_ASSIGNMENT = re.compile(r"[A-Za-z]{1,2}=(?!=)(.+)")
_SPACING_CMDS = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ")
_DEGREE_MARKS = ("^{\\circ}", "^\\circ", "\\circ", "°")


def _last_boxed(text: str) -> str | None:
    r"""Return the content of the last ``\boxed{...}`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:pos].strip()
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None


def _clean_segment(segment: str) -> str | None:
    """Tidy the text that follows an answer marker; keep a leading number followed by words."""
    segment = segment.strip().lstrip(":").strip().rstrip(".").strip()
    if not segment:
        return None
    unwrapped = segment.replace("$", "").strip()
    match = _NUMBER_THEN_WORDS.fullmatch(unwrapped)
    return match.group(1) if match else segment


def extract_final_answer(text: str) -> str | None:
    r"""Find the final answer in a model completion or a reference solution.

    Looks, in order, for the last ``\boxed{...}`` (with balanced braces), the rest of the line
    after the last ``####``, the rest of the line after the last "answer is", and finally the last
    number in the text.

    Args:
        text: The completion.

    Returns:
        The answer text (not yet normalised), or None when nothing answer-like is found.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    for marker in ("####", "answer is"):
        index = text.lower().rfind(marker)
        if index >= 0:
            found = _clean_segment(text[index + len(marker) :].split("\n", 1)[0])
            if found is not None:
                return found
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def _strip_text_commands(s: str) -> str:
    r"""Drop a trailing ``\text{unit}`` after a value and unwrap any other ``\text{...}``."""
    s = _TRAILING_UNIT.sub("", s)
    return _TEXT_CMD.sub(r"\1", s)


def _canonical_number(s: str) -> str:
    """Write a plain decimal number canonically ("5.0" -> "5", "0.50" -> "0.5", ".5" -> "0.5")."""
    if not _PLAIN_NUMBER.fullmatch(s):
        return s
    try:
        value = Decimal(s)
    except InvalidOperation:
        return s
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _normalize_once(s: str) -> str:
    """Apply one pass of every normalisation rule."""
    s = s.strip().replace("$", "")
    for cmd in _SPACING_CMDS:
        s = s.replace(cmd, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for mark in _DEGREE_MARKS:
        s = s.replace(mark, "")
    s = s.replace("\\%", "").replace("%", "")
    s = _strip_text_commands(s)
    s = "".join(s.split()).rstrip(".")
    s = _THOUSANDS_COMMA.sub("", s)
    assignment = _SHORT_ASSIGNMENT.fullmatch(s)
    if assignment:
        s = assignment.group(1)
    s = _FRAC_SHORT.sub(r"\1/\2", s)
    s = _FRAC_BRACED.sub(_frac_to_slash, s)
    return _canonical_number(s)


def _frac_to_slash(match: re.Match) -> str:
    r"""Rewrite ``\frac{a}{b}`` as ``a/b`` when both parts are simple tokens."""
    num, den = match.group(1), match.group(2)
    if _SIMPLE_TOKEN.fullmatch(num) and _SIMPLE_TOKEN.fullmatch(den):
        return f"{num}/{den}"
    return match.group(0)


def normalize_answer(s: str) -> str:
    r"""Bring an answer string to a canonical surface form.

    Removes ``$``, whitespace, a trailing period, thousands separators, ``\left``/``\right``, thin
    spaces (``\!``, ``\,``), degree marks, percent signs and trailing ``\text{...}`` units; unwraps
    other ``\text{...}``; maps ``\dfrac`` to ``\frac`` and simple fractions to ``a/b``; drops a short
    ``x=`` prefix; writes plain numbers canonically ("5.0" -> "5", "0.50" -> "0.5"). Rules are
    applied until nothing changes, so the function is idempotent.

    Args:
        s: The answer text.

    Returns:
        The normalised answer.
    """
    for _ in range(16):
        new = _normalize_once(s)
        if new == s:
            break
        s = new
    return s


def _as_fraction(s: str) -> Fraction | None:
    """Exact rational value of a normalised plain number or ``a/b``, or None."""
    parts = s.split("/")
    if len(parts) > 2 or not all(_PLAIN_NUMBER.fullmatch(p) for p in parts):
        return None
    try:
        value = Fraction(parts[0])
        return value / Fraction(parts[1]) if len(parts) == 2 else value
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer equals the gold answer after normalisation.

    Args:
        pred: The predicted answer (None counts as wrong).
        gold: The gold answer.

    Returns:
        True when the normalised strings are equal or both are numbers of the same exact value.
    """
    if pred is None:
        return False
    a, b = normalize_answer(pred), normalize_answer(str(gold))
    if a == b:
        return True
    fa, fb = _as_fraction(a), _as_fraction(b)
    return fa is not None and fb is not None and fa == fb


def grade_exact(text: str, gold: str) -> bool:
    """Grade a free-form completion against a gold final answer.

    Args:
        text: The completion.
        gold: The gold answer.

    Returns:
        True when the extracted final answer, or else the completion's first line, matches.
    """
    if answers_match(extract_final_answer(text), gold):
        return True
    first_line = text.strip().split("\n", 1)[0]
    return bool(first_line) and answers_match(first_line, gold)


def _option_prefix(text: str, choices: tuple[str, ...], labels: tuple[str, ...]) -> int | None:
    """Index of the longest option text that starts the completion (options that are labels skipped)."""
    lowered = " ".join(text.lower().split())
    best, best_len = None, 0
    for index, option in enumerate(choices):
        opt = " ".join(option.lower().split()).rstrip(".")
        if opt and option.strip() not in labels and lowered.startswith(opt) and len(opt) > best_len:
            best, best_len = index, len(opt)
    return best


def _label_pattern(labels: tuple[str, ...]) -> str:
    """Regex alternation of the labels, longest first."""
    return "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))


def _find_label(text: str, labels: tuple[str, ...]) -> int | None:
    """Index of the label named by "answer is B", "Answer: (B)", a leading "B." or any lone "B"."""
    alt = _label_pattern(labels)
    edge = r"(?![\w])"
    patterns = (
        rf"answer\s*(?:is|:)?\s*:?\s*[\(\[]?({alt}){edge}",
        rf"^\s*[\(\[]?({alt})[\)\]]?(?:[\s.:,)\]]|$)",
        rf"(?<![\w])[\(\[]?({alt}){edge}",
    )
    for flags, pattern in zip((re.IGNORECASE, 0, 0), patterns, strict=True):
        match = re.search(pattern, text, flags)
        if match and match.group(1) in labels:
            return labels.index(match.group(1))
    return None


def extract_choice(text: str, labels: tuple[str, ...], choices: tuple[str, ...] = ()) -> int | None:
    """Read which option a multiple-choice completion names.

    Tries, in order: the whole completion being a label ("B", "(B)", "B."); the completion
    starting with an option's text; "answer is B" / "Answer: B"; a leading label token; the first
    standalone label anywhere.

    Args:
        text: The completion.
        labels: The option labels as released (for example A-E or 1-4).
        choices: The option texts, in label order.

    Returns:
        The option index, or None when no option is recognised.
    """
    stripped = text.strip()
    bare = stripped.strip("()[]. :")
    if bare in labels:
        return labels.index(bare)
    by_text = _option_prefix(stripped, choices, labels)
    if by_text is not None:
        return by_text
    return _find_label(stripped, labels) if labels else None
