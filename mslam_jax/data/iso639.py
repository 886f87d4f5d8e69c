"""ISO 639 codes: BCP-47 / CLDR / eSpeak tags -> ISO 639-3 (pycountry's tables).

Its own module so that the language registry (languages.py) and the text sources it reads
(text_sources.py) both use it without importing each other.
"""
import functools

# CLDR/eSpeak tags whose plain ISO 639-1 -> 639-3 mapping would name a macrolanguage while the
# data is a specific member: CLDR `zh` is Mandarin (eSpeak's voice is `cmn`), CLDR and eSpeak `ku`
# are Northern Kurdish (Kurmanji, which the ISO-codes translations call `kmr`).
_CODE_OVERRIDES = {"zh": "cmn", "ku": "kmr", "hbs": "hrv"}
# Tags that duplicate another entry: CLDR `no` is the parent of `nb`.
_SKIPPED_TAGS = frozenset({"no", "root", "und"})


@functools.cache
def iso639_tables() -> tuple[dict[str, str], set[str], dict[str, str]]:
  import pycountry  # pylint: disable=g-import-not-at-top
  two_to_three, threes, names = {}, set(), {}
  for lang in pycountry.languages:
    threes.add(lang.alpha_3)
    names[lang.alpha_3] = lang.name
    if hasattr(lang, "alpha_2"):
      two_to_three[lang.alpha_2] = lang.alpha_3
  return two_to_three, threes, names


def to_iso639_3(tag: str) -> str | None:
  """ISO 639-3 code for a BCP-47 / CLDR / eSpeak tag (`pt-BR`, `sr_Latn`, `cmn`), None if none."""
  primary = tag.replace("_", "-").split("-")[0].lower()
  if primary in _SKIPPED_TAGS:
    return None
  if primary in _CODE_OVERRIDES:
    return _CODE_OVERRIDES[primary]
  two_to_three, threes, _ = iso639_tables()
  if len(primary) == 2:
    return two_to_three.get(primary)
  return primary if primary in threes else None
