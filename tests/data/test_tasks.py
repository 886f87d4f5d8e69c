"""Tests of the built-in corpus' SeqIO Tasks and Mixtures (tasks/builtin.py) on a tiny synthetic corpus."""
import json
import math
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mslam_jax.data import languages
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.data import vocabularies
from mslam_jax.tasks import builtin

# train clips per (stream, lang); the held-out language has paired train data on disk on purpose.
SYNTHETIC_COUNTS = {
    "speech": {"eng": 48, "fra": 16, "deu": 6},
    "text": {"eng": 96, "fra": 24, "deu": 6, "spa": 12},
    "paired": {"eng": 24, "fra": 12, "deu": 6, "ita": 10},
}
HELD_OUT = ("ita",)
NUM_SHARDS = 2


def _clip(rng: np.random.Generator, lang: str, i: int) -> np.ndarray:
  n = int(rng.integers(800, 4000))  # 50-250 ms: tiny but long enough to crop and pad
  t = np.arange(n) / records.SAMPLE_RATE
  freq = 100 + 37 * (sum(map(ord, lang)) % 11) + i
  return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_corpus(directory: str, counts=None, held_out=HELD_OUT, seed: int = 0) -> str:
  """Writes records.py shards (train + a few validation), manifest.json and vocab/ for tests."""
  counts = counts or SYNTHETIC_COUNTS
  rng = np.random.default_rng(seed)
  manifest = {"languages": {}, "held_out_languages": list(held_out)}
  texts = []
  for stream, per_lang in counts.items():
    for lang, n_train in per_lang.items():
      entry = manifest["languages"].setdefault(lang, {"streams": {}})
      for split, n in (("train", n_train), ("validation", 2)):
        utts = []
        for i in range(n):
          text = f"{lang} {stream} {split} sentence number {i} ü ß é"
          audio = _clip(rng, lang, i) if stream != "text" else np.zeros([0], np.float32)
          utts.append(records.Utterance(id=f"{lang}-{stream}-{split}-{i}", lang=lang, text=text, audio=audio))
          texts.append(text)
        for shard in range(NUM_SHARDS):
          path = os.path.join(directory, records.shard_name(stream, lang, split, shard, NUM_SHARDS))
          os.makedirs(os.path.dirname(path), exist_ok=True)
          with tf.io.TFRecordWriter(path) as w:
            for utt in utts[shard::NUM_SHARDS]:
              w.write(records.to_example_bytes(utt))
        seconds = sum(len(u.audio) for u in utts) / records.SAMPLE_RATE
        entry["streams"].setdefault(stream, {})[split] = {
            "clips": n, "hours": seconds / 3600, "characters": sum(len(u.text) for u in utts)}
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  vocabularies.CharacterVocabulary.build(texts).save(os.path.join(directory, "vocab"))
  return directory


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  return write_corpus(str(tmp_path_factory.mktemp("synthetic_corpus")))


@pytest.fixture(scope="module")
def registered(corpus_dir):
  return builtin.register_builtin_corpus(corpus_dir, temperature=3.0, prefix="tsyn")


def test_registers_per_language_tasks_and_one_mixture_per_stream(registered):
  assert registered == {"speech": "tsyn_speech", "text": "tsyn_text", "paired": "tsyn_paired"}
  for stream, per_lang in SYNTHETIC_COUNTS.items():
    for lang in per_lang:
      task = seqio.get_mixture_or_task(builtin.task_name(stream, lang, "tsyn"))
      assert set(task.splits) == {"train", "validation"}
      assert task.num_input_examples("train") == per_lang[lang]


def test_mixture_rates_follow_temperature(corpus_dir, registered):
  manifest = builtin.load_manifest(corpus_dir)
  for stream, unit in (("speech", "hours"), ("text", "clips"), ("paired", "hours")):
    sizes = {lang: manifest["languages"][lang]["streams"][stream]["train"][unit]
             for lang in SYNTHETIC_COUNTS[stream] if lang not in HELD_OUT}
    total = sum(n ** (1 / 3) for n in sizes.values())
    expected = {languages.lang_id(lang): n ** (1 / 3) / total for lang, n in sizes.items()}
    rates = builtin.mixture_rates(registered[stream])
    assert rates.keys() == expected.keys()
    for k in expected:
      assert math.isclose(rates[k], expected[k], rel_tol=1e-9), (stream, k)
  # T flattens the distribution: the largest text language gets less than its share of the data.
  text_rates = builtin.mixture_rates("tsyn_text")
  assert text_rates[languages.lang_id("eng")] < 96 / (96 + 24 + 6 + 12)


