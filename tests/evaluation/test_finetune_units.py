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
