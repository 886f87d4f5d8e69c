"""What makes pre-training learn and what shows it: objective schedules, collapse measures, the
cross-modal embedding heads, per-objective gradient norms, the corpus-sized vocabulary."""
import functools

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mslam_jax import config
from mslam_jax import optimizers
from mslam_jax import partitioning
from mslam_jax import trainer as trainer_lib
from mslam_jax.data import languages
from mslam_jax.data import vocabularies
from mslam_jax.models import heads
from mslam_jax.models import losses
from mslam_jax.models import mslam
from tests.models import test_mslam


def test_schedule_ramps_each_named_objective_and_leaves_the_others_on():
  schedule = mslam.ObjectiveSchedule(start={"ctc": 100, "cross_modal": 50}, ramp={"ctc": 100})
  ctc = [float(schedule.factor("ctc", s)) for s in (0, 100, 150, 200, 500)]
  assert ctc == [0.0, 0.0, 0.5, 1.0, 1.0]
  assert [float(schedule.factor("cross_modal", s)) for s in (49, 50)] == [0.0, 1.0]
  assert float(schedule.factor("speech_mlm", 0)) == 1.0
  with pytest.raises(ValueError, match="ObjectiveSchedule.start names 'ctcc'"):
    mslam.ObjectiveSchedule(start={"ctcc": 1}).validate()


def test_mean_pairwise_cosine_sees_collapse_and_ignores_padding():
  same = jnp.ones((2, 5, 8))
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  assert float(mslam.mean_pairwise_cosine(same, mask)) == pytest.approx(1.0, abs=1e-5)
  eye = jnp.broadcast_to(jnp.eye(5, 8), (2, 5, 8))
  assert float(mslam.mean_pairwise_cosine(eye, mask)) == pytest.approx(0.0, abs=1e-6)
  # Padding rows that would collapse the figure are not counted.
  padded = jnp.concatenate([jnp.eye(3, 8), jnp.ones((2, 8))], axis=0)[None]
  assert float(mslam.mean_pairwise_cosine(padded, mask[:1])) == pytest.approx(0.0, abs=1e-6)


def test_corpus_vocab_size_rounds_up_and_caps(tmp_path):
  vocabularies.CharacterVocabulary.build(["abcdefghij"]).save(str(tmp_path / "vocab"))
  assert vocabularies.corpus_vocab_size(str(tmp_path)) == 128
  assert vocabularies.corpus_vocab_size(str(tmp_path), multiple=8) == 16
  assert vocabularies.corpus_vocab_size(None) == vocabularies.MAX_SIZE
  with pytest.raises(ValueError, match="more than corpus_vocab_size.max_size"):
    vocabularies.corpus_vocab_size(str(tmp_path), max_size=8)


@pytest.fixture(scope="module")
def scheduled_model():
  config.parse_gin(["models/tiny.gin", "experiments/mslam_ctc_xmodal.gin"],
                   test_mslam.TINY_BINDINGS + ["MSLAMModel.cross_modal_dim = 16",
                                               "ObjectiveSchedule.start = {'ctc': 10}"])
  yield mslam.MSLAMModel()
  gin.clear_config()