def test_held_out_paired_data_stays_out_of_training_mixture(registered):
  paired = seqio.get_mixture_or_task(registered["paired"])
  assert "tsyn_paired_ita" not in [t.name for t in paired.tasks]
  heldout = seqio.get_mixture_or_task(builtin.heldout_mixture_name("tsyn"))
  assert [t.name for t in heldout.tasks] == ["tsyn_paired_ita"]
  # Speech/text of other languages are untouched by the held-out list.
  assert "tsyn_text_spa" in [t.name for t in seqio.get_mixture_or_task(registered["text"]).tasks]


def test_registration_is_idempotent_and_reregisters_on_change(corpus_dir, registered):
  task = seqio.get_mixture_or_task("tsyn_speech_eng")
  again = builtin.register_builtin_corpus(corpus_dir, temperature=3.0, prefix="tsyn")
  assert again == registered
  assert seqio.get_mixture_or_task("tsyn_speech_eng") is task  # nothing was rebuilt
  flat = builtin.register_builtin_corpus(corpus_dir, temperature=1e6, prefix="tsyn2")
  rates = builtin.mixture_rates(flat["text"])
  assert max(rates.values()) - min(rates.values()) < 1e-4  # T -> inf: uniform over languages


def test_task_dataset_decodes_audio_tokenizes_text_and_attaches_language(corpus_dir, registered):
  vocab = vocabularies.vocabulary_for_corpus(corpus_dir)
  task = seqio.get_mixture_or_task("tsyn_paired_fra")
  items = list(task.get_dataset(None, split="validation", shuffle=False).as_numpy_iterator())
  assert len(items) == 2
  for ex in items:
    assert set(ex) == {"audio", "tokens", "lang"}
    assert ex["audio"].dtype == np.float32 and 800 <= len(ex["audio"]) < 4000
    assert np.abs(ex["audio"]).max() <= 0.51 and np.abs(ex["audio"]).max() > 0.3
    assert ex["tokens"].dtype == np.int32
    assert vocab.decode(ex["tokens"].tolist()).startswith("fra paired validation sentence number")
    assert ex["lang"] == languages.lang_id("fra")


def test_empty_items_are_dropped_and_counted(tmp_path):
  counts = {"speech": {"eng": 4}, "text": {"eng": 4}, "paired": {"eng": 4}}
  corpus = write_corpus(str(tmp_path), counts=counts, held_out=())
  # One more shard file with an empty clip and an empty text in the train split of eng speech/text.
  for stream in ("speech", "text"):
    path = os.path.join(corpus, f"{stream}/eng/train.tfrecord-extra")
    with tf.io.TFRecordWriter(path) as w:
      w.write(records.to_example_bytes(records.Utterance(id="bad", lang="eng", text="")))
  builtin.register_builtin_corpus(corpus, prefix="tempty")
  for stream, key in (("speech", "audio"), ("text", "tokens")):
    task = seqio.get_mixture_or_task(f"tempty_{stream}_eng")
    items = list(task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
    assert len(items) == 4 and all(len(ex[key]) > 0 for ex in items)
    assert preprocessors.drop_counts()[f"empty_{key}/tempty_{stream}_eng"] == 1


def test_missing_corpus_names_the_binding(tmp_path):
  with pytest.raises(FileNotFoundError, match="register_builtin_corpus.corpus_dir"):
    builtin.register_builtin_corpus(str(tmp_path), prefix="tmissing")
  with pytest.raises(ValueError, match="CORPUS_DIR"):  # an unbound %gin.REQUIRED macro arrives as an object
    builtin.register_builtin_corpus(object(), prefix="tmissing")
