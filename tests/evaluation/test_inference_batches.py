"""The batches a model runs on at inference: the evaluators pad every call to one batch size (one
program shared by every pool), the commands (`fit_small_calls`) pad a few clips only to the power
of two at or above their count, with the same results."""
import jax
import numpy as np
import pytest

from mslam_jax.data import vocabularies
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import finetune
from tests.evaluation import synthetic


@pytest.mark.parametrize("count,batch_size,smallest,rows", [
    (1, 16, 1, 1), (2, 16, 1, 2), (3, 16, 1, 4), (5, 16, 1, 8), (9, 16, 1, 16), (40, 16, 1, 16),
    (3, 1024, 8, 8), (9, 1024, 8, 16), (1000, 1024, 8, 1024)])
def test_batch_rows_is_the_power_of_two_at_or_above_the_count_within_the_batch(count, batch_size, smallest, rows):
  assert eval_data.batch_rows(count, batch_size, smallest) == rows


def _clips(count, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(int(rng.integers(8000, 30000))).astype(np.float32) for _ in range(count)]


def _recording(fn, rows):
  def recorded(params, x, mask, *rest):
    rows.append(x.shape[0])
    return fn(params, x, mask, *rest)
  return recorded


@pytest.fixture(scope="module")
def model_and_params():
  model = synthetic.SpectralModel(dim=16, vocab_size=12, num_layers=1)
  return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize("count,rows", [(1, [1]), (5, [8]), (20, [16, 16])])
def test_a_commands_encoder_pads_a_few_clips_to_their_count_with_the_same_embeddings(model_and_params, count, rows):
  model, params = model_and_params
  clips = _clips(count)
  tokens = [[1 + i % 10] * (3 + i) for i in range(count)]
  padded, fitted = eval_data.Encoder(model, params), eval_data.Encoder(model, params, fit_small_calls=True)
  seen = {"padded": [], "fitted": []}
  padded._speech = _recording(padded._speech, seen["padded"])  # pylint: disable=protected-access
  fitted._speech = _recording(fitted._speech, seen["fitted"])  # pylint: disable=protected-access
  (want, want_frames), (got, got_frames) = padded.speech(clips, frames=True), fitted.speech(clips, frames=True)
  assert seen == {"padded": [16] * len(rows), "fitted": rows}  # one length bucket here
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for a, b in zip(got_frames, want_frames):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fitted.text(tokens), padded.text(tokens), rtol=1e-5, atol=1e-6)


def test_a_commands_ctc_model_decodes_one_clip_alone_and_a_list_on_one_shape(model_and_params):
  model, params = model_and_params
  vocab = vocabularies.CharacterVocabulary.build(["abcdefgh"])
  rng = np.random.default_rng(1)
  head = {"kernel": rng.standard_normal((16, vocab.vocab_size)).astype(np.float32),
          "bias": np.zeros(vocab.vocab_size, np.float32)}
  padded = finetune.FinetunedCTC(model, {"encoder": params, "head": head}, vocab, batch_size=8)
  fitted = finetune.FinetunedCTC(model, {"encoder": params, "head": head}, vocab, batch_size=8, fit_small_calls=True)
  seen = {"padded": [], "fitted": []}
  padded._log_probs = _recording(padded._log_probs, seen["padded"])  # pylint: disable=protected-access
  fitted._log_probs = _recording(fitted._log_probs, seen["fitted"])  # pylint: disable=protected-access
  clip = _clips(1, seed=2)
  want, got = padded.log_probs(clip), fitted.log_probs(clip)
  assert seen == {"padded": [8], "fitted": [1]}
  assert got[0].shape == want[0].shape and got[0].shape[0] > 0
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
  # Transcribing a list in chunks: every chunk on the whole list's rows, the last one too.
  for clips, rows in ((_clips(3, seed=3), [4]), (_clips(10, seed=3), [8, 8])):
    seen["fitted"].clear()
    for _ in fitted.transcriptions(clips):
      pass
    assert seen["fitted"] == rows