@pytest.mark.slow  # compiles the step and the per-objective jacobian of the joint loss (~35 s)
def test_health_metrics_embedding_heads_and_objective_gradients(scheduled_model):
  model, batch = scheduled_model, test_mslam._fixed_batch()
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, optimizers.make_optimizer(peak_learning_rate=1e-3, warmup_steps=1),
                                mesh, batch)
  state = trainer.init_state()
  _, metrics = trainer.train_step(state, batch)
  metrics = jax.device_get(metrics)
  for key in ("health/frame_cosine", "health/utterance_cosine", "health/ctc_blank_share"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert metrics["weight/ctc"] == 0.0  # not started yet
  objectives = {k: v for k, v in metrics.items() if k.startswith("objective/")}
  assert metrics["loss"] == pytest.approx(sum(objectives.values()), rel=1e-5)

  params = trainer.init_state().params
  _, _, embedding = jax.eval_shape(model.embed_speech, params, batch["speech"]["audio"], batch["speech"]["audio_mask"])
  _, _, pooled = jax.eval_shape(model.encode_speech, params, batch["speech"]["audio"], batch["speech"]["audio_mask"])
  assert embedding.shape == (2, 16) and pooled.shape == (2, 32)

  norms = jax.device_get(trainer.objective_grad_norms(
      trainer.init_state(), batch, params_under=("encoder/shared", "encoder/speech_lower")))
  # The contrastive loss sits on the speech-only layers: nothing of it reaches the shared ones;
  # masked prediction, text MLM and the cross-modal term do. CTC is scheduled off at step 0.
  assert norms["grad_norm/encoder/shared/speech_contrastive"] == 0.0
  assert norms["grad_norm/encoder/shared/ctc"] == 0.0
  for name in ("speech_mlm", "text_mlm", "cross_modal", "tlm"):
    assert norms[f"grad_norm/encoder/shared/{name}"] > 0.0, name
  assert norms["grad_norm/encoder/speech_lower/speech_contrastive"] > 0.0


def test_frame_embedding_head_weighs_each_frame_and_ignores_padding():
  head = heads.EmbeddingHead(features=4, frame_hidden=8)
  spread = jnp.array([[[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5], [9.0, 9.0, 9.0]]])  # mean of the valid two: 0
  mask = jnp.array([[1, 1, 0]])
  params = head.init(jax.random.PRNGKey(0), spread, mask)
  embed = lambda frames, m: np.asarray(head.apply(params, frames, m))  # pylint: disable=unnecessary-lambda-assignment
  # The padded frame changes nothing; two utterances with the same mean frame differ, which no
  # head on the mean-pooled vector can tell apart.
  np.testing.assert_allclose(embed(spread, mask), embed(spread.at[0, 2].set(-7.0), mask), rtol=1e-6)
  assert np.abs(embed(spread, mask) - embed(jnp.zeros_like(spread), mask)).max() > 1e-3
  with pytest.raises(ValueError, match="takes frames"):
    head.apply(params, spread[:, 0])


def _model(bindings):
  """The tiny joint model (models/tiny.gin, experiments/mslam_ctc_xmodal.gin) under `bindings`."""
  config.parse_gin(["models/tiny.gin", "experiments/mslam_ctc_xmodal.gin"], bindings)
  try:
    return mslam.MSLAMModel()
  finally:
    gin.clear_config()


def _objective(model, batch, name: str, step: int = 0):
  """(metrics, objective, gradient) of `model.loss_fn` on `batch`: its metrics, objective/<name>
  of them and that objective's gradient. Two programs, each compiled at its first call (op by op,
  the tiny model's loss takes longer than its compile): every metric, for the tests that read them,
  and the objective with its gradient, which the others need alone."""
  loss_metrics = lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1), step)[1]  # pylint: disable=unnecessary-lambda-assignment
  value_and_grad = jax.jit(jax.value_and_grad(lambda p: loss_metrics(p)[f"objective/{name}"]))
  return jax.jit(loss_metrics), lambda p: value_and_grad(p)[0], lambda p: value_and_grad(p)[1]


def _norm(tree) -> float:
  """The tree's global norm, on the host: eagerly, optax.global_norm compiles a program for each
  leaf shape (about a hundred a test, 4-5 s)."""
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(leaf, np.float64))) for leaf in jax.tree.leaves(tree))))


def _after_adam_steps(objective, grad, params, steps: int, peak_learning_rate: float) -> float:
  """`objective`'s value after `steps` Adam steps on it alone (its jitted `grad`) from `params`."""
  optimizer = optimizers.make_optimizer(peak_learning_rate=peak_learning_rate, warmup_steps=1).tx

  @jax.jit
  def update(p, opt_state, g):
    updates, opt_state = optimizer.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state

  opt_state = jax.jit(optimizer.init)(params)  # one program, not one per leaf shape
  for _ in range(steps):
    params, opt_state = update(params, opt_state, grad(params))
  return float(objective(params))


