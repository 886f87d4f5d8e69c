"""Pieces of the fine-tuning job: ExampleBatches (batches of example indices, length buckets, exact
resume) and the choice of a CTC head's starting point."""
import types

import numpy as np
import pytest

from mslam_jax.evaluation import finetune


def _indices(batches, steps):
  return [next(batches)["i"].tolist() for _ in range(steps)]


def test_each_batch_draws_from_one_bucket_in_proportion_to_its_size():
  lengths = np.array([1] * 30 + [3] * 10)  # two buckets: 30 short items, 10 long ones
  groups = [np.where(lengths == 1)[0], np.where(lengths == 3)[0]]
  batches = finetune.ExampleBatches(40, lambda idx: {"i": np.array(idx)}, 4, seed=1, groups=groups)
  drawn = _indices(batches, 400)
  buckets = [set(lengths[b].tolist()) for b in drawn]
  assert all(len(b) == 1 for b in buckets)  # never a short clip padded to a long one's length
  share_long = np.mean([b == {3} for b in buckets])
  assert 0.18 < share_long < 0.32, share_long  # 10 of 40 items
  # A bucket smaller than the batch is drawn with replacement.
  small = finetune.ExampleBatches(5, lambda idx: {"i": np.array(idx)}, 4, groups=[[0, 1, 2], [3, 4]])
  assert all(set(b) <= {0, 1, 2} or set(b) <= {3, 4} for b in _indices(small, 50))


def test_resume_from_a_position_continues_the_same_batches():
  make = lambda idx: {"i": np.array(idx)}
  groups = [list(range(0, 12)), list(range(12, 20))]
  straight = finetune.ExampleBatches(20, make, 4, seed=3, groups=groups)
  want = _indices(straight, 12)
  resumed = finetune.ExampleBatches(20, make, 4, seed=3, groups=groups)
  _indices(resumed, 5)
  state = resumed.get_state()
  again = finetune.ExampleBatches(20, make, 4, seed=3, groups=groups)
  again.set_state(state)
  assert _indices(again, 7) == want[5:]


def test_without_buckets_the_draws_are_one_generators_choices():
  batches = finetune.ExampleBatches(10, lambda idx: {"i": np.array(idx)}, 3, seed=7)
  rng = np.random.default_rng(7)
  assert _indices(batches, 4) == [rng.choice(10, size=3, replace=False).tolist() for _ in range(4)]


def test_length_buckets_must_increase():
  with pytest.raises(ValueError, match="length_buckets"):
    finetune.FinetuneConfig(length_buckets=(2.0, 1.0))
  assert finetune.FinetuneConfig(length_buckets=(1.0, 2.5)).length_buckets == (1.0, 2.5)


def test_ctc_batches_in_length_buckets_are_padded_to_their_bucket_not_the_longest_clip():
  sr = 16000
  seconds = [0.5, 0.9, 1.0, 1.4, 2.0, 2.6, 3.0, 0.7]
  examples = finetune.Examples([np.ones(int(s * sr), np.float32) for s in seconds],
                               [np.array([5, 6], np.int32)] * len(seconds), audio_samples=3 * sr, label_length=32)
  bucketed = finetune.example_batches(examples, "ctc", finetune.FinetuneConfig(batch_size=2, length_buckets=(1.0, 2.0)))()
  shapes = set()
  for _ in range(60):
    paired = next(bucketed)["paired"]
    lengths = paired["audio_mask"].sum(-1) / sr
    width = paired["audio"].shape[1] / sr
    shapes.add(width)
    # Every clip sits in the first bucket that holds it: never padded past that bucket's bound.
    assert {width} == {1.0 if l <= 1.0 else 2.0 if l <= 2.0 else 3.0 for l in lengths}, (width, lengths)
  assert shapes == {1.0, 2.0, 3.0}
  plain = finetune.example_batches(examples, "ctc", finetune.FinetuneConfig(batch_size=2))()
  assert {next(plain)["paired"]["audio"].shape[1] for _ in range(10)} == {3 * sr}


