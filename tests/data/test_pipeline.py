"""Tests of the feature converters and the three-stream step iterator (mslam_jax/data/pipeline.py)."""
import collections
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
from scipy import stats

from mslam_jax.data import feature_converters as fc
from mslam_jax.data import languages
from mslam_jax.data import pipeline
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.tasks import builtin

try:  # the synthetic corpus writer lives with the Task tests
  from tests.data.test_tasks import HELD_OUT, write_corpus
except ImportError:
  from test_tasks import HELD_OUT, write_corpus  # pylint: disable=g-import-not-at-top

PREFIX = "tpipe"
SIZES = dict(speech_samples=2400, text_length=40, paired_samples=4000, paired_text_length=64)


@pytest.fixture(scope="module")
def mixtures(tmp_path_factory):
  corpus = write_corpus(str(tmp_path_factory.mktemp("pipeline_corpus")))
  return builtin.register_builtin_corpus(corpus, temperature=3.0, prefix=PREFIX)


def make(mixtures, speech=4, text=8, paired=2, **kwargs):
  args = dict(SIZES, speech_batch_size=speech, text_batch_size=text, paired_batch_size=paired,
              speech_mixture=mixtures["speech"], text_mixture=mixtures["text"],
              paired_mixture=mixtures["paired"], shard_info=seqio.ShardInfo(0, 1), seed=7)
  args.update(kwargs)
  return pipeline.make_step_iterator(**args)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


# -- feature converters (no corpus) -----------------------------------------------------------------
def _speech_items(lengths):
  return tf.data.Dataset.from_generator(
      lambda: ({"audio": np.full([n], 0.25, np.float32), "lang": np.int32(i)} for i, n in enumerate(lengths)),
      output_signature={"audio": tf.TensorSpec([None], tf.float32), "lang": tf.TensorSpec([], tf.int32)})


def test_speech_converter_pads_with_mask_and_crops_overlong():
  conv = fc.SpeechFeatureConverter(over_length="crop", seed=3, name="t_crop")
  out = list(conv(_speech_items([3, 10, 25]), {"audio": 10, "lang": 0}).as_numpy_iterator())
  assert [len(x["audio"]) for x in out] == [10, 10, 10]
  assert out[0]["audio_mask"].tolist() == [1] * 3 + [0] * 7
  assert out[0]["audio"][3:].tolist() == [0.0] * 7 and out[0]["audio"][:3].tolist() == [0.25] * 3
  assert out[2]["audio_mask"].sum() == 10 and out[2]["lang"] == 2
  assert preprocessors.drop_counts()["cropped/t_crop"] == 1


def test_speech_converter_drop_policy_counts_dropped():
  conv = fc.SpeechFeatureConverter(over_length="drop", name="t_drop")
  out = list(conv(_speech_items([3, 25, 10, 11]), {"audio": 10, "lang": 0}).as_numpy_iterator())
  assert [int(x["lang"]) for x in out] == [0, 2]
  assert preprocessors.drop_counts()["dropped_over_length/t_drop"] == 2


def test_paired_converter_drops_when_either_side_is_too_long():
  items = [(5, 3), (12, 3), (5, 9), (8, 8)]
  ds = tf.data.Dataset.from_generator(
      lambda: ({"audio": np.ones([a], np.float32), "tokens": np.full([t], 7, np.int32), "lang": np.int32(i)}
               for i, (a, t) in enumerate(items)),
      output_signature={"audio": tf.TensorSpec([None], tf.float32), "tokens": tf.TensorSpec([None], tf.int32),
                        "lang": tf.TensorSpec([], tf.int32)})
  out = list(fc.PairedFeatureConverter(name="t_paired")(ds, {"audio": 8, "tokens": 8, "lang": 0})
             .as_numpy_iterator())
  assert [int(x["lang"]) for x in out] == [0, 3]
  assert out[0]["tokens_mask"].tolist() == [1] * 3 + [0] * 5
  assert out[0]["tokens"].tolist() == [7] * 3 + [0] * 5


