"""Real multilingual text from data that PyPI packages ship, read offline.

Sources (each a set of distinct strings per language, composed into phrase-like utterances):
- `cldr`: Unicode CLDR through babel: names of territories, languages, scripts and currencies,
  month and weekday names, joined with the locale's own list pattern ("France, Spain and Peru");
  full dates formatted by the locale's pattern; measures with the locale's unit patterns.
- `iso_codes`: the gettext translations of ISO 3166 country, ISO 4217 currency and ISO 15924
  script names that pycountry ships (some languages CLDR lacks, e.g. Haitian Creole, Ido).
- `num2words`: numbers spelled out in words (cardinals, ordinals, years) in ~50 languages.

Only strings a locale really has count: CLDR values inherited from `root` (placeholders such as
"M01") and untranslated ISO names are dropped. Every utterance is cleaned (`clean_text`) and must
be written in the language's script (`in_scripts`), which also drops e.g. Latin spelled numbers
for Serbian (Cyrillic) and, for speech, the kanji that eSpeak's Japanese voice cannot read.
"""
import datetime
import functools
import gettext
import logging
import os
import pickle
import re
import unicodedata
import zlib
from typing import Callable, Iterator, Sequence

import numpy as np

from mslam_jax.data import iso639

SOURCES = ("cldr", "iso_codes", "num2words")
_CLDR_LIST_CATEGORIES = ("territories", "languages", "scripts", "currency_names")
_UNITS = ("length-kilometer", "length-meter", "duration-hour", "duration-minute", "duration-day",
          "mass-kilogram", "volume-liter", "temperature-celsius", "speed-kilometer-per-hour",
          "area-square-meter", "length-centimeter", "duration-second")
_MIN_CATEGORY_ITEMS = 6

# Characters that carry no text: bidi marks, BOM, soft hyphen, zero-width space. ZWJ/ZWNJ stay
# (they change the rendering of Indic and Persian words).
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200e\u200f\u061c\u2066\u2067\u2068\u2069"
                                    "\u202a\u202b\u202c\u202d\u202e\ufeff\u00ad\u2060"))
_KEEP_FORMAT = frozenset("\u200c\u200d")

# What each CLDR script code is made of in Unicode script terms, for the text stream and for
# eSpeak. eSpeak's Japanese voice reads kana but not kanji; its Korean voice reads Hangul only.
_TEXT_SCRIPTS = {"Jpan": {"Hani", "Hira", "Kana"}, "Kore": {"Hang", "Hani"}, "Hans": {"Hani"},
                 "Hant": {"Hani"}}
_SPEECH_SCRIPTS = {"Jpan": {"Hira", "Kana"}, "Kore": {"Hang"}, "Hans": {"Hani"}, "Hant": {"Hani"}}
_NEUTRAL_SCRIPTS = frozenset({"Zyyy", "Zinh"})


def clean_text(text: str) -> str:
  """NFC, one space for any run of whitespace, no control or invisible characters; '' if no letter."""
  text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
  if not text.isprintable():  # rare: controls, format characters or non-ASCII spaces (NBSP)
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or ch.isprintable()
                   or ch in _KEEP_FORMAT)
  text = " ".join(text.split())
  return text if any(ch.isalpha() for ch in text) else ""


@functools.lru_cache(maxsize=None)
def char_script(ch: str) -> str:
  from fontTools import unicodedata as font_unicodedata  # pylint: disable=g-import-not-at-top
  return font_unicodedata.script(ch)


def scripts_for(script: str, speech: bool = False) -> frozenset[str]:
  """Unicode scripts that text in CLDR script `script` may use (for eSpeak when `speech`)."""
  table = _SPEECH_SCRIPTS if speech else _TEXT_SCRIPTS
  return frozenset(table.get(script, {script}))


def in_scripts(text: str, scripts: frozenset[str]) -> bool:
  """Whether every letter or mark of `text` is in `scripts` (digits and punctuation are neutral)."""
  return all(char_script(ch) in scripts or char_script(ch) in _NEUTRAL_SCRIPTS
             for ch in text if not ch.isspace())


