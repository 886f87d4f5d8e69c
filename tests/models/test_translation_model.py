"""The translation decoder, its searches and loss, and TranslationModel trained through trainer.Trainer."""
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.core import meta

from mslam_jax import config
from mslam_jax import optimizers
from mslam_jax import partitioning
from mslam_jax import trainer as trainer_lib
from mslam_jax.data.vocabularies import EOS_ID, PAD_ID
from mslam_jax.models import decoder as decoder_lib
from mslam_jax.models import search
from mslam_jax.models import translation

VOCAB = 24
TINY_ENCODER = ["NUM_SPEECH_LAYERS = 1", "NUM_SHARED_LAYERS = 1", "EMBED_DIM = 32", "MLP_DIM = 64",
                "NUM_HEADS = 2", f"VOCAB_SIZE = {VOCAB}", "CONV_NORM_GROUPS = 4", "FRONTEND_CHANNELS = 4"]


def _tiny_decoder(**kwargs):
  settings = dict(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, dropout_rate=0.0)
  settings.update(kwargs)
  return decoder_lib.TransformerDecoder(**settings)


@pytest.mark.parametrize("tied", [True, False])
def test_decoder_is_causal(tied):
  dec = _tiny_decoder(tie_embedding=tied)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(5, VOCAB, (2, 9)), jnp.int32)
  encoded = jnp.asarray(rng.standard_normal((2, 7, 48)), jnp.float32)  # another width: projected
  mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)
  params = dec.init(jax.random.PRNGKey(0), inputs, encoded, mask)
  base = dec.apply(params, inputs, encoded, mask)
  changed = dec.apply(params, inputs.at[:, 5].set((inputs[:, 5] + 1 - 5) % (VOCAB - 5) + 5), encoded, mask)
  np.testing.assert_allclose(changed[:, :5], base[:, :5], atol=1e-6)
  assert np.abs(np.asarray(changed[:, 5:] - base[:, 5:])).max() > 1e-3  # the future does change
  # Padded encoder frames are never attended.
  noisy = encoded.at[1, 4:].set(100.0)
  np.testing.assert_allclose(dec.apply(params, inputs, noisy, mask)[1], base[1], atol=1e-5)


def _random_logits_fn(seed: int, vocab: int = 7, max_length: int = 6):
  """A next-token distribution that depends on the whole prefix (a position-weighted bag of tokens)."""
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.standard_normal((vocab, vocab)) * 2.0, jnp.float32)
  position = jnp.asarray(rng.standard_normal((max_length + 1, vocab)), jnp.float32)

  def logits_fn(tokens, t):
    valid = (jnp.arange(tokens.shape[1]) <= t).astype(jnp.float32)
    weights = valid / (1.0 + jnp.arange(tokens.shape[1]))
    return jnp.einsum("nl,nlv->nv", jnp.broadcast_to(weights, tokens.shape), table[tokens]) + position[t]
  return logits_fn


def _sequence_logp(logits_fn, tokens, max_length):
  """log p of each row's tokens up to and including its first EOS (or all of them)."""
  buffer = jnp.concatenate([jnp.zeros((tokens.shape[0], 1), jnp.int32), tokens], axis=1)
  total = np.zeros(tokens.shape[0])
  for t in range(max_length):
    lp = np.asarray(jax.nn.log_softmax(logits_fn(buffer, t)))
    for i in range(tokens.shape[0]):
      if t == 0 or EOS_ID not in np.asarray(tokens[i, :t]):
        total[i] += lp[i, int(tokens[i, t])]
  return total


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_beam_of_one_is_greedy(seed):
  fn, max_length = _random_logits_fn(seed), 6
  greedy, greedy_score = jax.jit(lambda: search.greedy_search(fn, 3, max_length, EOS_ID))()
  beam, beam_score = jax.jit(lambda: search.beam_search(fn, 3, 1, max_length, EOS_ID, alpha=0.0))()
  np.testing.assert_array_equal(beam[:, 0], greedy)
  np.testing.assert_allclose(beam_score[:, 0], greedy_score, rtol=1e-5)
  np.testing.assert_allclose(greedy_score, _sequence_logp(fn, greedy, max_length), rtol=1e-5)