def test_text_converter_truncates_and_counts():
  ds = tf.data.Dataset.from_generator(
      lambda: ({"tokens": np.arange(5, 5 + n, dtype=np.int32), "lang": np.int32(0)} for n in (4, 9, 6)),
      output_signature={"tokens": tf.TensorSpec([None], tf.int32), "lang": tf.TensorSpec([], tf.int32)})
  out = list(fc.TextFeatureConverter(name="t_text")(ds, {"tokens": 6, "lang": 0}).as_numpy_iterator())
  assert [x["tokens_mask"].sum() for x in out] == [4, 6, 6]
  assert out[1]["tokens"].tolist() == [5, 6, 7, 8, 9, 10]
  assert preprocessors.drop_counts()["truncated/t_text"] == 1


def test_bad_policy_names_the_binding():
  with pytest.raises(ValueError, match="make_step_iterator"):
    fc.SpeechFeatureConverter(over_length="truncate")


# -- the step iterator --------------------------------------------------------------------------------
def test_batches_follow_the_contract(mixtures):
  it = make(mixtures, num_threads=2)
  spec = it.element_spec
  batch = next(it)
  expected = {
      "speech": {"audio": ((4, 2400), np.float32), "audio_mask": ((4, 2400), np.int32), "lang": ((4,), np.int32)},
      "text": {"tokens": ((8, 40), np.int32), "tokens_mask": ((8, 40), np.int32), "lang": ((8,), np.int32)},
      "paired": {"audio": ((2, 4000), np.float32), "audio_mask": ((2, 4000), np.int32),
                 "tokens": ((2, 64), np.int32), "tokens_mask": ((2, 64), np.int32), "lang": ((2,), np.int32)},
  }
  assert batch.keys() == expected.keys() == spec.keys()
  for stream, features in expected.items():
    assert batch[stream].keys() == features.keys() == spec[stream].keys()
    for key, (shape, dtype) in features.items():
      assert batch[stream][key].shape == shape == spec[stream][key].shape, (stream, key)
      assert batch[stream][key].dtype == dtype == spec[stream][key].dtype, (stream, key)
  for stream in ("speech", "paired"):
    audio, mask = batch[stream]["audio"], batch[stream]["audio_mask"]
    assert np.all((audio >= -1) & (audio < 1))
    assert np.all(audio[mask == 0] == 0) and set(np.unique(mask)) <= {0, 1}
    assert mask.sum(axis=1).min() >= 800  # every clip has real audio; padding follows it
  assert np.all(batch["text"]["tokens"][batch["text"]["tokens_mask"] == 0] == 0)
  assert np.all(batch["text"]["tokens"][batch["text"]["tokens_mask"] == 1] >= 5)  # no EOS/reserved ids
  seconds = pipeline.audio_seconds(batch)
  assert seconds == (batch["speech"]["audio_mask"].sum() + batch["paired"]["audio_mask"].sum()) / 16000
  text = pipeline.describe_batch(batch)
  assert "speech:" in text and "[4, 2400]" in text and "float32" in text and "eng" in text


def test_dummy_batch_and_global_spec_need_no_data():
  it = pipeline.make_step_iterator(**SIZES, speech_batch_size=8, text_batch_size=16, paired_batch_size=4,
                                   speech_mixture="not_registered", shard_info=seqio.ShardInfo(1, 2))
  assert it.global_element_spec["speech"]["audio"].shape == (8, 2400)
  assert it.element_spec["speech"]["audio"].shape == (4, 2400)
  dummy = it.dummy_batch()
  assert dummy["paired"]["tokens"].shape == (2, 64) and dummy["paired"]["tokens_mask"].all()
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.make_step_iterator(**SIZES, speech_batch_size=3, text_batch_size=16, paired_batch_size=4,
                                shard_info=seqio.ShardInfo(0, 2))