@functools.cache
def cldr_locales() -> dict[str, str]:
  """ISO 639-3 -> babel locale id of every CLDR base language (no region/script variants)."""
  from babel import localedata  # pylint: disable=g-import-not-at-top
  out = {}
  for locale_id in sorted(localedata.locale_identifiers()):
    if "_" in locale_id:
      continue
    code = iso639.to_iso639_3(locale_id)
    if code is not None:
      out.setdefault(code, locale_id)
  return out


@functools.cache
def iso_codes_locales() -> dict[str, str]:
  """ISO 639-3 -> pycountry gettext locale dir (the plain language, else its first variant)."""
  import pycountry  # pylint: disable=g-import-not-at-top
  out = {}
  names = sorted(n for n in os.listdir(pycountry.LOCALES_DIR) if not n.startswith("_"))
  # Plain names first, so `pt` wins over `pt_BR`; `@` variants (other scripts) are skipped.
  for name in sorted(names, key=lambda n: ("_" in n, n)):
    if "@" in name:
      continue
    code = iso639.to_iso639_3(name)
    if code is not None:
      out.setdefault(code, name)
  return out


@functools.cache
def num2words_languages() -> dict[str, str]:
  import num2words  # pylint: disable=g-import-not-at-top
  out = {}
  for lang in sorted(num2words.CONVERTER_CLASSES):
    if "_" in lang:
      continue
    code = iso639.to_iso639_3({"kz": "kk", "no": "nb"}.get(lang, lang))
    if code is not None:
      out[code] = lang
  return out


@functools.cache
def _cldr_own_data(code: str) -> dict:
  """The locale's own CLDR data: nothing inherited from `root` or a parent (e.g. ht <- fr_HT)."""
  from babel import localedata  # pylint: disable=g-import-not-at-top
  locale_id = cldr_locales().get(code)
  if locale_id is None:
    return {}
  # Read the locale's own file: babel's load(merge_inherited=False) would put the unmerged data in
  # babel's process-wide cache, and every later Locale of that id would lack inherited patterns.
  with open(localedata.resolve_locale_filename(locale_id), "rb") as f:
    return dict(pickle.load(f))


@functools.cache
def _cldr_items(code: str) -> dict[str, tuple[str, ...]]:
  """CLDR strings the locale itself has, by category."""
  data = _cldr_own_data(code)
  out = {}
  for category in _CLDR_LIST_CATEGORIES:
    values = data.get(category, {})
    out[category] = tuple(sorted({clean_text(v) for v in values.values() if isinstance(v, str)} - {""}))
  for category, key in (("months", "months"), ("weekdays", "days")):
    values = data.get(key, {}).get("format", {}).get("wide", {})
    if isinstance(values, dict):
      out[category] = tuple(sorted({clean_text(v) for v in values.values() if isinstance(v, str)} - {""}))
  return {k: v for k, v in out.items()
          if len(v) >= (7 if k in ("months", "weekdays") else _MIN_CATEGORY_ITEMS)}


@functools.cache
def _cldr_formats_are_own(code: str) -> bool:
  """Whether the locale's merged patterns (lists, units) are its language's: false for locales
  whose CLDR parent is another language's locale (e.g. ht <- fr_HT), unless it has its own."""
  from babel.core import get_global  # pylint: disable=g-import-not-at-top
  locale_id = cldr_locales().get(code)
  if locale_id is None:
    return False
  return get_global("parent_exceptions").get(locale_id, "root") == "root"


def _cldr_has(code: str, key: str) -> bool:
  """Whether `key` (list_patterns, unit_patterns) may be formatted with babel for the locale."""
  return bool(_cldr_own_data(code).get(key)) or _cldr_formats_are_own(code)