def test_segments_need_the_frame_heads():
  with pytest.raises(ValueError, match="needs MSLAMModel.cross_modal_frame_hidden > 0"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMModel.cross_modal_segments = 4"])


def test_frame_embedding_head_scores_retrieval_as_training_does():
  model = _model(test_mslam.TINY_BINDINGS + ["MSLAMModel.cross_modal_dim = 16",
                                             "MSLAMModel.cross_modal_frame_hidden = 24",
                                             "MSLAMModel.cross_modal_segments = 3"])
  batch = test_mslam._fixed_batch()  # pylint: disable=protected-access
  params = model.init(jax.random.PRNGKey(0), batch)
  assert params["speech_embedding_head"]["frame_hidden"]["dense"]["kernel"].value.shape == (32, 24)
  assert params["speech_embedding_head"]["proj"]["dense"]["kernel"].value.shape == (3 * 24, 16)
  def run(params, batch):
    paired = batch["paired"]
    return (model.loss_fn(params, batch, jax.random.PRNGKey(1), 0)[1],
            model.embed_speech(params, paired["audio"], paired["audio_mask"])[2],
            model.embed_text(params, paired["tokens"], paired["tokens_mask"])[2])

  metrics, speech, text = test_mslam._fast_jit(run, params, batch)(params, batch)  # pylint: disable=protected-access
  # The evaluators' embeddings are the ones the training loss contrasts.
  loss, _ = losses.symmetric_infonce(speech, text, jnp.ones(speech.shape[0], bool),
                                     float(metrics["paired/cross_modal_temperature"]))
  assert float(loss) == pytest.approx(float(metrics["paired/cross_modal_loss"]), rel=1e-5)


LOCAL_BINDINGS = test_mslam.TINY_BINDINGS + [
    "MSLAMModel.cross_modal_dim = 16", "MSLAMModel.cross_modal_frame_hidden = 24", "MSLAMModel.cross_modal_segments = 3",
    "ObjectiveWeights.local_cross_modal = 1.0"]


def test_local_cross_modal_term_needs_segmented_frame_heads():
  with pytest.raises(ValueError, match="needs ObjectiveWeights.cross_modal > 0, MSLAMModel.cross_modal_frame_hidden"):
    _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.local_cross_modal = 1.0"])
  with pytest.raises(ValueError, match="with_local=True"):
    heads.EmbeddingHead(features=4, frame_hidden=8, segments=2).init(
        jax.random.PRNGKey(0), jnp.ones((1, 4, 3)), jnp.ones((1, 4)), with_local=True)


@pytest.mark.slow  # compiles the joint loss's gradient (~30 s)
def test_local_cross_modal_term_matches_stretches_and_learns():
  model, batch = _model(LOCAL_BINDINGS), test_mslam._fixed_batch()  # pylint: disable=protected-access
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  assert params["text_embedding_head"]["local_proj"]["dense"]["kernel"].shape == (24, 16)
  _, local, grad = _objective(model, batch, "local_cross_modal")
  first = grad(params)
  # The stretches are matched by what the shared layers make of the clip and of its transcript.
  for outer, inner in (("encoder", "shared"), ("speech_embedding_head", "local_proj"),
                       ("text_embedding_head", "local_proj")):
    assert _norm(first[outer][inner]) > 0.0, (outer, inner)
  chance = np.log(2 * 3)  # 2 pairs x 3 stretches: every stretch of the batch is a candidate
  start = float(local(params))
  assert _after_adam_steps(local, grad, params, 30, 3e-3) < 0.5 * min(start, chance), start


def test_text_ctc_needs_two_frames_a_character():
  with pytest.raises(ValueError, match="text_ctc_upsample=1 must be >= 2"):
    _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.text_ctc = 1.0", "MSLAMModel.text_ctc_upsample = 1"])


def _objective_and_its_gradient(model, batch, name: str):
  """(params at init, `_objective`'s metrics, objective and gradient, the gradient at init)."""
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  metrics, objective, grad = _objective(model, batch, name)
  return params, metrics, objective, grad, grad(params)


def _assert_reaches(grads, reached=(), untouched=()):
  """Which parameter subtrees ("ctc_head", "encoder/shared") a gradient reaches and which not."""
  norm = lambda path: _norm(functools.reduce(lambda t, k: t[k], path.split("/"), grads))
  for path in reached:
    assert norm(path) > 0.0, path
  for path in untouched:
    assert norm(path) == 0.0, path


@pytest.mark.slow  # compiles the joint loss's gradient (~30 s)
def test_text_ctc_trains_the_speech_ctc_head_from_text_alone_and_learns():
  model, batch = _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.text_ctc = 1.0"]), test_mslam._fixed_batch()  # pylint: disable=protected-access
  params, metrics_of, text_ctc, grad, first = _objective_and_its_gradient(model, batch, "text_ctc")
  # Text reaches the head speech CTC uses, through the text embedding and the shared layers; the
  # speech-only layers never see it.
  _assert_reaches(first, ("ctc_head", "encoder/shared", "encoder/text_embedding"), ("encoder/speech_lower",))
  # The paired stream's CTC is the same head's: the text term is an addition, not a second head.
  metrics = metrics_of(params)
  assert {"text/ctc_loss", "paired/ctc_loss"} <= set(metrics) and float(metrics["text/ctc_infeasible"]) == 0.0

  start = float(text_ctc(params))
  # 40 steps: CTC's all-blank plateau comes first.
  assert _after_adam_steps(text_ctc, grad, params, 40, 1e-2) < 0.5 * start, start


def test_text_ctc_languages_must_be_known():
  with pytest.raises(ValueError, match=r"text_ctc_languages=\['afr', 'xx1'\].*xx1"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMModel.text_ctc_languages = ('afr', 'xx1')"])


@pytest.mark.slow  # compiles the joint loss three times (~25 s)
def test_text_ctc_scores_only_the_text_of_the_languages_it_names():
  batch = test_mslam._fixed_batch()  # pylint: disable=protected-access
  first, second = (languages.all_languages()[int(i)].code for i in batch["text"]["lang"])
  per_char = {}
  for names in ((), (first,), (second,)):
    model = _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.text_ctc = 1.0",
                                               f"MSLAMModel.text_ctc_languages = {names!r}"])
    params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
    per_char[names] = float(_objective(model, batch, "text_ctc")[0](params)["text/ctc_loss"])
  # Per character: the two rows' loss is the character-weighted mean of each row's alone (16 and
  # 11 characters), so naming one language leaves exactly the other row out.
  counts = [int(n) for n in batch["text"]["tokens_mask"].sum(axis=1)]
  assert per_char[(first,)] != pytest.approx(per_char[(second,)], rel=1e-3)
  assert per_char[()] == pytest.approx(
      (counts[0] * per_char[(first,)] + counts[1] * per_char[(second,)]) / sum(counts), rel=1e-5)