def test_language_mix_matches_temperature_rates(mixtures):
  """Chi-square of per-language counts over 150 batches against p_l ∝ n_l^(1/T); p > 0.001 required.

  The same counts must reject the un-tempered rates (T=1, p < 1e-6): the test can tell them apart.
  """
  it = make(mixtures, speech=8, text=16, paired=0)
  counts = {"speech": collections.Counter(), "text": collections.Counter()}
  for batch in take(it, 150):
    for stream in counts:
      counts[stream].update(batch[stream]["lang"].tolist())
  for stream, counter in counts.items():
    rates = builtin.mixture_rates(mixtures[stream])
    ids = sorted(rates)
    observed = np.array([counter[i] for i in ids])
    assert sum(observed) == sum(counter.values())  # no language outside the mixture
    expected = np.array([rates[i] for i in ids]) * observed.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3, (stream, observed, expected)
    proportional = np.array([rates[i] ** 3 for i in ids])  # T=1: p ∝ n
    proportional = proportional / proportional.sum() * observed.sum()
    assert stats.chisquare(observed, proportional).pvalue < 1e-6, stream


def test_held_out_languages_absent_from_training_paired_stream(mixtures):
  it = make(mixtures, speech=0, text=0, paired=4)
  seen = set()
  for batch in take(it, 40):
    seen.update(batch["paired"]["lang"].tolist())
  held_out = {languages.lang_id(code) for code in HELD_OUT}
  assert seen and not seen & held_out
  assert seen == set(builtin.mixture_rates(mixtures["paired"]))


def _rows(batches, stream="text"):
  return {tuple(row) for b in batches for row in b[stream]["tokens"].tolist()}


def test_host_shards_see_disjoint_data(mixtures):
  host0 = take(make(mixtures, speech=0, paired=0, text=8, shard_info=seqio.ShardInfo(0, 2)), 30)
  host1 = take(make(mixtures, speech=0, paired=0, text=8, shard_info=seqio.ShardInfo(1, 2)), 30)
  rows0, rows1 = _rows(host0), _rows(host1)
  assert host0[0]["text"]["tokens"].shape[0] == 4  # global 8 over 2 hosts
  assert len(rows0) > 20 and len(rows1) > 20
  assert not rows0 & rows1


def test_slice_mode_gives_the_same_global_batches_on_any_host_count(mixtures):
  # Speech: its random crops are seeded by position in the stream, which must not depend on the host.
  one = take(make(mixtures, speech=4, paired=0, text=0, host_split="slice"), 3)
  halves = [take(make(mixtures, speech=4, paired=0, text=0, host_split="slice",
                      shard_info=seqio.ShardInfo(i, 2)), 3) for i in range(2)]
  for step in range(3):
    for stream in ("speech",):
      for key, value in one[step][stream].items():
        joined = np.concatenate([halves[0][step][stream][key], halves[1][step][stream][key]])
        np.testing.assert_array_equal(joined, value, err_msg=f"{step} {stream}/{key}")


@pytest.mark.parametrize("checkpoint_pipeline", [True, False], ids=["pipeline_checkpoint", "skip"])
def test_resume_gives_identical_subsequent_batches(mixtures, checkpoint_pipeline):
  run = make(mixtures, checkpoint_pipeline=checkpoint_pipeline)
  head = take(run, 4)
  state = run.get_state()
  pipeline_state = state.pop(pipeline.PIPELINE_KEY, None)
  assert (pipeline_state is not None) == checkpoint_pipeline
  state = json.loads(json.dumps(state))  # what a checkpoint stores (the bytes go in a file of their own)
  if pipeline_state is not None:
    state[pipeline.PIPELINE_KEY] = pipeline_state
  assert state["position"] == 4
  uninterrupted = take(run, 5)
  resumed = make(mixtures, checkpoint_pipeline=checkpoint_pipeline)
  resumed.set_state(state)
  after = take(resumed, 5)
  assert resumed.position == 9
  for expected, got in zip(uninterrupted, after):
    for stream in expected:
      for key in expected[stream]:
        np.testing.assert_array_equal(expected[stream][key], got[stream][key], err_msg=f"{stream}/{key}")
  # Not trivially true: a fresh iterator (no resume) starts with other batches.
  for stream in head[0]:
    assert not np.array_equal(head[0][stream]["audio" if stream != "text" else "tokens"],
                              after[0][stream]["audio" if stream != "text" else "tokens"])