def test_a_ctc_head_starts_from_the_pretrained_one_only_if_the_run_trained_it():
  params = {"ctc_head": {"dense": {"kernel": np.ones((4, 10), np.float32), "bias": np.zeros((10,), np.float32)}}}
  joint = types.SimpleNamespace(weights=types.SimpleNamespace(ctc=0.3))
  head = finetune.pretrained_head(params, "ctc_head", 4, 6, joint)
  assert head["kernel"].shape == (4, 6) and head["bias"].shape == (6,)
  # A speech-only run's head is its random initialisation: a fresh head is the fair start.
  speech_only = types.SimpleNamespace(weights=types.SimpleNamespace(ctc=0.0))
  assert finetune.pretrained_head(params, "ctc_head", 4, 6, speech_only) is None
  assert finetune.pretrained_head(params, None, 4, 6, joint) is None
  assert finetune.pretrained_head(params, "ctc_head", 5, 6, joint) is None  # another width: no head to take


def _ctc_batch(num_frames: int, transcript: list[int]):
  """One utterance: frames of a 4-dim encoder output, and its transcript's ids."""
  frames = np.random.default_rng(0).normal(size=(1, num_frames, 4)).astype(np.float32)
  tokens = np.zeros((1, 8), np.int32)
  tokens[0, :len(transcript)] = transcript
  tokens_mask = (np.arange(8) < len(transcript)).astype(np.float32)[None]
  return frames, np.ones((1, num_frames), np.float32), tokens, tokens_mask


def test_an_upsampled_ctc_head_gives_each_frame_its_own_steps_and_holds_dense_transcripts():
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  task = finetune.CTCTask(types.SimpleNamespace(), num_classes=6, upsample=2)
  head = jax.tree.map(np.asarray, finetune.meta.unbox(task._head_params(jax.random.PRNGKey(0), 4)))  # pylint: disable=protected-access
  assert head["kernel"].shape == (4, 2, 6) and head["bias"].shape == (2, 6)
  frames, mask, tokens, tokens_mask = _ctc_batch(3, [3, 3, 4, 5])  # 4 characters and a doubled one
  logits, steps_mask = finetune.ctc_logits(head, frames, mask)
  assert logits.shape == (1, 6, 6) and steps_mask.shape == (1, 6) and float(steps_mask.sum()) == 6
  # Step 2 j + i is frame j's own step i.
  np.testing.assert_allclose(logits[0, 3], frames[0, 1] @ head["kernel"][:, 1] + head["bias"][1], rtol=1e-5)
  # 3 frames cannot hold 4 characters and the blank between the doubled pair; 6 steps can.
  one_step = {"kernel": head["kernel"][:, 0], "bias": head["bias"][0]}
  for h, feasible in ((one_step, False), (head, True)):
    lg, m = finetune.ctc_logits(h, frames, mask)
    loss = float(optax.ctc_loss(lg, 1.0 - m, tokens, 1.0 - tokens_mask, blank_id=0)[0])
    assert (loss < finetune._INFEASIBLE) == feasible, loss  # pylint: disable=protected-access


def test_a_pretrained_ctc_head_is_repeated_into_every_upsampled_step():
  kernel = np.arange(40, dtype=np.float32).reshape(4, 10)
  params = {"ctc_head": {"dense": {"kernel": kernel, "bias": np.arange(10, dtype=np.float32)}}}
  joint = types.SimpleNamespace(weights=types.SimpleNamespace(ctc=0.3))
  head = finetune.pretrained_head(params, "ctc_head", 4, 6, joint, upsample=3)
  assert head["kernel"].shape == (4, 3, 6) and head["bias"].shape == (3, 6)
  for i in range(3):  # every step starts as the pre-trained head: greedy decoding is unchanged
    np.testing.assert_array_equal(head["kernel"][:, i], kernel[:, :6])
    np.testing.assert_array_equal(head["bias"][i], np.arange(6))
  with pytest.raises(ValueError, match="ctc_upsample"):
    finetune.FinetuneConfig(ctc_upsample=0)