@pytest.mark.slow  # compiles the fine-tuning loss's gradient (~20 s)
def test_ctc_finetuning_with_text_injection_trains_the_text_path_into_the_same_head():
  from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  model, batch = _model(test_mslam.TINY_BINDINGS), test_mslam._fixed_batch()  # pylint: disable=protected-access
  task = finetune.CTCTask(model, num_classes=test_mslam.VOCAB, text_weight=0.5)
  params = flax.core.meta.unbox(task.init(jax.random.PRNGKey(0), None))
  task_batch = {"paired": batch["paired"], "text": batch["text"]}
  (loss, metrics), grads = jax.jit(jax.value_and_grad(lambda p: task.loss_fn(p, task_batch, jax.random.PRNGKey(1), 0),
                                                      has_aux=True))(params)
  assert float(loss) == pytest.approx(float(metrics["ctc_loss_per_char"] + 0.5 * metrics["text_ctc_loss_per_char"]),
                                      rel=1e-5)
  assert float(metrics["text_ctc_infeasible"]) == 0.0
  assert _norm(grads["encoder"]["encoder"]["text_embedding"]) > 0.0
  # Without text in the batch (or at weight 0) it is the speech loss alone: the text path gets nothing.
  speech_only = jax.jit(jax.grad(
      lambda p: task.loss_fn(p, {"paired": batch["paired"]}, jax.random.PRNGKey(1), 0)[0]))(params)
  assert _norm(speech_only["encoder"]["encoder"]["text_embedding"]) == 0.0


def test_consistency_needs_ctc_and_a_known_layer():
  with pytest.raises(ValueError, match="needs ObjectiveWeights.ctc > 0"):
    _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.consistency = 1.0", "ObjectiveWeights.ctc = 0.0"])
  with pytest.raises(ValueError, match="consistency_layer='middle'"):
    _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.consistency = 1.0", "MSLAMModel.consistency_layer = 'middle'"])


@pytest.mark.slow  # compiles the joint loss's gradient twice (~40 s)
# A character's embedding is one vector for all its frames: at the input it can reach only their
# mean (2.11 -> 1.73 in 30 steps here); through the shared stack context lets it go further.
@pytest.mark.parametrize("layer, trained, drop", [("input", {"text_embedding"}, 0.9),
                                                  ("output", {"text_embedding", "shared"}, 0.5)])
