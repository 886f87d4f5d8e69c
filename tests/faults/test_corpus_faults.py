"""A damaged or unusable corpus stops at the start with one line naming the file (exit 2) within
30 s, never a crash mid-run or a hang; `build-builtin` deletes only what it wrote itself."""
import json
import os
import shutil
import time

import pytest

from tests.faults.conftest import run_cli, user_error_line

TIME_LIMIT_S = 30


@pytest.fixture
def corpus(builtin_corpus_dir, tmp_path) -> str:
  target = str(tmp_path / "corpus")
  shutil.copytree(builtin_corpus_dir, target)
  return target


def _manifest(corpus):
  with open(os.path.join(corpus, "manifest.json")) as f:
    return json.load(f)


def _write_manifest(corpus, manifest):
  with open(os.path.join(corpus, "manifest.json"), "w") as f:
    json.dump(manifest, f)


def _train_shard(corpus, stream="speech", lang="eng") -> str:
  return os.path.join(corpus, _manifest(corpus)["languages"][lang]["streams"][stream]["train"]["shards"][0])


def _truncate(corpus):
  path = _train_shard(corpus)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - size // 3)
  return path


def _delete(corpus):
  path = _train_shard(corpus, "paired", "deu")
  os.remove(path)
  return path


def _no_manifest(corpus):
  path = os.path.join(corpus, "manifest.json")
  os.remove(path)
  return path


def _count_mismatch(corpus):
  manifest = _manifest(corpus)
  split = manifest["languages"]["rus"]["streams"]["text"]["train"]
  split["clips"] += 2
  _write_manifest(corpus, manifest)
  return "text/rus/train"


def _empty_split(corpus):
  # The shard of a split exists but holds no record; its size no longer matches either.
  path = _train_shard(corpus, "speech", "cmn")
  open(path, "wb").close()
  return path


def _old_manifest_truncated(corpus):
  # A manifest of an earlier release (no shard sizes): the record headers are walked instead.
  manifest = _manifest(corpus)
  for entry in manifest["languages"].values():
    for splits in entry["streams"].values():
      for stats in splits.values():
        stats.pop("shard_bytes", None)
        stats.pop("shard_records", None)
  _write_manifest(corpus, manifest)
  return _truncate(corpus)


def _every_paired_item_over_length(corpus):
  return None  # the corpus is intact; the flag below makes every paired clip too long


FAULTS = {
    "truncated_shard": (_truncate, []),
    "missing_shard": (_delete, []),
    "no_manifest": (_no_manifest, []),
    "count_mismatch": (_count_mismatch, []),
    "empty_split": (_empty_split, []),
    "truncated_shard_old_manifest": (_old_manifest_truncated, []),
    "everything_over_length": (_every_paired_item_over_length, ["--gin.PAIRED_SAMPLES=160"]),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_corpus_fault_is_one_line_naming_the_file_within_30_s(corpus, fault):
  damage, flags = FAULTS[fault]
  named = damage(corpus)
  start = time.time()
  rc, err = run_cli(["data", "show-batch", "--corpus_dir", corpus, *flags])
  elapsed = time.time() - start
  assert rc == 2, err[-3000:]
  line = user_error_line(err, "data")
  assert elapsed < TIME_LIMIT_S, elapsed
  if named is not None:
    assert named in line, line
  else:
    assert "paired" in line and "PAIRED_SAMPLES" in line and "paired/" in line, line


def test_intact_corpus_passes_the_check(corpus):
  rc, err = run_cli(["data", "show-batch", "--corpus_dir", corpus])
  assert rc == 0, err[-3000:]


# -- build-builtin only deletes what it wrote ---------------------------------------------------

def test_build_builtin_refuses_a_directory_that_is_not_its_corpus(tmp_path):
  out = tmp_path / "mine"
  (out / "text").mkdir(parents=True)
  (out / "text" / "notes.txt").write_text("keep me")
  (out / "vocab").mkdir()
  (out / "vocab" / "v.json").write_text("{}")
  rc, err = run_cli(["data", "build-builtin", "--out", str(out), "--languages", "eng", "--per-language", "1"])
  assert rc == 2
  assert "is not empty and holds no built-in corpus" in user_error_line(err, "data")
  assert (out / "text" / "notes.txt").read_text() == "keep me"
  assert (out / "vocab" / "v.json").read_text() == "{}"


def test_rebuild_replaces_only_its_own_files(tmp_path):
  from tests.conftest import build_tiny_corpus  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "corpus")
  kwargs = dict(languages_=("eng", "deu"), held_out=(), per_language=2, text_per_language=2)
  first = build_tiny_corpus(out, **kwargs)
  for name in ("text/notes.txt", "text/eng/notes.txt", "vocab/README", "mine.json"):
    os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
    with open(os.path.join(out, name), "w") as f:
      f.write(name)
  second = build_tiny_corpus(out, force=True, seed=1, **kwargs)
  for name in ("text/notes.txt", "text/eng/notes.txt", "vocab/README", "mine.json"):
    with open(os.path.join(out, name)) as f:
      assert f.read() == name
  assert second["config_hash"] != first["config_hash"] and second["complete"]
  rc, err = run_cli(["data", "show-batch", "--corpus_dir", out])  # the new build checks out
  assert rc == 0, err[-3000:]