def test_beam_search_beats_greedy_on_a_garden_path():
  """First token: A (0.6) or B (0.4). After A every continuation is unlikely (max 0.2, then EOS);
  after B, EOS has 0.99. Greedy takes A; beam search keeps B and finds B EOS."""
  a, b, vocab = 5, 6, 8

  def logits_fn(tokens, t):
    first = tokens[:, 1]
    start = jnp.log(jnp.asarray([1e-6] * 5 + [0.6, 0.4, 1e-6]))
    after_a = jnp.log(jnp.asarray([1e-6, 0.2, 0.16, 0.16, 0.16, 0.16, 0.16, 1e-6]))
    after_b = jnp.log(jnp.asarray([1e-6, 0.99] + [1e-3] * 6))
    later = jnp.log(jnp.asarray([1e-6, 0.9] + [0.1 / 6] * 6))
    row = jnp.where((first == a)[:, None], after_a, after_b)
    return jnp.where(t == 0, start, jnp.where(t == 1, row, later))

  greedy, greedy_score = search.greedy_search(logits_fn, 1, 4, EOS_ID)
  beam, beam_score = search.beam_search(logits_fn, 1, 2, 4, EOS_ID, alpha=0.0)
  assert greedy[0, 0] == a and beam[0, 0, 0] == b and beam[0, 0, 1] == EOS_ID
  assert list(np.asarray(beam[0, 0, 2:])) == [PAD_ID, PAD_ID]
  assert float(beam_score[0, 0]) > float(greedy_score[0]) + 0.5
  expected = (jax.nn.log_softmax(logits_fn(jnp.zeros((1, 5), jnp.int32), 0))[0, b]
              + jax.nn.log_softmax(logits_fn(jnp.asarray([[0, b, 0, 0, 0]]), 1))[0, EOS_ID])
  np.testing.assert_allclose(beam_score[0, 0], expected, rtol=1e-5)
  assert float(beam_score[0, 0]) >= float(beam_score[0, 1])  # best first


def test_length_penalty_is_gnmt():
  np.testing.assert_allclose(search.length_penalty(7, 0.6), (12 / 6) ** 0.6, rtol=1e-6)
  np.testing.assert_allclose(search.length_penalty(7, 0.0), 1.0)