def test_consistency_moves_only_the_text_path_toward_the_speech_and_learns(layer, trained, drop):
  model = _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.consistency = 1.0",
                                             f"MSLAMModel.consistency_layer = '{layer}'"])
  batch = test_mslam._fixed_batch()  # pylint: disable=protected-access
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  _, consistency, grad = _objective(model, batch, "consistency")
  first = grad(params)
  # The speech frames are targets: the speech path, the CTC head that aligns and the frontend get
  # nothing; the text path (and the shared stack, where it compares outputs) learns.
  norms = {name: _norm(tree) for name, tree in first["encoder"].items()}
  assert {name for name, norm in norms.items() if norm > 0} == trained, norms
  assert _norm(first["ctc_head"]) == 0.0

  start = float(consistency(params))
  assert _after_adam_steps(consistency, grad, params, 30, 1e-2) < drop * start, start


def test_language_vectors_need_a_valid_setting():
  with pytest.raises(ValueError, match="language_dropout"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMEncoder.num_languages = 512", "MSLAMModel.language_dropout = 1.0"])
  with pytest.raises(ValueError, match="num_languages"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMEncoder.num_languages = -1"])
  with pytest.raises(ValueError, match="below the language registry"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMEncoder.num_languages = 8"])


@pytest.mark.slow  # compiles the joint loss's gradient (~30 s)
def test_language_vectors_start_as_nothing_and_learn_from_every_stream_of_their_language():
  model = _model(test_mslam.TINY_BINDINGS + ["MSLAMEncoder.num_languages = 512", "ObjectiveWeights.text_ctc = 1.0",
                                             "MSLAMModel.language_dropout = 0.0"])
  batch = test_mslam._fixed_batch()  # pylint: disable=protected-access
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  audio, audio_mask = batch["speech"]["audio"], batch["speech"]["audio_mask"]
  encode = jax.jit(lambda p, lang: model.encode_speech(p, audio, audio_mask, lang)[0])
  known, unknown = jnp.asarray([3, 5]), jnp.asarray([-1, -1])
  # Zero at init: a pre-trained encoder without them and one with them start alike.
  np.testing.assert_array_equal(encode(params, known), encode(params, unknown))
  # Every stream's items teach their own language's row, and no other.
  for stream in ("speech", "text", "paired"):
    only = {stream: dict(batch[stream], lang=known)}
    grad = jax.jit(jax.grad(lambda p, b=only: model.loss_fn(p, b, jax.random.PRNGKey(1), 300)[0]))(params)
    rows = np.abs(np.asarray(grad["encoder"]["language_embedding"])).sum(-1)
    assert (rows[[3, 5]] > 0).all() and (np.delete(rows, [3, 5]) == 0).all(), (stream, rows)
  # Once learned, a clip's language changes its frames; an unknown one (-1) adds nothing.
  table = params["encoder"]["language_embedding"]
  learned = jax.tree.map(lambda x: x, params)
  learned["encoder"]["language_embedding"] = table.at[3].set(jax.random.normal(jax.random.PRNGKey(2), table.shape[1:]))
  assert float(jnp.abs(encode(learned, known) - encode(learned, unknown)).max()) > 1e-3
  np.testing.assert_array_equal(encode(learned, unknown), encode(params, unknown))


def _batch_with_phones(width: int = 20):
  """The fixed batch, its text rows with phones: a fixed id per character for the first row (a
  language eSpeak speaks), none for the second (a language without a voice)."""
  from mslam_jax.data import phones  # pylint: disable=g-import-not-at-top
  batch = test_mslam._fixed_batch()  # pylint: disable=protected-access
  tokens, mask = np.asarray(batch["text"]["tokens"]), np.asarray(batch["text"]["tokens_mask"])
  ids = np.zeros((tokens.shape[0], width), np.int32)
  n = int(mask[0].sum())
  ids[0, :n] = phones.WORD_BOUNDARY_ID + 1 + (tokens[0, :n] * 7) % (phones.VOCAB_SIZE - phones.WORD_BOUNDARY_ID - 1)
  batch["text"] = dict(batch["text"], phones=jnp.asarray(ids), phones_mask=jnp.asarray((ids > 0).astype(np.int32)))
  # Paired transcripts' phones: both rows.
  tokens, mask = np.asarray(batch["paired"]["tokens"]), np.asarray(batch["paired"]["tokens_mask"])
  paired_ids = np.where(mask > 0, phones.WORD_BOUNDARY_ID + 1 + (tokens * 7) % (phones.VOCAB_SIZE - phones.WORD_BOUNDARY_ID - 1), 0)
  paired_ids = np.pad(paired_ids, ((0, 0), (0, width - paired_ids.shape[1]))).astype(np.int32)
  batch["paired"] = dict(batch["paired"], phones=jnp.asarray(paired_ids),
                         phones_mask=jnp.asarray((paired_ids > 0).astype(np.int32)))
  return batch


PHONE_BINDINGS = ["ObjectiveWeights.text_ctc = 1.0", "MSLAMEncoder.phone_inputs = True",
                  "MSLAMModel.text_ctc_input = 'phones'"]


def test_phone_injection_fails_at_start_without_its_pieces():
  with pytest.raises(ValueError, match="needs MSLAMEncoder.phone_inputs = True"):
    _model(test_mslam.TINY_BINDINGS + PHONE_BINDINGS[:1] + PHONE_BINDINGS[2:])
  with pytest.raises(ValueError, match="text_ctc_input='ipa'"):
    _model(test_mslam.TINY_BINDINGS + ["MSLAMModel.text_ctc_input = 'ipa'"])
  model, batch = _model(test_mslam.TINY_BINDINGS + PHONE_BINDINGS), test_mslam._fixed_batch()  # pylint: disable=protected-access
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(0), batch))
  with pytest.raises(ValueError, match="need the text stream.s phones"):
    jax.eval_shape(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1), 0), params)


