"""A checkpoint is tied to its corpus: the data fingerprint covers the manifest and vocabulary, and
the user commands refuse another build's vocabulary (exit 2, naming both corpora)."""
import json
import shutil

import pytest

from tests import conftest
from tests.faults.conftest import run_cli, user_error_line


@pytest.fixture
def other_build(builtin_corpus_dir, tmp_path) -> str:
  """The tiny corpus with another vocabulary (as a rebuild from other text would have)."""
  return conftest.copy_with_another_vocabulary(builtin_corpus_dir, str(tmp_path / "other_corpus"))


def _fake_checkpoint(tmp_path, corpus_dir) -> str:
  """A checkpoint directory whose data state records `corpus_dir`'s fingerprint."""
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  step_dir = tmp_path / "run" / "checkpoints" / "3"
  (step_dir / "data_state").mkdir(parents=True)
  (step_dir / "data_state" / "process_0.json").write_text(json.dumps(
      {"kind": "json", "value": {"position": 3, "config": {"corpus": builtin_corpus.corpus_fingerprint(corpus_dir)}}}))
  (tmp_path / "run" / "operative_config.gin").write_text(f"CORPUS_DIR = '{corpus_dir}'\n")
  return str(step_dir)


def test_fingerprint_follows_content_not_place(builtin_corpus_dir, other_build, tmp_path):
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  moved = str(tmp_path / "moved")
  shutil.copytree(builtin_corpus_dir, moved)
  same = builtin_corpus.corpus_fingerprint(builtin_corpus_dir)
  assert builtin_corpus.corpus_fingerprint(moved) == same
  other = builtin_corpus.corpus_fingerprint(other_build)
  assert other["vocabulary"] != same["vocabulary"] and other["manifest"] == same["manifest"]


def test_check_corpus_refuses_another_vocabulary_naming_both(builtin_corpus_dir, other_build, tmp_path):
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  step_dir = _fake_checkpoint(tmp_path, builtin_corpus_dir)
  checkpoints.check_corpus(step_dir, builtin_corpus_dir, str(tmp_path / "run"))  # its own: fine
  with pytest.raises(ValueError) as info:
    checkpoints.check_corpus(step_dir, other_build, str(tmp_path / "run"))
  assert other_build in str(info.value) and builtin_corpus_dir in str(info.value)


def test_step_iterator_fingerprint_covers_the_corpus(builtin_corpus_dir, other_build):
  from mslam_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  def config(corpus):
    return pipeline.StepIterator({"text": pipeline.StreamConfig("unused", 2, {"tokens": 8}, "truncate")},
                                 shard_info=pipeline.seqio.ShardInfo(0, 1), corpus_dir=corpus,
                                 setup=lambda: None).config_dict()

  assert config(builtin_corpus_dir)["corpus"] != config(other_build)["corpus"]
  assert "corpus" not in config(None)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["retrieve", "eval"])
def test_user_commands_refuse_another_builds_vocabulary(tiny_run, builtin_corpus_dir, other_build, tmp_path,
                                                        command):
  import wave  # pylint: disable=g-import-not-at-top
  wav = str(tmp_path / "a.wav")
  with wave.open(wav, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(16000)
    w.writeframes(b"\x10\x00" * 16000)
  texts = tmp_path / "texts.txt"
  texts.write_text("hello\nworld\n")
  argv = {"retrieve": ["retrieve", "--model_dir", tiny_run, "--corpus_dir", other_build, "--audio", wav,
                       "--texts", str(texts)],
          "eval": ["eval", "--model_dir", tiny_run, "--corpus_dir", other_build, "--out", str(tmp_path / "eval")]}
  rc, err = run_cli(argv[command])
  assert rc == 2, err[-3000:]
  line = user_error_line(err, command)
  assert other_build in line and builtin_corpus_dir in line, line