def _text_examples():
  sr = 16000
  examples = finetune.Examples([np.ones(sr, np.float32) * i for i in range(4)],
                               [np.array([5, 6], np.int32)] * 4, audio_samples=sr, label_length=32)
  vocab = types.SimpleNamespace(encode=lambda text: [1] + [ord(c) - 90 for c in text])  # 1: a reserved id
  utterances = [types.SimpleNamespace(text=t, lang=l) for t, l in (("abc", "afr"), ("", "eng"), ("d" * 40, "swa"),
                                                                    ("efg", "xx-unknown"))]
  return finetune.with_texts(examples, utterances, vocab)


def test_text_rows_keep_their_characters_cut_to_the_transcripts_length():
  examples = _text_examples()
  assert [t.tolist() for t in examples.texts] == [[7, 8, 9], [10] * 32, [11, 12, 13]]  # the empty one skipped
  assert examples.text_langs == [finetune.language_id("afr"), finetune.language_id("swa"), -1]
  with pytest.raises(ValueError, match="no train text"):
    finetune.with_texts(examples, [types.SimpleNamespace(text="")], types.SimpleNamespace(encode=lambda t: []))


def test_ctc_batches_with_text_injection_carry_text_rows_and_resume_exactly():
  examples = _text_examples()
  settings = finetune.FinetuneConfig(batch_size=2, text_ctc=0.5, text_batch_size=4)
  batches = finetune.example_batches(examples, "ctc", settings)()
  first = next(batches)
  assert first["text"]["tokens"].shape == (4, 32) and first["paired"]["audio"].shape[0] == 2
  rows = {tuple(t[m > 0].tolist()) for t, m in zip(first["text"]["tokens"], first["text"]["tokens_mask"])}
  assert rows <= {tuple(t.tolist()) for t in examples.texts}
  want = [next(batches) for _ in range(5)]
  again = finetune.example_batches(examples, "ctc", settings)()
  again.set_state({"position": 1})
  for batch in want:
    got = next(again)
    np.testing.assert_array_equal(got["text"]["tokens"], batch["text"]["tokens"])
    np.testing.assert_array_equal(got["paired"]["audio"], batch["paired"]["audio"])
  # Each of two processes gets its share of both streams.
  shard = finetune.example_batches(examples, "ctc", settings)(shard_index=1, num_shards=2)
  assert shard.element_spec["text"]["tokens"].shape == (2, 32)
  assert shard.element_spec["paired"]["audio"].shape == (1, 16000)
  # Without the weight the text stays out of the batch.
  plain = finetune.example_batches(examples, "ctc", finetune.FinetuneConfig(batch_size=2))()
  assert set(next(plain)) == {"paired"}


def test_ctc_batches_carry_each_clips_and_each_texts_language():
  """The batches' "lang" is the contract's language id of each row (-1 where unknown), for the
  encoder's language vectors (MSLAMEncoder.num_languages)."""
  sr = 16000
  vocab = types.SimpleNamespace(encode=lambda text: [ord(c) - 90 for c in text])
  codes = ["afr", "eng", "xx-unknown", "swa"]
  utterances = [types.SimpleNamespace(text="ab", lang=code, audio=np.ones(sr // 2, np.float32) * i)
                for i, code in enumerate(codes)]
  examples = finetune.ctc_examples(utterances, vocab, max_audio_seconds=1.0)
  ids = [finetune.language_id(code) for code in codes]
  assert examples.langs == ids and ids[2] == -1 and len(set(ids)) == 4
  examples = finetune.with_texts(examples, utterances, vocab)
  settings = finetune.FinetuneConfig(batch_size=2, text_ctc=0.5, text_batch_size=2)
  batches = finetune.example_batches(examples, "ctc", settings)()
  for _ in range(5):
    batch = next(batches)
    # Each clip's audio is its index times one: its row says which example it is.
    rows = batch["paired"]["audio"][:, 0].astype(int)
    np.testing.assert_array_equal(batch["paired"]["lang"], [ids[i] for i in rows])
    assert set(batch["text"]["lang"].tolist()) <= set(ids)
