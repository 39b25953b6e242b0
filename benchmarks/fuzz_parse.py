"""Fuzz the completion parser: N generated inputs through geor_core.geo.parse, counting exceptions.

    python benchmarks/fuzz_parse.py [--n 1000000] [--seed 0]

Inputs, in equal shares: random Unicode (any code point, lone surrogates included); near-miss
answers (labels dropped, doubled or reordered, hemisphere letters on the wrong number, missing
commas and brackets, signs and degree marks in odd places); huge and odd numbers (hundreds of
digits, exponents, inf/nan words, many dots); nested, unmatched and repeated answer tags; a soup
of the grammar's own tokens; and non-text values (None, bytes, numbers, TRL message lists, with
odd contents). Each input goes through parse_completion inside try/except; the result is also
checked against the rule's invariants (a prediction iff no error, in range; format_ok implies a
prediction; names stripped and at most MAX_NAME_CHARS).

Prints one JSON object: n, exceptions (must be 0), invariant_violations (must be 0), the first
few failing inputs (repr, cut to 200 characters), the count per error code, and strings_per_s
(parse time only, generation excluded).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

from geor_core.geo.parse import MAX_NAME_CHARS, Parsed, parse_completion

CHUNK = 50_000
TOKENS = [
    "<answer>", "</answer>", "<think>", "</think>", "Country:", "State:", "City:", "Coordinates:", "country:",
    "(", ")", ",", ";", "\n", " ", "-", "+", "\u2212", ".", "°", "N", "S", "E", "W", "0", "9", "12.5", "-33.8",
    "181", "90.0000001", "1e5", "nan", "inf", "Japan", "São Paulo", "Côte d'Ivoire", "SubCountry:", "\u00a0",
]  # fmt: skip
NUMBERS = ["0", "-0", "90", "-90", "180", "-180", "90.000001", "1" * 300, "9" * 5000, "1e308", "1e-308", "nan",
           "inf", "-inf", "1.2.3", "..5", "5.", ".5", "+-5", "--5", "\u22125", "١٢", "٣.٥", "0x1F", "1_000"]  # fmt: skip


def random_unicode(rng: random.Random) -> str:
    return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(0, 120)))


def near_miss(rng: random.Random) -> str:
    labels = [f"Country: {rng.choice(['Japan', '', 'France;'])}", f"State: {rng.choice(['Hokkaido', ':', ''])}",
              f"City: {rng.choice(['Biei', 'Kansas City', '(1, 2)'])}"]  # fmt: skip
    lat, lon = rng.choice(NUMBERS[:12]), rng.choice(NUMBERS[:12])
    pair = rng.choice([f"({lat}, {lon})", f"({lat} E, {lon} N)", f"({lat}S,{lon}W)", f"({lat} {lon})", f"{lat}, {lon}",
                       f"[{lat}, {lon}]", f"({lat},, {lon})", f"( {lat} ° N , {lon} ° W )", f"({lat}, {lon}"])  # fmt: skip
    labels.append(f"Coordinates: {pair}")
    operation = rng.randrange(4)
    if operation == 0:
        labels.pop(rng.randrange(len(labels)))
    elif operation == 1:
        labels.insert(rng.randrange(len(labels) + 1), rng.choice(labels))
    elif operation == 2:
        rng.shuffle(labels)
    body = rng.choice(["; ", " ", "\n", ""]).join(labels)
    return rng.choice(
        ["<answer>{}</answer>", "{}", "<answer>{}", "{}</answer>", "<think>x</think><answer>{}</answer>"]
    ).format(body)


def odd_numbers(rng: random.Random) -> str:
    return "; ".join(f"({rng.choice(NUMBERS)}, {rng.choice(NUMBERS)})" for _ in range(rng.randrange(1, 4)))


def nested_tags(rng: random.Random) -> str:
    depth = rng.randrange(1, 30)
    inner = f"({rng.uniform(-100, 100):.3f}, {rng.uniform(-200, 200):.3f})"
    opens, closes = "<answer>" * depth, "</answer>" * rng.randrange(0, depth + 2)
    return rng.choice(
        [opens + inner + closes, closes + inner + opens, (opens + inner + closes) * rng.randrange(1, 4)]
    )


def token_soup(rng: random.Random) -> str:
    return "".join(rng.choice(TOKENS) for _ in range(rng.randrange(0, 60)))


def not_text(rng: random.Random) -> object:
    return rng.choice([
        None, b"(1, 2)", 3.5, 7, float("nan"), ["(1, 2)"], {"content": "(1, 2)"}, [{"role": "assistant"}],
        [{"role": "assistant", "content": None}], [{"role": "assistant", "content": [{"type": "text", "text": 5}]}],
        [{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "(1, 2)"}]}], [None, 3],
        [{"role": "user", "content": "(1, 2)"}], ({"role": "assistant", "content": token_soup(rng)},),
    ])  # fmt: skip


GENERATORS = [random_unicode, near_miss, odd_numbers, nested_tags, token_soup, not_text]


def violates_invariants(p: object) -> bool:
    if not isinstance(p, Parsed):
        return True
    if (p.lat is None) != (p.lon is None) or (p.lat is None) != (p.error != ""):
        return True
    if p.lat is not None and not (-90.0 <= p.lat <= 90.0 and -180.0 <= p.lon <= 180.0):
        return True
    if p.format_ok and p.lat is None:
        return True
    return any(
        name is not None and not (0 < len(name) <= MAX_NAME_CHARS) for name in (p.country, p.state, p.city)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    exceptions = violations = 0
    failures: list[str] = []
    errors: Counter[str] = Counter()
    parse_seconds = 0.0
    done = 0
    while done < args.n:
        inputs = [GENERATORS[i % len(GENERATORS)](rng) for i in range(done, min(done + CHUNK, args.n))]
        started = time.perf_counter()
        results = []
        for value in inputs:
            try:
                results.append(parse_completion(value))
            except Exception as exc:  # the point of the exercise: count, never stop
                exceptions += 1
                results.append(exc)
        parse_seconds += time.perf_counter() - started
        for value, result in zip(inputs, results, strict=True):
            if isinstance(result, Exception) or violates_invariants(result):
                violations += not isinstance(result, Exception)
                if len(failures) < 5:
                    failures.append(repr(value)[:200])
            else:
                errors[result.error or "ok"] += 1
        done += len(inputs)
    print(json.dumps({
        "n": done, "exceptions": exceptions, "invariant_violations": violations, "failures": failures,
        "errors": dict(errors.most_common()), "strings_per_s": round(done / parse_seconds),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
