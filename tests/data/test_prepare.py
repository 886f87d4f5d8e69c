"""`mslam data prepare`: each corpus's tree -> a prepared corpus whose batches keep the batch contract;
resume, determinism and the skip counts of the manifest."""
import json
import os

import numpy as np
import pytest

from mslam_jax.data import contract
from mslam_jax.models import encoder  # pylint: disable=unused-import  (data/builtin.gin binds MSLAMEncoder)
from mslam_jax.data import inventory
from mslam_jax.data import pipeline
from mslam_jax.data import records
from mslam_jax.data.corpora import prepare
from tests.data.corpora import trees

# Lengths small enough that every test clip fits the paired stream (up to 2 s of audio).
_BINDINGS = ["SPEECH_SAMPLES = 16000", "PAIRED_SAMPLES = 48000", "TEXT_LENGTH = 32", "PAIRED_TEXT_LENGTH = 48"]
_SIZES = {"speech": "SPEECH_BATCH", "text": "TEXT_BATCH", "paired": "PAIRED_BATCH"}


def _prepared(name, tmp_path, **kwargs):
  root = trees.WRITERS[name](str(tmp_path / "src"))
  out = str(tmp_path / "out")
  return out, prepare.prepare(name, root, out, shard_size=2, **kwargs)


@pytest.mark.parametrize("name", sorted(trees.WRITERS))
def test_prepared_corpus_batches_keep_the_contract(name, tmp_path):
  out, manifest = _prepared(name, tmp_path)
  inventory.check_manifest(manifest, out)
  with_train = {s for s, by in manifest["totals"].items() if by.get("train", {}).get("clips")}
  assert with_train
  bindings = _BINDINGS + [f"{_SIZES[s]} = {2 if s in with_train else 0}" for s in records.STREAMS]
  iterator = pipeline.builtin_step_iterator(out, bindings)
  batch = next(iterator)
  spec = iterator.element_spec
  assert set(batch) == with_train == set(spec)
  for stream, features in batch.items():
    for key, value in features.items():
      assert value.shape == spec[stream][key].shape and value.dtype == spec[stream][key].dtype, (stream, key)
    for key in contract.SEQUENCES[stream]:
      assert (features[f"{key}_mask"].sum(axis=1) > 0).all()
  if "speech" in batch:
    assert np.abs(batch["speech"]["audio"]).max() > 0.05  # real audio, not silence


def test_manifest_counts_bad_input_and_resume_keeps_finished_shards(tmp_path):
  out, manifest = _prepared("fleurs", tmp_path)
  assert manifest["skipped"] == {"empty_text": 2, "malformed_row": 2, "missing_audio": 2, "unknown_language": 1}
  assert manifest["repaired"] == {"downmixed": 1, "resampled": 1}
  afr = manifest["languages"]["afr"]
  assert afr["inventory_id"] == inventory.get("afr").id
  assert afr["streams"]["paired"]["train"]["clips"] == 3 and afr["streams"]["paired"]["train"]["hours"] > 0
  shard = os.path.join(out, afr["streams"]["paired"]["train"]["shards"][0])
  before = open(shard, "rb").read()
  os.remove(os.path.join(out, afr["streams"]["paired"]["test"]["shards"][0]))  # an unfinished shard
  mtime = os.path.getmtime(shard)
  again = prepare.prepare("fleurs", str(tmp_path / "src"), out, shard_size=2)
  assert os.path.getmtime(shard) == mtime  # kept
  assert again["totals"] == manifest["totals"]
  other = str(tmp_path / "other")
  prepare.prepare("fleurs", str(tmp_path / "src"), other, shard_size=2)
  assert open(os.path.join(other, os.path.relpath(shard, out)), "rb").read() == before  # deterministic


def test_languages_streams_and_hour_cap(tmp_path):
  out, manifest = _prepared("voxpopuli", tmp_path, streams=["speech"], languages=["de"],
                            max_hours_per_language=4.0 / 3600)
  assert set(manifest["totals"]) == {"speech"}
  # Only the 3.5 s segment fits the 4 s budget of the training split; evaluation splits are whole.
  assert manifest["languages"]["deu"]["streams"]["speech"]["train"]["clips"] == 1
  with pytest.raises(ValueError, match="neither a voxpopuli code"):
    prepare.prepare("voxpopuli", str(tmp_path / "src"), out, languages=["klingon"])


def test_manifest_that_disagrees_with_the_inventory_is_rejected(tmp_path):
  out, manifest = _prepared("mc4", tmp_path)
  manifest["languages"]["heb"]["inventory_id"] += 1
  with pytest.raises(inventory.InventoryError, match="heb has id"):
    inventory.check_manifest(manifest, out)


