"""`mslam data ...` as a user runs it."""
import json

import gin
import pytest

from mslam_jax import cli


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_languages_json_meets_the_coverage_the_corpus_promises(capsys):
  assert cli.main(["data", "languages", "--json"]) == 0
  langs = json.loads(capsys.readouterr().out)
  assert all({"code", "name", "script", "streams"} <= set(lang) for lang in langs)
  assert sum("text" in lang["streams"] for lang in langs) >= 150
  assert sum("paired" in lang["streams"] for lang in langs) >= 95


def test_show_batch_prints_the_three_streams_of_the_contract(builtin_corpus_dir, capsys):
  assert cli.main(["data", "show-batch", "--corpus_dir", builtin_corpus_dir,
                   "--gin.SPEECH_BATCH=2", "--gin.TEXT_BATCH=3", "--gin.PAIRED_BATCH=2"]) == 0
  out = capsys.readouterr().out
  assert "speech:" in out and "text:" in out and "paired:" in out
  assert "tokens       int32    [3, " in out
  assert "lang         int32    [2]" in out
