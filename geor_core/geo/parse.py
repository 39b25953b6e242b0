"""Parse a model completion into a prediction: the one rule used by rewards, `geor score` and evaluate.

The rule (docs/design.md, "Parsing a completion", sums it up):

- The answer is the text inside the last complete ``<answer>...</answer>`` block (the last
  ``<answer>`` that has a ``</answer>`` after it, up to the first ``</answer>`` that follows it).
  With no answer tag at all, the answer is the whole text. An ``<answer>`` or ``</answer>`` with
  no complete block (a completion cut off mid-answer) is an error: ``answer_tag_unmatched``.
- A coordinate pair is ``(lat, lon)``: ASCII digits with optional decimals (``12``, ``12.5``,
  ``.5``), optional signs (``+``, ``-``, ``U+2212``), spaces and a degree sign, and N/S
  (latitude) or E/W (longitude) suffixes in either case. A suffix decides the sign: S and W
  negative, N and E positive (``(-33.8 S, ...)`` is -33.8, ``(-33.8 N, ...)`` 33.8).
- The prediction is the first in-range pair (lat in [-90, 90], lon in [-180, 180]) of the answer.
  ``format_ok`` iff the answer holds exactly one pair and it is in range. No pair in range: the
  prediction is missing (``lat``/``lon`` None) with error ``no_pair`` or ``pair_out_of_range``.
- Labels ``Country:``, ``State:``, ``City:``, ``Coordinates:`` (exactly this case, not inside a
  longer word, optional spaces before the colon). ``chain_ok`` iff each appears exactly once, in
  that order. The value of a label is the text up to the next label, ``;`` or line break, with
  surrounding spaces, commas and periods stripped; so the ``;``-separated form and the paper's
  space-separated form (``Country: X State: Y City: Z Coordinates: (..)``) give the same fields.
  A label named more than once: its first value is used. Empty values, and values longer than
  ``MAX_NAME_CHARS`` (not a place name), are None.

Input: a ``str``, or a TRL conversational completion (a list of ``{"role", "content"}`` messages:
the last assistant message is used; content may be a list of ``{"type": "text", "text"}`` parts).
Anything else (None, bytes, numbers) gives a ``Parsed`` with error ``not_text``.

``Parsed.error`` is "" when there is a prediction, else one reason code: ``not_text``, ``empty``
(empty or blank text), ``answer_tag_unmatched``, ``no_pair``, ``pair_out_of_range`` (or
``internal_error``, a bug here, counted instead of raised). Parsing never raises, and every
pattern uses possessive quantifiers, so even a 1 MB adversarial string parses in linear time.
The usual answer (``Country: X; State: Y; City: Z; Coordinates: (lat, lon)``, plain names and
numbers) is read by one match that gives exactly what the rule above gives (tests/test_parse.py
runs both on the same answers); anything else goes through the rule step by step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

MAX_NAME_CHARS = 100

_OPEN, _CLOSE = "<answer>", "</answer>"
_NUMBER = r"([+\-\u2212]?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++))"  # ASCII digits only
_DEGREE = r"\s*+(?:[°º]\s*+)?"
_PAIR_RE = re.compile(
    r"\(\s*+" + _NUMBER + _DEGREE + r"([NSns]?)\s*+,\s*+" + _NUMBER + _DEGREE + r"([EWew]?)\s*+\)"
)
# "not inside a longer word" is checked after the first letter (C or S), not before it: the same
# rule, but the pattern then starts with a character set and scans twice as fast.
_LABEL_RE = re.compile(r"(C(?<![A-Za-z]C)(?:ountry|ity|oordinates)|S(?<![A-Za-z]S)tate)\s*+:")
_CHAIN = ["Country", "State", "City", "Coordinates"]
_LINE_END_RE = re.compile(r"[\n\r]")
_WHITESPACE = "".join(c for c in map(chr, range(0x3001)) if c.isspace())  # the last one is U+3000
_VALUE_STRIP = ",." + _WHITESPACE
# The usual answer: "Country: X; State: Y; City: Z; Coordinates: (lat, lon)" at its start. A name
# here is one the general rule keeps as it is (1 to MAX_NAME_CHARS characters; [\s,.], which is
# _VALUE_STRIP, at neither end) and holds no ":;()" or line break, so no label, pair or separator:
# up to the match's end the general rule finds these four labels, names and pair (_parse_usual
# reads the rest).
_NAME = rf"[^\S\n\r]*+([^\s,.:;()][^:;()\n\r]{{0,{MAX_NAME_CHARS - 1}}}+)(?<![\s,.])"
_PLAIN_NUMBER = r"(-?[0-9]++(?:\.[0-9]*+)?)"
_USUAL_RE = re.compile(
    rf"\s*+Country:{_NAME};\s*+State:{_NAME};\s*+City:{_NAME};\s*+Coordinates:"
    rf"\s*+\(\s*+{_PLAIN_NUMBER}\s*+,\s*+{_PLAIN_NUMBER}\s*+\)"
)

# Reason codes in Parsed.error ("" when a prediction exists).
NOT_TEXT = "not_text"
EMPTY = "empty"
ANSWER_TAG_UNMATCHED = "answer_tag_unmatched"
NO_PAIR = "no_pair"
PAIR_OUT_OF_RANGE = "pair_out_of_range"
INTERNAL_ERROR = "internal_error"  # a bug in this module, never expected; counted, not raised


@dataclass(frozen=True, slots=True)
class Parsed:
    """One parsed completion. ``lat``/``lon`` are None when the prediction is missing."""

    country: str | None
    state: str | None
    city: str | None
    lat: float | None
    lon: float | None
    format_ok: bool
    chain_ok: bool
    error: str


@dataclass(frozen=True)
class ParsedBatch:
    """Many parsed completions as columns: NaN lat/lon where the prediction is missing."""

    lat: np.ndarray
    lon: np.ndarray
    format_ok: np.ndarray
    chain_ok: np.ndarray
    country: list[str | None]
    state: list[str | None]
    city: list[str | None]
    error: list[str]

    @property
    def missing(self) -> np.ndarray:
        """True where no in-range pair was found (parse failed)."""
        return np.isnan(self.lat)


_NAN = float("nan")
# Internal rows are (country, state, city, lat, lon, format_ok, chain_ok, error) with NaN for a
# missing lat/lon, so parse_many builds float arrays in C; Parsed turns NaN into None.
_FAILED = {
    code: (None, None, None, _NAN, _NAN, False, False, code)
    for code in (NOT_TEXT, EMPTY, ANSWER_TAG_UNMATCHED, INTERNAL_ERROR)
}


def parse_completion(completion: object) -> Parsed:
    """Parse one completion (str or TRL conversational list) by the one rule; never raises."""
    country, state, city, lat, lon, format_ok, chain_ok, error = _parse_fields(completion)
    if error:
        lat = lon = None
    return Parsed(country, state, city, lat, lon, format_ok, chain_ok, error)


def parse_many(completions: Iterable[object]) -> ParsedBatch:
    """Parse many completions into columns (faster than building a Parsed per row); never raises."""
    rows = [_parse_fields(c) for c in completions]
    n = len(rows)
    if n == 0:
        empty = np.empty(0)
        return ParsedBatch(empty, empty.copy(), np.zeros(0, bool), np.zeros(0, bool), [], [], [], [])
    country, state, city, lat, lon, format_ok, chain_ok, error = zip(*rows, strict=True)
    return ParsedBatch(
        lat=np.array(lat, dtype=np.float64),
        lon=np.array(lon, dtype=np.float64),
        format_ok=np.array(format_ok, dtype=bool),
        chain_ok=np.array(chain_ok, dtype=bool),
        country=list(country),
        state=list(state),
        city=list(city),
        error=list(error),
    )


def completion_text(completion: object) -> str | None:
    """The text of a completion: the str itself or the last assistant message's content; else None."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(completion, list | tuple):
        return None
    messages = [m for m in completion if isinstance(m, dict)]
    assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
    if not assistant:
        return None
    content = assistant[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type", "text") == "text"]
        if parts and all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def _parse_fields(completion: object) -> tuple:
    try:
        text = completion if type(completion) is str else completion_text(completion)
        if text is None:
            return _FAILED[NOT_TEXT]
        if not text or text.isspace():
            return _FAILED[EMPTY]
        answer = _answer_text(text)
        if answer is None:
            return _FAILED[ANSWER_TAG_UNMATCHED]
        return _parse_usual(answer) or _parse_answer(answer)
    except Exception:  # the contract is "never raises": a bug here must not stop a training run
        return _FAILED[INTERNAL_ERROR]


def _parse_usual(answer: str) -> tuple | None:
    """What _parse_answer gives for the usual answer (_USUAL_RE), by one match and two searches of
    the rest; None for any other answer, or a pair out of range (the general rule says which)."""
    usual = _USUAL_RE.match(answer)
    if usual is None:
        return None
    country, state, city, lat, lon = usual.groups()
    lat, lon = float(lat), float(lon)
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    rest = usual.end()  # the rest of the answer: a pair there breaks the format, a label the chain
    format_ok = _PAIR_RE.search(answer, rest) is None
    chain_ok = _LABEL_RE.search(answer, rest) is None
    return (country, state, city, lat, lon, format_ok, chain_ok, "")


def _parse_answer(answer: str) -> tuple:
    """The general rule on the answer text."""
    country, state, city, chain_ok = _labelled_fields(answer)
    lat = lon = _NAN
    found = False
    n_pairs = 0
    for match in _PAIR_RE.finditer(answer):
        n_pairs += 1
        if found:
            break  # a second pair: the prediction and format_ok are decided
        lat_s, ns, lon_s, ew = match.groups()
        la = _to_float(lat_s)
        lo = _to_float(lon_s)
        if ns:
            la = -abs(la) if ns in "Ss" else abs(la)
        if ew:
            lo = -abs(lo) if ew in "Ww" else abs(lo)
        if -90.0 <= la <= 90.0 and -180.0 <= lo <= 180.0:
            lat, lon, found = la, lo, True
    if not found:
        return (country, state, city, _NAN, _NAN, False, chain_ok, PAIR_OUT_OF_RANGE if n_pairs else NO_PAIR)
    return (country, state, city, lat, lon, n_pairs == 1, chain_ok, "")


def _answer_text(text: str) -> str | None:
    close = text.rfind(_CLOSE)
    if close < 0:
        return None if _OPEN in text else text
    start = text.rfind(_OPEN, 0, close)
    if start < 0:
        return None
    start += len(_OPEN)
    return text[start : text.find(_CLOSE, start)]


def _to_float(number: str) -> float:
    return -float(number[1:]) if number[0] == "\u2212" else float(number)


def _labelled_fields(answer: str) -> tuple[str | None, str | None, str | None, bool]:
    pieces = _LABEL_RE.split(answer)  # [before, label, text, label, text, ...]
    if len(pieces) == 1:
        return None, None, None, False
    labels = pieces[1::2]
    return (
        _first_value(pieces, labels, "Country"),
        _first_value(pieces, labels, "State"),
        _first_value(pieces, labels, "City"),
        labels == _CHAIN,
    )


def _first_value(pieces: list[str], labels: list[str], label: str) -> str | None:
    try:
        text = pieces[2 * labels.index(label) + 2]
    except ValueError:
        return None
    text = text.partition(";")[0]
    if "\n" in text or "\r" in text:
        text = _LINE_END_RE.split(text, 1)[0]
    value = text.strip(_VALUE_STRIP)
    return value if value and len(value) <= MAX_NAME_CHARS else None
