"""The language registry and `mslam data languages`."""
import json

import pytest

from mslam_jax import cli
from mslam_jax.data import languages


def test_registry_covers_enough_languages_per_stream():
  assert len(languages.with_stream("text")) >= 150
  assert len(languages.with_stream("paired")) >= 95
  assert {l.code for l in languages.with_stream("speech")} == {l.code for l in languages.with_stream("paired")}
  # Speech needs a voice and text.
  for lang in languages.with_stream("paired"):
    assert lang.espeak_voices and "text" in lang.streams, lang


def test_ids_follow_the_sorted_code_order():
  codes = languages.codes()
  assert list(codes) == sorted(codes) and len(set(codes)) == len(codes)
  assert [languages.lang_id(c) for c in codes] == list(range(len(codes)))
  assert tuple(l.code for l in languages.LANGUAGES) == codes
  assert all(len(c) == 3 and c.isalpha() and c.islower() for c in codes)


def test_entries_for_known_languages():
  eng = languages.get("eng")
  assert (eng.bcp47, eng.name, eng.script) == ("en", "English", "Latn")
  assert "en" in eng.espeak_voices and len(eng.espeak_voices) > 1  # accents are extra speakers
  assert eng.espeak_voice == "en"
  assert languages.get("cmn").script == "Hans" and languages.get("cmn").espeak_voice == "cmn"
  assert languages.get("jpn").script == "Jpan"
  assert languages.get("srp").script == "Cyrl"
  # No voice for another script (pinyin, Shavian) is listed as a voice of the language.
  assert all("latn" not in v.lower() for v in languages.get("cmn").espeak_voices)
  assert "speech" not in languages.get("zul").streams and "text" in languages.get("zul").streams


@pytest.mark.parametrize("tag,code", [("en", "eng"), ("pt-BR", "por"), ("sr_Latn", "srp"), ("zh", "cmn"),
                                      ("ku", "kmr"), ("yue", "yue"), ("nb", "nob"), ("xx", None),
                                      ("root", None)])
def test_to_iso639_3(tag, code):
  assert languages.to_iso639_3(tag) == code


def test_unknown_code_raises_a_key_error_naming_it():
  with pytest.raises(KeyError) as info:
    languages.get("qqq")
  assert isinstance(info.value, languages.UnknownLanguageError)
  assert "qqq" in str(info.value)
  with pytest.raises(languages.UnknownLanguageError, match="'en'"):
    languages.lang_id("en")  # ISO 639-1 is not a registry key


def test_cli_languages_json(capsys):
  assert cli.main(["data", "languages", "--json"]) == 0
  entries = json.loads(capsys.readouterr().out)
  assert len(entries) == len(languages.codes())
  assert {"code", "name", "script", "streams"} <= set(entries[0])
  by_code = {e["code"]: e for e in entries}
  assert by_code["deu"]["streams"] == ["speech", "text", "paired"]
  assert by_code["deu"]["id"] == languages.lang_id("deu")
  assert sum("text" in e["streams"] for e in entries) >= 150
  assert sum("speech" in e["streams"] for e in entries) >= 95


def test_cli_languages_table(capsys):
  assert cli.main(["data", "languages", "--stream", "paired"]) == 0
  out = capsys.readouterr().out
  lines = out.splitlines()
  assert lines[0].split()[:4] == ["id", "code", "bcp47", "script"]
  assert any(line.split()[1] == "rus" for line in lines[1:] if line.strip() and line.split()[0].isdigit())
  assert not any(line.split()[1] == "zul" for line in lines[1:] if line.strip() and line.split()[0].isdigit())
