"""Multilingual text from CLDR, ISO-codes translations and num2words."""
import unicodedata

import pytest

from mslam_jax.data import languages
from mslam_jax.data import text_sources


def test_clean_text():
  decomposed = unicodedata.normalize("NFD", "Zürich")
  assert text_sources.clean_text(f"  {decomposed}\u00a0\u202fund\tBern\n") == "Zürich und Bern"
  assert text_sources.clean_text("\u200eالقاهرة\u200f") == "القاهرة"
  assert text_sources.clean_text("a\x00b\x07c") == "abc"
  assert text_sources.clean_text("می\u200cخواهم") == "می\u200cخواهم"  # ZWNJ is part of the word
  assert text_sources.clean_text(" 12, 3 — ") == ""  # no letter
  assert text_sources.clean_text("\u200b\u00ad") == ""


def test_sentences_are_deterministic_distinct_and_clean():
  a = text_sources.sentences("fra", 30, seed=1)
  assert a == text_sources.sentences("fra", 30, seed=1)
  assert a != text_sources.sentences("fra", 30, seed=2)
  assert len(a) == 30 == len(set(a))
  assert all(s == text_sources.clean_text(s) for s in a)
  # Phrases are joined with French's own list pattern.
  assert any(" et " in s for s in a)


def test_spell_numbers_writes_what_a_voice_reads():
  assert text_sources.spell_numbers("Dienstag, 20. November 1906", "deu") == (
      "Dienstag, zwanzig. November neunzehnhundertsechs")  # four digits from 1100 to 2099: a year
  assert text_sources.spell_numbers("747 uur en 2 kilometer", "nld") == "zevenhonderdzevenenveertig uur en twee kilometer"
  assert text_sources.spell_numbers("mardi 3 mars 2500", "fra") == "mardi trois mars deux mille cinq cents"
  assert text_sources.spell_numbers("no digits here", "eng") == "no digits here"
  assert text_sources.spell_numbers("Sondag 19 Julie 1914", "afr") == ""  # num2words has no Afrikaans


def test_many_languages_have_text_in_their_own_script():
  langs = languages.with_stream("text")
  assert len(langs) >= 150
  for lang in langs[::7]:
    scripts = text_sources.scripts_for(lang.script)
    got = text_sources.sentences(lang.code, 5, seed=0, scripts=scripts)
    assert len(got) == 5, lang
    assert all(text_sources.in_scripts(s, scripts) for s in got), (lang, got)


def test_speech_scripts_drop_kanji_for_japanese():
  speech = text_sources.scripts_for("Jpan", speech=True)
  got = text_sources.sentences("jpn", 20, seed=0, scripts=speech)
  assert len(got) == 20
  assert not any(text_sources.char_script(ch) == "Hani" for s in got for ch in s)
  assert not text_sources.in_scripts("東京とパリ", speech)
  assert text_sources.in_scripts("東京とパリ", text_sources.scripts_for("Jpan"))


def test_no_text_inherited_from_another_language():
  # CLDR's Haitian Creole locale inherits French data (parent fr_HT): none of it may count.
  assert "cldr" not in text_sources.item_counts("hat")
  assert not any(" et " in s or "janvier" in s for s in text_sources.sentences("hat", 40, seed=0))


def test_reading_own_cldr_data_leaves_babel_formatting_intact():
  from babel import lists  # pylint: disable=g-import-not-at-top
  text_sources.item_counts("srp")
  assert lists.format_list(["a", "b"], locale="sr") == "a и b"


@pytest.mark.parametrize("code,source", [("eng", "num2words"), ("deu", "cldr"), ("hat", "iso_codes")])
def test_sources(code, source):
  assert source in languages.get(code).text_sources
  assert text_sources.item_counts(code)[source] > 0
