"""The step's batched CTC forced alignment (models/ctc_alignment.py) against the evaluation's
one-utterance Viterbi, and the character each frame holds."""
import jax
import jax.numpy as jnp
import numpy as np

from mslam_jax.evaluation import alignment
from mslam_jax.models import ctc_alignment

BLANK = 4


def test_batched_viterbi_takes_the_evaluations_path_on_every_utterance():
  rng = np.random.default_rng(0)
  batch, frames, vocab, length = 8, 24, 11, 9
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(3.0 * rng.normal(size=(batch, frames, vocab))), -1))
  labels = rng.integers(BLANK + 1, vocab, size=(batch, length))
  labels[0, 3] = labels[0, 2]  # a doubled letter needs a blank between its two frames
  labels[1, 1:4] = labels[1, 0]
  label_lengths = np.array([9, 4, 1, 7, 5, 3, 9, 2])
  frame_lengths = np.array([24, 12, 3, 23, 9, 24, 18, 2])  # the last: exactly as many frames as labels
  label_mask = (np.arange(length)[None] < label_lengths[:, None]).astype(np.int32)
  frame_mask = (np.arange(frames)[None] < frame_lengths[:, None]).astype(np.int32)
  states = np.asarray(jax.jit(ctc_alignment.viterbi_states, static_argnums=4)(
      log_probs, frame_mask, labels, label_mask, BLANK))
  for b in range(batch):
    valid = states[b, :frame_lengths[b]]
    expected = alignment.viterbi_align(log_probs[b, :frame_lengths[b]], labels[b, :label_lengths[b]], BLANK)
    np.testing.assert_array_equal(np.where(valid % 2 == 1, valid // 2, -1), expected, err_msg=f"utterance {b}")
    # Past the end a frame repeats the last state: the path never wanders into padding labels.
    assert (states[b, frame_lengths[b]:] == valid[-1]).all()
    assert valid.max() <= 2 * label_lengths[b]


def test_blank_frames_hold_the_character_before_them():
  # States of "ab" over 7 frames: blank, a, a, blank, b, blank, blank.
  states = jnp.asarray([[0, 1, 1, 2, 3, 4, 4]])
  held = ctc_alignment.held_characters(states, jnp.asarray([[7, 9]]))
  np.testing.assert_array_equal(np.asarray(held), [[7, 7, 7, 7, 9, 9, 9]])
