"""The one parsing rule (docs/design.md, "Parsing a completion"): every accepted form, every
failure, speed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geor_core.geo import parse
from geor_core.geo.parse import MAX_NAME_CHARS, Parsed, parse_completion, parse_many

COR = "<think>Japan, Hokkaido, Biei.</think><answer>Country: Japan; State: Hokkaido; City: Biei; Coordinates: (43.452002, 142.615358)</answer>"


def test_semicolon_form_gives_every_field():
    assert parse_completion(COR) == Parsed("Japan", "Hokkaido", "Biei", 43.452002, 142.615358, True, True, "")


def test_paper_space_separated_form_gives_the_same_fields():
    text = "<answer>Country: United States State: California City: Los Angeles Coordinates: (34.05, -118.24)</answer>"
    p = parse_completion(text)
    assert (p.country, p.state, p.city) == ("United States", "California", "Los Angeles")
    assert (p.lat, p.lon, p.format_ok, p.chain_ok) == (34.05, -118.24, True, True)


def test_city_whose_name_contains_a_label_word():
    p = parse_completion(
        "Country: United States; State: Missouri; City: Kansas City; Coordinates: (39.1, -94.58)"
    )
    assert p.city == "Kansas City" and p.chain_ok


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("(33.8688 S, 151.2093 E)", (-33.8688, 151.2093)),
        ("(33.8688S,151.2093E)", (-33.8688, 151.2093)),
        ("(40.7 N, 74.0 W)", (40.7, -74.0)),
        ("(40.7°N, 74.0°W)", (40.7, -74.0)),
        ("(-33.8 S, 151.2 E)", (-33.8, 151.2)),  # the suffix decides the sign
        ("(-33.8 N, -151.2 E)", (33.8, 151.2)),
        ("(12.5 s, 3 w)", (-12.5, -3.0)),
        ("(-12.5, +3)", (-12.5, 3.0)),
        ("(\u221212.5, 3)", (-12.5, 3.0)),  # Unicode minus
        ("(  12 ,   -3.25  )", (12.0, -3.25)),
        ("(12., .5)", (12.0, 0.5)),
        ("(90, 180)", (90.0, 180.0)),
        ("(-90, -180)", (-90.0, -180.0)),
    ],
)
def test_coordinate_pair_variants(pair, expected):
    p = parse_completion(f"<answer>Country: X; State: Y; City: Z; Coordinates: {pair}</answer>")
    assert (p.lat, p.lon) == pytest.approx(expected)
    assert p.format_ok and p.error == ""


@pytest.mark.parametrize(
    "text",
    [
        "(1e5, 2)",
        "(12, 3 N)",
        "(12 E, 3)",
        "[12, 3]",
        "12, 3",
        "(12 3)",
        "(,)",
        "(-, 3)",
        "(\u0661\u0662, \u0663)",
    ],
)
def test_not_a_pair(text):
    p = parse_completion(text)
    assert p.lat is None and p.error == "no_pair" and not p.format_ok


def test_several_pairs_use_the_first_in_range_one_and_fail_format():
    p = parse_completion("<answer>Coordinates: (91, 10) (10, 200) (45.5, 9.2) (1, 2)</answer>")
    assert (p.lat, p.lon) == (45.5, 9.2)
    assert not p.format_ok and p.error == ""


def test_two_in_range_pairs_use_the_first():
    p = parse_completion("Coordinates: (1, 2) or maybe (3, 4)")
    assert (p.lat, p.lon, p.format_ok) == (1.0, 2.0, False)


def test_single_out_of_range_pair_is_missing():
    for text in ["(90.0001, 0)", "(0, -180.5)", "(" + "9" * 400 + ", 1)"]:
        p = parse_completion(text)
        assert p.lat is None and p.lon is None and p.error == "pair_out_of_range" and not p.format_ok, text


def test_out_of_range_pair_before_the_answer_pair_breaks_format_only():
    p = parse_completion("(100, 0) (10, 20)")
    assert (p.lat, p.lon, p.format_ok) == (10.0, 20.0, False)


def test_no_tags_means_the_whole_text():
    p = parse_completion(
        "I think this is Country: France; State: Ile-de-France; City: Paris; Coordinates: (48.85, 2.35)"
    )
    assert (p.country, p.lat, p.lon, p.format_ok, p.chain_ok) == ("France", 48.85, 2.35, True, True)


def test_last_answer_block_wins():
    text = "<answer>Country: A; Coordinates: (1, 1)</answer> then <answer>Country: B; Coordinates: (2, 2)</answer> tail (3, 3)"
    p = parse_completion(text)
    assert (p.country, p.lat, p.lon, p.format_ok) == ("B", 2.0, 2.0, True)


def test_nested_answer_tags_use_the_innermost_last_block():
    p = parse_completion("<answer>(1, 1) <answer>(2, 2)</answer> (3, 3)</answer>")
    assert (p.lat, p.format_ok) == (2.0, True)


def test_pairs_outside_the_answer_block_are_ignored():
    p = parse_completion("<think>maybe (10, 10)?</think><answer>Coordinates: (20, 20)</answer>")
    assert (p.lat, p.format_ok) == (20.0, True)
    p = parse_completion("<think>maybe (10, 10)?</think><answer>Country: Peru</answer>")
    assert p.lat is None and p.error == "no_pair" and p.country == "Peru"


@pytest.mark.parametrize(
    "text", ["<answer>Coordinates: (1, 2)", "Coordinates: (1, 2)</answer>", "</answer>(1,2)<answer>"]
)
def test_unmatched_answer_tag_is_an_error(text):
    p = parse_completion(text)
    assert p.lat is None and p.error == "answer_tag_unmatched" and not p.format_ok


@pytest.mark.parametrize(
    ("text", "chain_ok"),
    [
        ("Country: A; State: B; City: C; Coordinates: (1, 2)", True),
        ("Country:A;State:B;City:C;Coordinates:(1,2)", True),
        ("Country : A; State : B; City : C; Coordinates : (1, 2)", True),
        ("State: B; Country: A; City: C; Coordinates: (1, 2)", False),  # order
        ("Country: A; State: B; State: B2; City: C; Coordinates: (1, 2)", False),  # twice
        ("Country: A; City: C; Coordinates: (1, 2)", False),  # one missing
        ("Country: A; State: B; City: C; Coordinates: (1, 2); City: D", False),  # extra after
        ("country: A; state: B; city: C; coordinates: (1, 2)", False),  # labels are case-sensitive
        ("SubCountry: A; State: B; City: C; Coordinates: (1, 2)", False),  # inside a word: no label
    ],
)
def test_chain_ok(text, chain_ok):
    assert parse_completion(text).chain_ok is chain_ok


def test_repeated_label_keeps_its_first_value():
    p = parse_completion("Country: A; State: B; State: B2; City: C; Coordinates: (1, 2)")
    assert (p.country, p.state, p.city) == ("A", "B", "C")


def test_values_end_at_separators_and_are_stripped():
    p = parse_completion("Country:  Japan , \nState:\tHokkaido.;City: ; Coordinates: (1, 2)")
    assert (p.country, p.state, p.city) == ("Japan", "Hokkaido", None)


def test_overlong_value_is_not_a_name():
    p = parse_completion(
        f"Country: {'x' * (MAX_NAME_CHARS + 1)}; State: {'y' * MAX_NAME_CHARS}; Coordinates: (1, 2)"
    )
    assert p.country is None and p.state == "y" * MAX_NAME_CHARS


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, "not_text"),
        (b"(1, 2)", "not_text"),
        (3.5, "not_text"),
        (7, "not_text"),
        (["(1, 2)"], "not_text"),
        ({"content": 5}, "not_text"),
        ("", "empty"),
        ("  \n\t", "empty"),
        ("no coordinates here", "no_pair"),
        ("\x00\ud800(", "no_pair"),
    ],
)
def test_garbage_gives_a_reason_not_an_exception(value, error):
    p = parse_completion(value)
    assert p.error == error and p.lat is None and not p.format_ok and not p.chain_ok


def test_trl_conversational_completion():
    message = [{"role": "assistant", "content": COR}]
    assert parse_completion(message) == parse_completion(COR)
    parts = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": COR[:50]}, {"type": "text", "text": COR[50:]}],
        }
    ]
    assert parse_completion(parts) == parse_completion(COR)
    history = [{"role": "user", "content": "(5, 5)"}, {"role": "assistant", "content": "(6, 6)"}]
    assert parse_completion(history).lat == 6.0


def test_parse_many_matches_parse_completion():
    texts = [
        COR,
        "garbage",
        None,
        "(1, 2) (3, 4)",
        "<answer>(91, 0)</answer>",
        [{"role": "assistant", "content": "(5, 6)"}],
    ]
    batch = parse_many(texts)
    singles = [parse_completion(t) for t in texts]
    assert batch.lat.dtype == np.float64 and batch.format_ok.dtype == bool
    for i, p in enumerate(singles):
        assert (batch.country[i], batch.state[i], batch.city[i], batch.error[i]) == (
            p.country,
            p.state,
            p.city,
            p.error,
        )
        assert bool(batch.format_ok[i]) is p.format_ok and bool(batch.chain_ok[i]) is p.chain_ok
        if p.lat is None:
            assert math.isnan(batch.lat[i]) and math.isnan(batch.lon[i]) and batch.missing[i]
        else:
            assert (batch.lat[i], batch.lon[i]) == (p.lat, p.lon) and not batch.missing[i]
    assert parse_many([]).lat.shape == (0,)


USUAL = "Country: {}; State: {}; City: {}; Coordinates: ({}, {})"


def both_paths(answer: str) -> tuple[tuple | None, tuple]:
    """The fields of an answer by the fast path (None where it does not apply) and by the general rule."""
    return parse._parse_usual(answer), parse._parse_answer(answer)


@pytest.mark.parametrize(
    "answer",
    [
        USUAL.format("Japan", "Hokkaido", "Biei", "43.452002", "142.615358"),
        USUAL.format("United States", "Missouri", "Kansas City", "39.1", "-94.58"),
        USUAL.format("Côte d'Ivoire", "Lagunes", "St. Louis", "-0", "180"),
        USUAL.format("x" * MAX_NAME_CHARS, "A", "São Paulo", "90", "-180.0"),
        USUAL.format("Japan", "Hokkaido", "Biei", "12.", "007"),
        "  Country:Japan;State:\u3000Hokkaido;City: \u2028Biei;\n Coordinates:( 1 ,\t2 )",
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "2") + " (3, 4)",  # a second pair: not format_ok
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "2") + " (91, 4) or (1 2)",
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "2") + "; City: Sapporo",  # a label again: no chain
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "2") + " SubCountry: x. (x)",
    ],
)
def test_fast_path_gives_what_the_general_rule_gives(answer):
    fast, general = both_paths(answer)
    assert fast is not None and fast == general


@pytest.mark.parametrize(
    "answer",
    [
        USUAL.format("Japan", "", "Biei", "1", "2"),  # an empty name
        USUAL.format("Japan", ".", "Biei", "1", "2"),
        USUAL.format("Japan,", "Hokkaido", "Biei", "1", "2"),  # stripped at the end
        USUAL.format(".Japan", "Hokkaido", "Biei", "1", "2"),  # stripped at the start
        USUAL.format("Japan", ", Hokkaido", "Biei", "1", "2"),
        USUAL.format("Japan ", "Hokkaido", "Biei", "1", "2"),
        USUAL.format("x" * (MAX_NAME_CHARS + 1), "Hokkaido", "Biei", "1", "2"),  # too long: None
        USUAL.format("\nJapan", "Hokkaido", "Biei", "1", "2"),  # the value ends at the line break
        USUAL.format("Japan", "Hok\rkaido", "Biei", "1", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei (Hokkaido)", "1", "2"),  # a bracket in a name
        USUAL.format("Japan", "Hokkaido", "Bi(1, 2)ei", "1", "2"),  # a pair in a name
        USUAL.format("Japan", "State: Hokkaido", "Biei", "1", "2"),  # a label in a name
        USUAL.format("Japan", "Hokkaido", "Biei", "91", "2"),  # out of range: the general rule says why
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "180.5"),
        USUAL.format("Japan", "Hokkaido", "Biei", "1" * 400, "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", "+1", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", "\u22121", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", ".5", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", "1 S", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", "1°", "2"),
        USUAL.format("Japan", "Hokkaido", "Biei", "1", "2 W"),
        "x " + USUAL.format("Japan", "Hokkaido", "Biei", "1", "2"),
        "(1, 2) " + USUAL.format("Japan", "Hokkaido", "Biei", "3", "4"),
        "XCountry: Japan; State: Hokkaido; City: Biei; Coordinates: (1, 2)",
        "Country : Japan; State: Hokkaido; City: Biei; Coordinates: (1, 2)",
        "Country: Japan; City: Biei; State: Hokkaido; Coordinates: (1, 2)",
        "Country: Japan State: Hokkaido City: Biei Coordinates: (1, 2)",
    ],
)
def test_other_answers_take_the_general_rule(answer):
    assert parse._parse_usual(answer) is None


NAME_CHARACTERS = "aZ éß ,.;:()\n\r\t\u3000\u2028\x85<>/CSountryitateoordinates"
ODD_NUMBERS = ["-0", "90", "-180.000", "90.5", "1e5", "+1", "12.", ".5", "1 N", "2°"]
name = st.sampled_from(["Japan", "St. Louis", "x" * MAX_NAME_CHARS]) | st.text(NAME_CHARACTERS, max_size=8)


@settings(max_examples=3000, deadline=None)
@given(
    st.tuples(name, name, name),
    st.floats(-90, 90).map(str) | st.sampled_from(ODD_NUMBERS),
    st.floats(-180, 180).map(str) | st.sampled_from(ODD_NUMBERS),
    st.sampled_from(["", "", "", " \n", "x ", "(1, 2) ", "City: Y "]),
    st.sampled_from(["", "", "", ".", " (1, 2)", " (91, 2)", " City: X", "\nCountry: A", ")"]),
    st.sampled_from(["; ", "; ", "; ", ";", ";\n", " ", "; ;"]),
)
def test_fast_path_agrees_with_the_general_rule(names, lat, lon, prefix, tail, separator):
    answer = prefix + USUAL.format(*names, lat, lon).replace("; ", separator) + tail
    fast, general = both_paths(answer)
    assert fast is None or fast == general


ADVERSARIAL_1MB = {
    "digits": "1" * 1_000_000,
    "huge_number_in_pair": "(" + "1" * 1_000_000 + ", 2)",
    "open_paren_then_spaces": "(1" + " " * 1_000_000 + "x",
    "open_parens": "( " * 500_000,
    "unclosed_pairs": "(1," * 333_333,
    "decimal_runs": "(1.1.1.1, " * 100_000,
    "many_valid_pairs": "(1,2)" * 200_000,
    "many_out_of_range_pairs": "(91,2)" * 166_000,
    "label_spam": "Country:" * 125_000,
    "label_spam_spaces": "City: " * 166_000,
    "separators": ";" * 1_000_000,
    "answer_tags": "<answer>" * 125_000,
    "nested_answer_tags": "<answer>" * 60_000 + "(1, 2)" + "</answer>" * 60_000,
    "unicode": "é" * 1_000_000,
    "long_value": "Country: Japan" + " " * 1_000_000 + "x; Coordinates: (1, 2)",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_1MB))
def test_one_megabyte_strings_parse_in_linear_time(name):
    text = ADVERSARIAL_1MB[name]
    started = time.perf_counter()
    parsed = parse_completion(text)
    elapsed = time.perf_counter() - started
    assert isinstance(parsed, Parsed)
    assert elapsed < 1.0, f"{name}: {elapsed:.3f} s"  # linear: ~5-100 ms here; backtracking would be minutes


def test_one_megabyte_strings_still_follow_the_rule():
    assert parse_completion(ADVERSARIAL_1MB["many_valid_pairs"]).format_ok is False
    assert parse_completion(ADVERSARIAL_1MB["many_valid_pairs"]).lat == 1.0
    assert parse_completion(ADVERSARIAL_1MB["nested_answer_tags"]).format_ok is True
    long_value = parse_completion(ADVERSARIAL_1MB["long_value"])
    assert long_value.country is None and long_value.lat == 1.0


near_miss = st.builds(
    lambda a, b, c, d, e: f"{a}({b}{c}, {d}{e})",
    st.sampled_from(["", "<answer>", "</answer>", "Country: ", "Coordinates:", "<answer>City: x; "]),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(str), st.text("0123456789.-+ ", max_size=12)
    ),
    st.sampled_from(["", " N", "S", "°", " E", "x"]),
    st.one_of(st.integers(-(10**30), 10**30).map(str), st.text("0123456789.-+e ", max_size=12)),
    st.sampled_from(["", " W", "E", ")", "(", "</answer>"]),
)
anything = st.one_of(
    st.text(max_size=120),
    st.text(
        alphabet=st.sampled_from(list("()<>/answer:;,.-+0123456789 NSEWCountryStateCity\n")), max_size=120
    ),
    near_miss,
    st.lists(near_miss, max_size=5).map("".join),
    st.none(),
    st.binary(max_size=20),
    st.integers(),
    st.floats(),
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.sampled_from(["assistant", "user"]),
                "content": st.one_of(st.text(max_size=50), st.none(), near_miss),
            }
        ),
        max_size=3,
    ),
)


@settings(max_examples=3000, deadline=None)
@given(anything)
def test_parse_never_raises_and_keeps_its_invariants(value):
    p = parse_completion(value)
    assert isinstance(p, Parsed)
    assert (p.lat is None) == (p.lon is None) == (p.error != "")
    if p.lat is not None:
        assert -90.0 <= p.lat <= 90.0 and -180.0 <= p.lon <= 180.0
    if p.format_ok:
        assert p.lat is not None
    for name in (p.country, p.state, p.city):
        assert name is None or (0 < len(name) <= MAX_NAME_CHARS and name == name.strip())