@pytest.mark.slow  # compiles the joint loss's gradient (~30 s)
def test_phone_injection_writes_characters_from_phones_and_learns():
  model, batch = _model(test_mslam.TINY_BINDINGS + PHONE_BINDINGS), _batch_with_phones()
  params, metrics_of, text_ctc, grad, first = _objective_and_its_gradient(model, batch, "text_ctc")
  # Phones reach the speech CTC head through their own embedding and the shared layers; the
  # characters' embedding and the speech-only layers get nothing from this term.
  _assert_reaches(first, ("ctc_head", "encoder/shared", "encoder/phone_embedding"),
                  ("encoder/speech_lower", "encoder/text_embedding"))
  # The row without phones scores nothing (it is not counted as infeasible either): the loss is
  # the first row's alone.
  metrics = metrics_of(params)
  assert float(metrics["text/ctc_infeasible"]) == 0.0
  only_first = {**batch, "text": {k: v[:1] for k, v in batch["text"].items()}}
  alone = _objective(model, only_first, "text_ctc")[0](params)["text/ctc_loss"]
  assert float(metrics["text/ctc_loss"]) == pytest.approx(float(alone), rel=0.2)

  start = float(text_ctc(params))
  assert _after_adam_steps(text_ctc, grad, params, 40, 1e-2) < 0.5 * start, start


@pytest.mark.slow  # compiles the joint loss's gradient (~30 s)
def test_phone_ctc_pulls_paired_speech_toward_the_phone_embedding_and_learns():
  model = _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.phone_ctc = 1.0", "MSLAMEncoder.phone_inputs = True"])
  batch = _batch_with_phones()
  params, metrics_of, phone_ctc, grad, first = _objective_and_its_gradient(model, batch, "phone_ctc")
  # The head is the phone embedding itself, read by the speech-only layers' output: the shared
  # layers and the character CTC head get nothing from it.
  _assert_reaches(first, ("encoder/phone_embedding", "encoder/speech_lower", "encoder/speech_projection"),
                  ("encoder/shared", "ctc_head"))
  metrics = metrics_of(params)
  assert float(metrics["paired/phone_ctc_infeasible"]) == 0.0 and float(metrics["count/phone_ctc"]) > 0
  start = float(phone_ctc(params))
  assert _after_adam_steps(phone_ctc, grad, params, 40, 1e-2) < 0.5 * start, start


def test_phone_ctc_needs_the_phone_embedding():
  with pytest.raises(ValueError, match="phone_ctc > 0 needs MSLAMEncoder.phone_inputs"):
    _model(test_mslam.TINY_BINDINGS + ["ObjectiveWeights.phone_ctc = 1.0"])