def test_resume_refuses_a_changed_config(mixtures, tmp_path):
  it = make(mixtures)
  with pytest.raises(ValueError, match="not in"):
    it.get_state(position=1)  # nothing yielded yet
  it.set_state({**it.get_state(), "position": 3})
  it.save(str(tmp_path))
  with pytest.raises(ValueError, match="strict_resume"):
    make(mixtures, text=16).restore(str(tmp_path))
  lenient = make(mixtures, text=16, strict_resume=False)
  lenient.restore(str(tmp_path))
  assert lenient.position == 3


# -- length buckets ---------------------------------------------------------------------------------
BUCKETS = dict(speech=0, text=0, paired=2, paired_buckets=[(2000, 64, 4)])  # pairs up to 2,000 samples: 4 a step


def _paired_lengths(batches):
  return [int(n) for b in batches for n in b["paired"]["audio_mask"].sum(axis=1)]


def test_length_buckets_batch_each_item_in_the_first_shape_it_fits(mixtures):
  it = make(mixtures, **BUCKETS)
  assert it.element_spec["paired"]["audio"].shape == (2, 4000)  # the main shape: init and AOT compiles
  batches = take(it, 150)
  shapes = collections.Counter(b["paired"]["audio"].shape for b in batches)
  assert set(shapes) == {(4, 2000), (2, 4000)}, shapes
  for b in batches:
    paired = b["paired"]
    assert paired["tokens"].shape == (paired["audio"].shape[0], 64)
    assert {k: v.shape[0] for k, v in paired.items()} == {k: paired["audio"].shape[0] for k in paired}
    if paired["audio"].shape == (2, 4000):  # only what the short bucket cannot take
      assert paired["audio_mask"].sum(axis=1).min() > 2000
  # Unbiased: the buckets are drawn so that short and long pairs come at the rate the data holds them.
  source = it._source("paired", None, repeat=False)  # pylint: disable=protected-access
  data = [len(ex["audio"]) for ex in source.as_numpy_iterator()]
  drawn = _paired_lengths(batches)
  expected = np.mean(np.array(data) <= 2000)
  assert 0.2 < expected < 0.6  # the synthetic clips are 800-4000 samples
  assert abs(np.mean(np.array(drawn) <= 2000) - expected) < 0.1, (np.mean(np.array(drawn) <= 2000), expected)
  probabilities = it.bucket_probabilities("paired")
  np.testing.assert_allclose(probabilities[0] / probabilities[1], expected / 4 / ((1 - expected) / 2), rtol=0.3)


def test_length_buckets_pick_the_same_shape_on_every_host(mixtures):
  hosts = [take(make(mixtures, **BUCKETS, shard_info=seqio.ShardInfo(i, 2)), 40) for i in range(2)]
  shapes = [[b["paired"]["audio"].shape for b in batches] for batches in hosts]
  assert shapes[0] == shapes[1]
  assert {s[0] for s in shapes[0]} == {2, 1}  # global 4 and 2, over 2 hosts
  rows = [{tuple(r) for b in batches for r in b["paired"]["tokens"].tolist()} for batches in hosts]
  assert not rows[0] & rows[1]  # each host still reads its own shard


