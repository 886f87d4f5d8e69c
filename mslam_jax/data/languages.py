"""The language registry: every language the project knows, keyed by ISO 639-3 code.

Built once per process from the data the installed packages ship: Unicode CLDR (babel) and the
ISO-codes translations (pycountry) for text, eSpeak NG's voice list (espeakng-loader) for speech.
The order is sorted by code, so `lang_id(code)` (the index in that order) is stable for a given
set of installed package versions; corpus manifests record the ids they were written with.

`LANGUAGES` is computed on first access (a module attribute resolved lazily), so importing this
module costs nothing.
"""
import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Sequence

from mslam_jax.data.iso639 import iso639_tables as _iso639_tables
from mslam_jax.data.iso639 import to_iso639_3  # pylint: disable=unused-import  (part of this API)

STREAMS = ("speech", "text", "paired")
# A language gets a built-in stream only when its sources give at least this many distinct items
# (names, months, ...) from which utterances are composed.
MIN_TEXT_ITEMS = 16
MIN_SPEECH_ITEMS = 16


class UnknownLanguageError(KeyError):
  """A language code that the registry does not know."""

  def __init__(self, code):
    super().__init__(code)
    self.code = code

  def __str__(self):
    return (f"unknown language code {self.code!r}: not in the language registry "
            "(ISO 639-3 codes; see `mslam data languages`)")


@dataclasses.dataclass(frozen=True)
class Language:
  code: str  # ISO 639-3
  bcp47: str  # the tag CLDR / eSpeak use (ISO 639-1 where one exists)
  name: str  # English name
  script: str  # ISO 15924 code of the script its text is written in
  text_sources: tuple[str, ...] = ()  # e.g. ("cldr", "iso_codes", "num2words")
  espeak_voices: tuple[str, ...] = ()  # eSpeak NG voice names; the first is the main one
  streams: tuple[str, ...] = ()  # built-in corpus streams this language can have

  @property
  def espeak_voice(self) -> str:
    return self.espeak_voices[0] if self.espeak_voices else ""

  def to_json(self) -> dict:
    return {"code": self.code, "id": lang_id(self.code), "bcp47": self.bcp47, "name": self.name,
            "script": self.script, "text_sources": list(self.text_sources),
            "espeak_voice": self.espeak_voice, "espeak_voices": list(self.espeak_voices),
            "streams": list(self.streams), "corpora": {"builtin": list(self.streams)}}


def _has_script_subtag(tag: str) -> bool:
  return any(len(p) == 4 and p.isalpha() for p in tag.replace("_", "-").split("-")[1:])


@functools.cache
def espeak_voices_by_language() -> dict[str, tuple[str, ...]]:
  """ISO 639-3 -> eSpeak voice names reading the language's usual script (main voice first)."""
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  try:
    voices = espeak.list_voices()
  except espeak.EspeakError as e:
    logging.warning("no speech: %s", e)
    return {}
  by_code: dict[str, list[tuple[int, str]]] = {}
  for voice in voices:
    tag = voice.languages[0] if voice.languages else voice.name.lower()
    # Voices for another script (pinyin, Shavian, Latin Persian) read other text than CLDR's.
    if _has_script_subtag(tag) or _has_script_subtag(voice.name):
      continue
    code = to_iso639_3(tag)
    if code is None:
      continue
    # The voice named exactly as the language comes first; accents (en-US, fr-BE) follow.
    primary = tag.split("-")[0]
    rank = 0 if voice.name.lower() in (primary, code) else 1
    by_code.setdefault(code, []).append((rank, voice.name))
  return {code: tuple(name for _, name in sorted(items)) for code, items in sorted(by_code.items())}


def _likely_script(tag: str) -> str | None:
  from babel.core import get_global  # pylint: disable=g-import-not-at-top
  likely = get_global("likely_subtags").get(tag.replace("-", "_"))
  if likely:
    parts = likely.split("_")
    if len(parts) > 1 and len(parts[1]) == 4:
      return parts[1]
  return None