def test_label_smoothed_loss_by_hand():
  # probabilities [1/4, 1/4, 1/2]; label 2, smoothing 0.3: target [0.1, 0.1, 0.8]
  # smoothed CE = 0.1 ln 4 + 0.1 ln 4 + 0.8 ln 2 = 1.2 ln 2; NLL = ln 2. The padded row must not count.
  logits = jnp.asarray([[[0.0, 0.0, math.log(2.0)], [9.0, -3.0, 1.0]]])
  targets = jnp.asarray([[2, 1]])
  mask = jnp.asarray([[1, 0]])
  smoothed, nll, accuracy = translation.smoothed_cross_entropy(logits, targets, mask, 0.3)
  np.testing.assert_allclose(smoothed, 1.2 * math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(nll, math.log(2.0), rtol=1e-6)
  assert float(accuracy) == 1.0


@pytest.fixture(scope="module")
def tiny_model():
  config.parse_gin(["models/tiny.gin"], TINY_ENCODER)
  try:
    model = translation.TranslationModel(
        decoder=_tiny_decoder(vocab_size=1), label_smoothing=0.1, max_decode_length=8,
        stream_weights={"text": 0.5})
  finally:
    gin.clear_config()
  return model


def _fixed_batch():
  """Two clips (different tones) and two texts, each with its own target sentence."""
  t = np.arange(6400) / 16000.0
  audio = np.stack([0.4 * np.sin(2 * np.pi * 220 * t), 0.4 * np.sign(np.sin(2 * np.pi * 700 * t))]).astype(np.float32)
  audio_mask = np.ones(audio.shape, np.int32)
  audio_mask[1, 4800:] = 0
  audio[1, 4800:] = 0.0
  targets = np.zeros((2, 8), np.int32)
  targets[0, :4] = [7, 9, 11, EOS_ID]
  targets[1, :6] = [12, 8, 8, 20, 6, EOS_ID]
  tokens = np.zeros((2, 6), np.int32)
  tokens[0, :3], tokens[1, :5] = [15, 16, 17], [18, 19, 20, 21, 22]
  lang = np.zeros((2,), np.int32)
  return {"speech": {"audio": audio, "audio_mask": audio_mask, "targets": targets,
                     "targets_mask": (targets != 0).astype(np.int32), "lang": lang},
          "text": {"tokens": tokens, "tokens_mask": (tokens != 0).astype(np.int32), "targets": targets[::-1].copy(),
                   "targets_mask": (targets[::-1] != 0).astype(np.int32), "lang": lang}}


def test_validation_names_the_setting(tiny_model):
  with pytest.raises(ValueError, match="label_smoothing"):
    translation.TranslationModel(encoder=tiny_model.encoder, decoder=_tiny_decoder(), label_smoothing=1.0)
  with pytest.raises(ValueError, match="stream_weights"):
    translation.TranslationModel(encoder=tiny_model.encoder, decoder=_tiny_decoder(), stream_weights={"paired": 1})
  with pytest.raises(ValueError, match="num_heads"):
    translation.TranslationModel(encoder=tiny_model.encoder, decoder=_tiny_decoder(num_heads=3))


def test_the_trainer_takes_the_model_as_it_is(tiny_model):
  """Trainer builds the sharded abstract state from the model's init (the step itself runs in the
  slow test below): parameters under encoder/ and decoder/, with their logical axes."""
  mesh = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = optimizers.Optimizer(tx=optax.adam(1e-3), schedule=lambda step: jnp.float32(1e-3), name="adam")
  trainer = trainer_lib.Trainer(tiny_model, optimizer, mesh, _fixed_batch())
  assert set(trainer.abstract_state.params) == {"encoder", "decoder"}
  specs = trainer.state_logical_specs.params["decoder"]
  assert tuple(specs["token_embedding"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["layers_0"]["cross_attention"]["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
  assert trainer.abstract_state.params["decoder"]["token_embedding"]["embedding"].shape == (VOCAB, 32)


@pytest.mark.slow  # about a minute on 2 CPU cores, nearly all of it compiling the joint step
def test_overfits_a_fixed_batch_through_the_trainer(tiny_model):
  """trainer.Trainer runs the model as it runs MSLAMModel; 60 steps on one batch memorise it."""
  model = tiny_model
  assert model.decoder.vocab_size == VOCAB  # taken from the encoder
  batch = _fixed_batch()
  mesh = partitioning.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  optimizer = optimizers.Optimizer(tx=optax.adam(3e-3), schedule=lambda step: jnp.float32(3e-3), name="adam")
  trainer = trainer_lib.Trainer(model, optimizer, mesh, batch)
  state = trainer.init_state()
  assert set(state.params) == {"encoder", "decoder"}
  losses = []
  for _ in range(60):
    state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert {"speech/loss", "text/loss", "objective/speech_translation", "objective/text_translation"} <= set(metrics)
  np.testing.assert_allclose(metrics["objective/text_translation"], 0.5 * metrics["text/loss"], rtol=1e-5)
  assert losses[-1] < 0.3 * losses[0], losses[::10]
  assert float(metrics["speech/token_accuracy"]) == 1.0 and float(metrics["text/token_accuracy"]) == 1.0
  params = jax.device_get(state.params)
  for beam in (1, 3):
    tokens = model.translate_speech(params, batch["speech"]["audio"], batch["speech"]["audio_mask"], beam_size=beam)
    np.testing.assert_array_equal(np.asarray(tokens), batch["speech"]["targets"])
  tokens = model.translate_text(params, batch["text"]["tokens"], batch["text"]["tokens_mask"])
  np.testing.assert_array_equal(np.asarray(tokens), batch["text"]["targets"])


def test_with_encoder_checks_the_structure(tiny_model):
  # The structure is what counts: the init's shapes, filled with ones (no init program to compile).
  shapes = meta.unbox(jax.eval_shape(tiny_model.init, jax.random.PRNGKey(0), tiny_model.dummy_batch(1)))
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
  swapped = translation.with_encoder(params, jax.tree.map(jnp.zeros_like, params["encoder"]))
  assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(swapped["encoder"]))
  assert swapped["decoder"] is params["decoder"]
  with pytest.raises(ValueError, match="encoder"):
    translation.with_encoder(params, {"frontend": params["encoder"]["frontend"]})


def test_gin_builds_the_model_from_the_experiment_config():
  """experiments/translation.gin + a size file: what a fine-tuning run's `train.model` builds."""
  from mslam_jax.models import model_info  # pylint: disable=g-import-not-at-top
  config.import_configurables()  # `train`, which the run config binds
  config.parse_gin(["models/tiny.gin", "experiments/translation.gin"],
                   ["train.model = @TranslationModel()", "DECODER_EMBED_DIM = 48", "DECODER_LAYERS = 1",
                    "DECODER_HEADS = 4", "DECODER_MLP_DIM = 96", "TranslationModel.stream_weights = {'text': 0.3}"])
  try:
    model = config.build_model()
    info = model_info.model_info(model, depth=1)
  finally:
    gin.clear_config()
  assert isinstance(model, translation.TranslationModel)
  assert (model.decoder.embed_dim, model.decoder.num_layers, model.decoder.vocab_size) == (48, 1, 4096)
  assert model.stream_weights == {"speech": 1.0, "text": 0.3}
  # One layer: self- and cross-attention (4 projections of 48x48 + biases), MLP 48->96->48, 3 norms;
  # the tied 4096x48 embedding, the final norm, the 64->48 encoder projection.
  attention_params = 2 * 4 * (48 * 48 + 48)
  layer = attention_params + (48 * 96 + 96) + (96 * 48 + 48) + 3 * 2 * 48
  assert info["components"]["decoder"] == layer + 4096 * 48 + 2 * 48 + (64 * 48 + 48)