@functools.cache
def _iso_codes_items(code: str) -> dict[str, tuple[str, ...]]:
  """Translated (not merely copied) ISO country, currency and script names."""
  import pycountry  # pylint: disable=g-import-not-at-top
  locale_dir = iso_codes_locales().get(code)
  if locale_dir is None:
    return {}
  out = {}
  for domain, database in (("iso3166-1", pycountry.countries), ("iso4217", pycountry.currencies),
                           ("iso15924", pycountry.scripts)):
    try:
      translation = gettext.translation(domain, pycountry.LOCALES_DIR, languages=[locale_dir])
    except OSError:
      continue
    names = {clean_text(translation.gettext(o.name)) for o in database
             if translation.gettext(o.name) != o.name}
    names.discard("")
    if len(names) >= _MIN_CATEGORY_ITEMS:
      out[domain] = tuple(sorted(names))
  return out


def _spell(lang: str, number: int, to: str = "cardinal") -> str:
  """`number` in words as `to` (cardinal, ordinal, year), else as a cardinal; '' if neither works."""
  import num2words  # pylint: disable=g-import-not-at-top
  for kind in dict.fromkeys((to, "cardinal")):
    try:
      words = num2words.num2words(number, lang=lang, to=kind)
    except Exception:  # pylint: disable=broad-except
      continue  # some converters lack ordinals or years; others fail on some numbers
    if words:
      return words
  return ""


@functools.cache
def _num2words_items(code: str) -> tuple[str, ...]:
  lang = num2words_languages().get(code)
  if lang is None:
    return ()
  return tuple(sorted({clean_text(_spell(lang, n)) for n in range(1, 101)} - {""}))


_DIGIT_RUN = re.compile(r"\d+")


def spell_numbers(text: str, code: str) -> str:
  """`text` with every run of digits spelled out by num2words, as a voice reads it: numbers from
  1100 to 2099 written with four digits as years, the others as cardinals. A transcript of speech
  should say what the speech says: eSpeak reads "1906" as seven syllables, and a CTC model asked
  to write those as four digits learns less (CER 0.48 on clips with digits against 0.24 without,
  on the learning benchmark's checkpoint). '' where `code` has no num2words converter, or where
  the converter fails on one of the numbers; `text` itself where it holds no digit."""
  if not _DIGIT_RUN.search(text):
    return text
  lang = num2words_languages().get(code)
  if lang is None:
    return ""
  failed = []

  def spell(match: re.Match) -> str:
    digits = match.group()
    number = int(digits)
    kind = "year" if len(digits) == 4 and 1100 <= number < 2100 else "cardinal"
    words = _spell(lang, number, kind)
    if not words:
      failed.append(digits)
    return words
  spelled = _DIGIT_RUN.sub(spell, text)
  return "" if failed else clean_text(spelled)


def _base_items(code: str) -> dict[str, tuple[str, ...]]:
  """All distinct base strings of a language, by (source:category)."""
  items = {f"cldr:{k}": v for k, v in _cldr_items(code).items()}
  items.update({f"iso_codes:{k}": v for k, v in _iso_codes_items(code).items()})
  spelled = _num2words_items(code)
  if len(spelled) >= _MIN_CATEGORY_ITEMS:
    items["num2words:cardinal"] = spelled
  return items


@functools.cache
def item_counts(code: str) -> dict[str, int]:
  """Distinct base strings per source that utterances of `code` are composed from."""
  counts = dict.fromkeys(SOURCES, 0)
  for key, values in _base_items(code).items():
    counts[key.split(":")[0]] += len(values)
  return {k: v for k, v in counts.items() if v}


def item_count_in_scripts(code: str, scripts: frozenset[str]) -> int:
  """How many distinct base strings of `code` are written in `scripts` (see `scripts_for`)."""
  return len({s for values in _base_items(code).values() for s in values if in_scripts(s, scripts)})


def dominant_script(code: str) -> str | None:
  """The most frequent script among the letters of a language's strings (None without text)."""
  counts: dict[str, int] = {}
  for values in _base_items(code).values():
    for text in values[:50]:
      for ch in text:
        if unicodedata.category(ch).startswith("L"):
          counts[char_script(ch)] = counts.get(char_script(ch), 0) + 1
  return max(sorted(counts), key=counts.get) if counts else None