def test_prepare_command(tmp_path, capsys):
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  root = trees.mls(str(tmp_path / "src"))
  out = str(tmp_path / "out")
  code = cli.main(["data", "prepare", "--corpus", "mls", "--root", root, "--out", out, "--option", "subset=9hr",
                   "--streams", "paired", "--pipeline_option=--direct_num_workers=1"])
  assert code == 0
  manifest = json.load(open(os.path.join(out, "manifest.json"), encoding="utf-8"))
  assert manifest["totals"]["paired"]["train"]["clips"] == 2
  assert "1 languages" in capsys.readouterr().out
  assert cli.main(["data", "prepare", "--corpus", "mls", "--root", root, "--out", out, "--option", "subset"]) == 2


def test_languages_json_reports_the_inventory_with_corpora(capsys):
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  assert cli.main(["data", "languages", "--inventory", "--json"]) == 0
  entries = json.loads(capsys.readouterr().out)
  assert sum(e["speech"] for e in entries) >= 143
  by_code = {e["code"]: e for e in entries}
  assert by_code["cmn"]["corpora"]["fleurs"] == ["cmn_hans_cn"] and "zh-CN" in by_code["cmn"]["corpora"]["common_voice"]
  assert by_code["heb"]["corpora"]["mc4"] == ["iw"] and by_code["yue"]["corpora"]["babel"] == ["101"]
  assert [e["id"] for e in entries] == list(range(len(entries)))
  assert len(by_code["eng"]["corpora"]) == 6  # all but BABEL
  assert cli.main(["data", "languages", "--json"]) == 0
  registry = {e["code"]: e for e in json.loads(capsys.readouterr().out)}
  assert registry["deu"]["corpora"]["builtin"] and registry["deu"]["corpora"]["mls"] == ["german"]
  assert sum(any(c in e["corpora"] for c in inventory.SPEECH_CORPORA) for e in registry.values()) >= 143


def test_prepared_corpora_combine_into_one_mixture_per_stream(tmp_path):
  import math  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from mslam_jax.data.corpora import tasks  # pylint: disable=g-import-not-at-top
  dirs = {}
  for name in ("fleurs", "common_voice"):
    dirs[name] = str(tmp_path / name / "out")
    prepare.prepare(name, trees.WRITERS[name](str(tmp_path / name / "src")), dirs[name], shard_size=2)
  mixtures = tasks.register_prepared_corpora(dirs, streams={"paired": ["fleurs", "common_voice"],
                                                            "speech": ["common_voice"]}, prefix="t")
  assert mixtures == {"paired": "t_paired", "speech": "t_speech"}
  mixture = seqio.get_mixture_or_task("t_paired")
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  hours = {}
  for name, d in dirs.items():
    for lang, entry in json.load(open(os.path.join(d, "manifest.json"), encoding="utf-8"))["languages"].items():
      hours[lang] = hours.get(lang, 0) + entry["streams"]["paired"]["train"]["hours"]
  weights = {lang: h ** (1 / 3) for lang, h in hours.items()}
  expected = {lang: w / sum(weights.values()) for lang, w in weights.items()}
  assert set(rates) == {"t_fleurs_paired_afr", "t_fleurs_paired_cmn", "t_common_voice_paired_fra",
                        "t_common_voice_paired_swe"}
  for task, rate in rates.items():
    assert math.isclose(rate / sum(rates.values()), expected[task.rsplit("_", 1)[1]], rel_tol=1e-9)
  vocab = tasks.shared_vocabulary(dirs)  # one vocabulary for both: Chinese and French characters
  assert vocab.unk_id not in vocab.encode("今天 à") and tasks.prepared_vocab_size(dirs) % 128 == 0
  broken = json.load(open(os.path.join(dirs["fleurs"], "manifest.json"), encoding="utf-8"))
  broken["languages"]["afr"]["inventory_id"] = 999
  json.dump(broken, open(os.path.join(dirs["fleurs"], "manifest.json"), "w", encoding="utf-8"))
  with pytest.raises(inventory.InventoryError, match="afr has id 999"):
    tasks.register_prepared_corpora(dirs, prefix="t2")


def test_prepare_writes_to_a_remote_filesystem(tmp_path):
  """The output on a non-local tf.io.gfile filesystem (TensorFlow's ram://, as Dataflow writes gs://)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mslam_jax.data.corpora import tasks  # pylint: disable=g-import-not-at-top
  root = trees.mls(str(tmp_path / "src"))
  out = f"ram://prepared-{os.getpid()}/mls"
  manifest = prepare.prepare("mls", root, out, shard_size=2, streams=["paired"])
  assert tasks.load_manifest(out)["totals"] == manifest["totals"]
  shard = os.path.join(out, manifest["languages"]["deu"]["streams"]["paired"]["train"]["shards"][0])
  record = records.from_example_bytes(next(iter(tf.data.TFRecordDataset(shard))).numpy())
  assert record.lang == "deu" and record.text == "guten tag nummer 0" and len(record.audio) == 16000  # 1 s
  assert tf.io.gfile.exists(os.path.join(out, "vocab", "characters.json"))
  again = prepare.prepare("mls", root, out, shard_size=2, streams=["paired"])  # resumes: nothing to do
  assert again["totals"] == manifest["totals"]