@pytest.mark.parametrize("checkpoint_pipeline", [True, False], ids=["pipeline_checkpoint", "skip"])
def test_length_buckets_resume_exactly(mixtures, checkpoint_pipeline):
  run = make(mixtures, **BUCKETS, checkpoint_pipeline=checkpoint_pipeline)
  take(run, 7)
  state = run.get_state()
  uninterrupted = take(run, 12)
  resumed = make(mixtures, **BUCKETS, checkpoint_pipeline=checkpoint_pipeline)
  resumed.set_state(state)
  after = take(resumed, 12)
  assert len({b["paired"]["audio"].shape for b in uninterrupted}) == 2
  for expected, got in zip(uninterrupted, after):
    for key in expected["paired"]:
      np.testing.assert_array_equal(expected["paired"][key], got["paired"][key], err_msg=key)


def test_length_buckets_are_part_of_the_data_config(mixtures, tmp_path):
  plain = make(mixtures, speech=0, text=0, paired=2)
  assert "buckets" not in plain.config_dict()["streams"]["paired"]  # unbucketed fingerprints unchanged
  bucketed = make(mixtures, **BUCKETS)
  assert bucketed.config_dict()["streams"]["paired"]["buckets"] == [[4, {"audio": 2000, "tokens": 64}]]
  plain.set_state({**plain.get_state(), "position": 3})
  plain.save(str(tmp_path))
  with pytest.raises(ValueError, match="strict_resume"):
    bucketed.restore(str(tmp_path))


@pytest.mark.parametrize("buckets, message", [
    ([(8000, 64, 4)], "no longer than"),  # longer than the main shape
    ([(2000, 4)], r"\(audio, tokens, batch_size\)"),
    ([(2000, 64, 0)], "positive batch size"),
    ([(2000, 64, 3)], "not divisible"),
])
def test_bad_length_buckets_name_the_binding(mixtures, buckets, message):
  with pytest.raises(ValueError, match=message):
    make(mixtures, speech=0, text=0, paired=2, paired_buckets=buckets, shard_info=seqio.ShardInfo(0, 2))


def test_end_to_end_on_the_built_in_corpus(builtin_corpus_dir):
  """The real built-in corpus (tests/conftest.py) through data/builtin.gin: contract, held-out language."""
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
  with gin.unlock_config():
    gin.clear_config()
    it = pipeline.builtin_step_iterator(builtin_corpus_dir, [
        "SPEECH_BATCH = 2", "TEXT_BATCH = 4", "PAIRED_BATCH = 2", "SPEECH_SAMPLES = 16000",
        "PAIRED_SAMPLES = 128000", "PAIRED_TEXT_LENGTH = 256"], shard_info=seqio.ShardInfo(0, 1))
    batches = take(it, 3)  # the first next() runs register_builtin_corpus with its gin bindings
    gin.clear_config()
  assert "languages" in pipeline.describe_batch(batches[0])
  assert it.element_spec["speech"]["audio"].shape == (2, 16000)
  manifest = builtin.load_manifest(builtin_corpus_dir)
  vocab = vocabularies.vocabulary_for_corpus(builtin_corpus_dir)
  seen = collections.defaultdict(set)
  for batch in batches:
    for stream, spec in it.element_spec.items():
      for key, s in spec.items():
        assert batch[stream][key].shape == s.shape and batch[stream][key].dtype == s.dtype
      seen[stream].update(batch[stream]["lang"].tolist())
    for row, mask in zip(batch["text"]["tokens"], batch["text"]["tokens_mask"]):
      assert vocabularies.UNK_PIECE not in vocab.decode(row[mask == 1].tolist())
  codes = {stream: {languages.lang_id(c) for c in manifest["streams"][stream]} for stream in records.STREAMS}
  for stream in records.STREAMS:
    assert seen[stream] and seen[stream] <= codes[stream]
  held_out = {languages.lang_id(c) for c in manifest["held_out_languages"]}
  assert held_out and not seen["paired"] & held_out
  assert not set(builtin.mixture_rates("builtin_paired")) & held_out