def _rng(seed: int, code: str) -> np.random.Generator:
  # A stable per-language stream (Python's hash() is salted per process).
  return np.random.default_rng([seed, zlib.crc32(code.encode())])


def _random_date(rng: np.random.Generator) -> datetime.date:
  return datetime.date(1900, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 200 * 365)))


def _generators(code: str) -> list[Callable[[np.random.Generator], str]]:
  """One callable per kind of utterance a language has; each draws one utterance."""
  from babel import dates, lists, units  # pylint: disable=g-import-not-at-top
  locale_id = cldr_locales().get(code)

  def join(items: Sequence[str]) -> str:
    if _cldr_has(code, "list_patterns"):
      try:
        return lists.format_list(list(items), locale=locale_id)
      except Exception:  # pylint: disable=broad-except
        pass
    return ", ".join(items)

  def list_of(values: tuple[str, ...], low: int, high: int):
    def draw(rng):
      k = int(rng.integers(low, high + 1))
      return join([values[i] for i in rng.choice(len(values), size=min(k, len(values)), replace=False)])
    return draw

  gens = []
  for key, values in _base_items(code).items():
    if key == "num2words:cardinal":
      continue
    gens.append(list_of(values, 2, 4))
  if locale_id is not None and "months" in _cldr_items(code):
    def date(rng):
      fmt = ("full", "long")[int(rng.integers(2))]
      return dates.format_date(_random_date(rng), format=fmt, locale=locale_id)
    gens.append(date)
  if _cldr_has(code, "unit_patterns"):
    def measures(rng):
      k = int(rng.integers(1, 4))
      picked = rng.choice(len(_UNITS), size=k, replace=False)
      parts = [units.format_unit(int(rng.integers(1, 1000)), _UNITS[i], length="long",
                                 locale=locale_id) for i in picked]
      # A unit the locale lacks comes back as its id ("3 length-kilometer"): not text.
      return "" if any(_UNITS[i] in p for i, p in zip(picked, parts)) else join(parts)
    gens.append(measures)
  lang = num2words_languages().get(code)
  if lang is not None and len(_num2words_items(code)) >= _MIN_CATEGORY_ITEMS:
    def spelled(rng):
      kind = ("cardinal", "cardinal", "ordinal", "year")[int(rng.integers(4))]
      # Below a million: num2words' Amharic converter never returns for some larger numbers.
      number = int(rng.integers(1900, 2100)) if kind == "year" else int(10 ** rng.uniform(0, 6))
      return _spell(lang, number, kind)
    gens.append(spelled)
  return gens


def iter_sentences(code: str, seed: int, *, scripts: frozenset[str] | None = None,
                   max_chars: int = 400, max_failures: int = 500) -> Iterator[str]:
  """Distinct cleaned utterances of `code` in `scripts`, in a deterministic order for `seed`.

  Ends when `max_failures` draws in a row gave nothing new (a language's supply is finite).
  """
  gens = _generators(code)
  if not gens:
    return
  rng = _rng(seed, code)
  seen: set[str] = set()
  failures = 0
  while failures < max_failures:
    gen = gens[int(rng.integers(len(gens)))]
    try:
      text = clean_text(gen(rng))
    except Exception as e:  # pylint: disable=broad-except
      logging.debug("text source failed for %s: %s", code, e)
      text = ""
    if (not text or text in seen or len(text) > max_chars
        or (scripts is not None and not in_scripts(text, scripts))):
      failures += 1
      continue
    failures = 0
    seen.add(text)
    yield text


def sentences(code: str, count: int, seed: int = 0, **kwargs) -> list[str]:
  """The first `count` utterances of `iter_sentences` (fewer if the language runs out)."""
  out = []
  for text in iter_sentences(code, seed, **kwargs):
    out.append(text)
    if len(out) >= count:
      break
  return out
