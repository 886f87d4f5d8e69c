"""benchmarks/retrieval_diagnosis.py on the session's tiny run: its test pool is the evaluation
sweep's retrieval figure, the re-spoken pool holds as many pairs as the test pool, and every
figure is a share."""
import json
import os

import gin
import pytest

from tests import benchmark_scripts
from tests import conftest

pytestmark = pytest.mark.slow  # reads the session's trained and evaluated tiny run


def _load():
  return benchmark_scripts.load("retrieval_diagnosis")


def test_pools_agree_with_the_sweep(tiny_run, builtin_corpus_dir):
  gin.clear_config()
  try:
    out = _load().diagnose(tiny_run, builtin_corpus_dir, per_lang=50)
  finally:
    gin.clear_config()
  assert out["step"] == 3
  pools = out["pools"]
  assert list(pools) == ["test", "test, training voices", "train"]
  with open(os.path.join(tiny_run, "eval", "step_3", "metrics.json")) as f:
    swept = json.load(f)["metrics"]
  # The test pool is what `mslam eval` scored (the same pairs, encoder and centring).
  assert pools["test"]["r1_speech_to_text"] == pytest.approx(swept["retrieval_r1_speech_to_text"], abs=1e-6)
  assert pools["test"]["r1_text_to_speech"] == pytest.approx(swept["retrieval_r1_text_to_speech"], abs=1e-6)
  # Every test sentence is spoken again (eSpeak reads every sentence of the corpus).
  assert pools["test, training voices"]["pairs"] == pools["test"]["pairs"] > 1
  assert pools["train"]["pairs"] > 1
  for figures in pools.values():
    for key in ("r1_speech_to_text", "r1_text_to_speech", "misses_in_another_language",
                "r1_speech_to_text_within_language"):
      assert 0.0 <= figures[key] <= 1.0, key
    # Fewer candidates (its own language's, or those of a similar duration) never lose a hit.
    assert figures["r1_speech_to_text_within_language"] >= figures["r1_speech_to_text"]
    assert 1.0 >= figures["r1_speech_to_text_similar_duration"] >= figures["r1_speech_to_text"]
    assert 0.0 <= figures["duration_gap_wrong_answer_s"] and 0.0 < figures["duration_gap_random_pair_s"]


def test_another_corpus_is_refused_with_exit_2_naming_both(tiny_run, builtin_corpus_dir, tmp_path, capsys):
  """Another build's vocabulary (the tiny corpus with its characters reordered): the run's token ids
  would mean other characters, so the diagnosis stops before it scores anything."""
  other = conftest.copy_with_another_vocabulary(builtin_corpus_dir, str(tmp_path / "other_corpus"))
  diagnosed_run = benchmark_scripts.load("diagnosed_run")
  gin.clear_config()
  try:
    assert diagnosed_run.load(tiny_run, builtin_corpus_dir)[2] == 3  # its own corpus: loaded
    with pytest.raises(SystemExit) as info:
      diagnosed_run.load(tiny_run, other)
  finally:
    gin.clear_config()
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert other in err and "pass --corpus_dir of the training corpus" in err
