"""Country names and codes: ISO alpha-2 code to display name and back, and name normalisation.

Display names come from pycountry (its ``common_name`` where it has one: "Taiwan", "Iran",
"Vietnam"), with a few overrides that give the short everyday name and keep every name free of
commas ("Russia", not "Russian Federation"), plus codes pycountry lacks (Kosovo ``XK``).
``country_code`` reads any of alpha-2, alpha-3, display name, ISO name, official name or a
common alias, compared after ``normalize_name``.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import pycountry

_DISPLAY_NAME_OVERRIDES = {
    "BQ": "Caribbean Netherlands",
    "CD": "Democratic Republic of the Congo",
    "FK": "Falkland Islands",
    "FM": "Micronesia",
    "PS": "Palestine",
    "RU": "Russia",
    "SH": "Saint Helena",
    "VA": "Vatican City",
    "VG": "British Virgin Islands",
    "VI": "U.S. Virgin Islands",
    "XK": "Kosovo",  # not in ISO 3166-1, but GeoNames (and so the gazetteer) uses it
}

_ALIASES = {
    "USA": "US",
    "U.S.A.": "US",
    "U.S.": "US",
    "United States of America": "US",
    "UK": "GB",
    "U.K.": "GB",
    "Britain": "GB",
    "Great Britain": "GB",
    "England": "GB",
    "Scotland": "GB",
    "Wales": "GB",
    "Northern Ireland": "GB",
    "South Korea": "KR",
    "Republic of Korea": "KR",
    "North Korea": "KP",
    "Czech Republic": "CZ",
    "Ivory Coast": "CI",
    "Turkey": "TR",
    "Holland": "NL",
    "Burma": "MM",
    "Swaziland": "SZ",
    "Macedonia": "MK",
    "East Timor": "TL",
    "Cape Verde": "CV",
    "Vatican": "VA",
    "DR Congo": "CD",
    "DRC": "CD",
    "Congo-Kinshasa": "CD",
    "Republic of the Congo": "CG",
    "Congo-Brazzaville": "CG",
    "UAE": "AE",
    "Brunei": "BN",
    "Macau": "MO",
    "Republic of Kosovo": "XK",
}

_NOT_DECOMPOSED = str.maketrans({"ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "ı": "i"})
_APOSTROPHES_RE = re.compile(r"['’‘`ʻʼ]")
_NOT_WORD_RE = re.compile(r"[\W_]+")
_UMLAUT_SPELLING_RE = re.compile(r"([aou])e")


@functools.lru_cache(maxsize=65536)
def normalize_name(s: str) -> str:
    """Comparison key for a place name: NFKD, accents and punctuation removed, spaces collapsed, casefolded.

    Also folds the ASCII umlaut spellings ae/oe/ue to a/o/u on both sides, because GeoNames'
    ASCII names write "Baden-Wuerttemberg" where other sources write "Baden-Württemberg"
    ("baden wurttemberg" either way). Apostrophes vanish ("Côte d'Ivoire" -> "cote divoire").
    """
    decomposed = unicodedata.normalize("NFKD", s.translate(_NOT_DECOMPOSED))
    without_accents = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    words = _NOT_WORD_RE.sub(" ", _APOSTROPHES_RE.sub("", without_accents)).strip().casefold()
    return _UMLAUT_SPELLING_RE.sub(r"\1", words)


@functools.cache
def _names_by_code() -> dict[str, str]:
    names = {c.alpha_2: getattr(c, "common_name", c.name) for c in pycountry.countries}
    names.update(_DISPLAY_NAME_OVERRIDES)
    return names


@functools.cache
def _codes_by_iso_code() -> dict[str, str]:
    codes = {code: code for code in _names_by_code()}
    codes.update((c.alpha_3, c.alpha_2) for c in pycountry.countries)
    return codes


@functools.cache
def _codes_by_name_key() -> dict[str, str]:
    keys: dict[str, str] = {}
    sources = [(name, code) for code, name in _names_by_code().items()]
    for attribute in ("name", "common_name", "official_name"):
        sources += [(getattr(c, attribute), c.alpha_2) for c in pycountry.countries if hasattr(c, attribute)]
    sources += list(_ALIASES.items())
    for name, code in sources:
        keys.setdefault(normalize_name(name), code)  # earlier sources win a clash
    return keys


def country_name(code: str) -> str:
    """Display name for an ISO 3166-1 alpha-2 code (any case); ValueError for an unknown code."""
    name = _names_by_code().get(code.strip().upper()) if isinstance(code, str) else None
    if name is None:
        raise ValueError(f"unknown country code {code!r}: expected an ISO 3166-1 alpha-2 code or XK")
    return name


def country_code(name: str) -> str | None:
    """Alpha-2 code for a country name, alias or alpha-2/alpha-3 code; None when nothing matches."""
    if not isinstance(name, str):
        return None
    code = _codes_by_iso_code().get(name.strip().upper())
    if code is not None:
        return code
    key = normalize_name(name)
    code = _codes_by_name_key().get(key)
    if code is None and key.startswith("the "):
        code = _codes_by_name_key().get(key[4:])
    return code