def _cache_path() -> str:
  """A registry cache file whose name changes with the data packages and this code."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import iso639  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import text_sources  # pylint: disable=g-import-not-at-top
  key = hashlib.sha256()
  for package in ("babel", "pycountry", "num2words", "espeakng-loader", "fonttools"):
    try:
      key.update(f"{package}={metadata.version(package)};".encode())
    except metadata.PackageNotFoundError:
      key.update(f"{package}=none;".encode())
  for module_file in (__file__, iso639.__file__, text_sources.__file__, espeak.__file__):
    with open(module_file, "rb") as f:
      key.update(f.read())
  base = os.environ.get("MSLAM_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mslam_jax")
  return os.path.join(base, f"languages-{key.hexdigest()[:16]}.json")


@functools.cache
def _registry() -> tuple[tuple[Language, ...], dict[str, int]]:
  """The registry, from the on-disk cache when the data packages are unchanged (~2 s otherwise)."""
  path = _cache_path()
  languages = None
  try:
    with open(path, encoding="utf-8") as f:
      languages = tuple(Language(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
                        for d in json.load(f))
  except (OSError, ValueError, TypeError):
    pass
  if languages is None:
    languages = _compute_registry()
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.{os.getpid()}.tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump([dataclasses.asdict(l) for l in languages], f, ensure_ascii=False)
      os.replace(tmp, path)
    except OSError as e:
      logging.debug("language registry not cached: %s", e)
  return languages, {lang.code: i for i, lang in enumerate(languages)}


def _compute_registry() -> tuple[Language, ...]:
  from babel import Locale  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import text_sources  # pylint: disable=g-import-not-at-top

  english = Locale("en")
  _, _, iso_names = _iso639_tables()
  voices = espeak_voices_by_language()
  tags: dict[str, str] = {}  # code -> tag
  for source_tags in (text_sources.cldr_locales(), text_sources.iso_codes_locales()):
    for code, tag in source_tags.items():
      tags.setdefault(code, tag)
  for code, names in voices.items():
    tags.setdefault(code, names[0].lower())

  languages = []
  for code in sorted(tags):
    tag = tags[code].replace("_", "-").split("-")[0]
    name = english.languages.get(tag) or english.languages.get(code) or iso_names.get(code, code)
    items = text_sources.item_counts(code)
    dominant = text_sources.dominant_script(code)
    script = _likely_script(tag) or _likely_script(code) or dominant or "Zzzz"

    def count_in(script, speech=False):
      return text_sources.item_count_in_scripts(code, text_sources.scripts_for(script, speech))

    # Some translations are written in another script than CLDR expects (Pali, Sinhala script
    # expected, Latin shipped): the language's script is then the one its text is in.
    if dominant and dominant != script and count_in(script) < MIN_TEXT_ITEMS <= count_in(dominant):
      script = dominant
    sources = tuple(s for s in text_sources.SOURCES if items.get(s, 0) > 0)
    streams = []
    if count_in(script) >= MIN_TEXT_ITEMS:
      streams.append("text")
      if voices.get(code) and count_in(script, speech=True) >= MIN_SPEECH_ITEMS:
        streams = ["speech", "text", "paired"]
    languages.append(Language(code=code, bcp47=tag, name=name, script=script, text_sources=sources,
                              espeak_voices=voices.get(code, ()), streams=tuple(streams)))
  return tuple(languages)


def __getattr__(name):
  if name == "LANGUAGES":
    return _registry()[0]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def all_languages() -> tuple[Language, ...]:
  return _registry()[0]


def codes() -> tuple[str, ...]:
  return tuple(lang.code for lang in _registry()[0])


def get(code: str) -> Language:
  """The registry entry of an ISO 639-3 code; raises UnknownLanguageError (a KeyError)."""
  languages, ids = _registry()
  if code not in ids:
    raise UnknownLanguageError(code)
  return languages[ids[code]]


def lang_id(code: str) -> int:
  """Stable integer id of a language: its index in the registry order (sorted by code)."""
  ids = _registry()[1]
  if code not in ids:
    raise UnknownLanguageError(code)
  return ids[code]


def with_stream(stream: str) -> tuple[Language, ...]:
  if stream not in STREAMS:
    raise ValueError(f"unknown stream {stream!r}; expected one of {STREAMS}")
  return tuple(lang for lang in _registry()[0] if stream in lang.streams)


def format_table(languages: Sequence[Language]) -> str:
  """A plain-text table for `mslam data languages`."""
  header = ("id", "code", "bcp47", "script", "streams", "voice", "text sources", "name")
  rows = [header] + [
      (str(lang_id(l.code)), l.code, l.bcp47, l.script, ",".join(l.streams) or "-",
       l.espeak_voice or "-", ",".join(l.text_sources) or "-", l.name) for l in languages]
  widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
  lines = ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]) for r in rows]
  return "\n".join(lines)
