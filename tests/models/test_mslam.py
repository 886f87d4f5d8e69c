"""MSLAMModel on a tiny configuration: losses at init, padding independence, training in bf16,
BEST-RQ, config validation. One jitted bf16 train step serves the init, finiteness, bf16 and
training checks (compiles are the expensive part on CPU)."""
import functools
import math

import flax
import flax.linen as nn
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
from mslam_jax.models import mslam

VOCAB = 40
CODEBOOK = 64
NEGATIVES = 100
TRAIN_STEPS = 100
# Compile the big test programs with LLVM's cheap settings: they run ~2x slower but compile ~2x
# faster, and compiling is what a CPU test pays for.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

TINY_BINDINGS = [
    "NUM_SPEECH_LAYERS = 1", "NUM_SHARED_LAYERS = 1", "EMBED_DIM = 32", "MLP_DIM = 64",
    "NUM_HEADS = 2", f"VOCAB_SIZE = {VOCAB}", f"CODEBOOK_SIZE = {CODEBOOK}", "CONV_NORM_GROUPS = 4",
    "FRONTEND_CHANNELS = 4", "MSLAMModel.contrastive_dim = 32", "MaskingConfig.text_span_length = 4",
]


@pytest.fixture(scope="module")
def gin_tiny():
  config.parse_gin(["models/tiny.gin", "experiments/mslam_ctc_xmodal.gin"], TINY_BINDINGS)
  yield
  gin.clear_config()


def _audio(rng, length):
  t = np.arange(length) / 16000.0
  tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t)
  return (tone + 0.05 * rng.standard_normal(length)).astype(np.float32)


def _fixed_batch():
  """The batch contract at toy sizes, one padded item per stream."""
  rng = np.random.default_rng(0)
  samples, text_len, paired_len = 12000, 16, 16  # equal text widths share one shared-stack call

  def audio_rows(lengths):
    audio = np.zeros((len(lengths), samples), np.float32)
    mask = np.zeros((len(lengths), samples), np.int32)
    for i, n in enumerate(lengths):
      audio[i, :n], mask[i, :n] = _audio(rng, n), 1
    return jnp.asarray(audio), jnp.asarray(mask)

  def token_rows(lengths, width):
    tokens = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
      tokens[i, :n] = rng.integers(5, VOCAB, n)
    return jnp.asarray(tokens), jnp.asarray((tokens > 0).astype(np.int32))

  speech_audio, speech_mask = audio_rows([12000, 9000])
  paired_audio, paired_mask = audio_rows([12000, 10000])
  text, text_mask = token_rows([16, 11], text_len)
  paired_tokens, paired_tokens_mask = token_rows([12, 9], paired_len)
  lang = jnp.array([0, 1], jnp.int32)
  return {
      "speech": {"audio": speech_audio, "audio_mask": speech_mask, "lang": lang},
      "text": {"tokens": text, "tokens_mask": text_mask, "lang": lang},
      "paired": {"audio": paired_audio, "audio_mask": paired_mask, "tokens": paired_tokens,
                 "tokens_mask": paired_tokens_mask, "lang": lang},
  }


@pytest.fixture(scope="module")
def model(gin_tiny):
  return mslam.MSLAMModel()


@pytest.fixture(scope="module")
def batch():
  return _fixed_batch()


@pytest.fixture(scope="module")
def boxed_params(model, batch):
  rng = jax.random.key(0)
  return jax.jit(model.init).lower(rng, batch).compile(FAST_COMPILE)(rng, batch)


def _fast_jit(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


def test_params_carry_logical_axes(model, batch):
  specs = nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), batch))
  flat = flax.traverse_util.flatten_dict(specs)
  assert flat[("text_head", "proj", "dense", "kernel")] == jax.sharding.PartitionSpec("embed", "vocab")
  assert flat[("codebook_head", "proj", "dense", "kernel")] == jax.sharding.PartitionSpec("embed", "codebook")
  assert any(spec and spec[0] == "layers" for key, spec in flat.items() if key[:2] == ("encoder", "shared"))


@pytest.mark.slow  # trains the tiny model for many steps
def test_bf16_training_drives_fixed_batch_loss_down(gin_tiny, batch, boxed_params):
  """The bf16 path end to end (bf16 compute, fp32 parameters, as on accelerators): init losses sit
  where theory puts them; adam drives the total loss of one batch far down with finite gradients
  all along. (One program serves all three checks: compiling is the expensive part on CPU.)"""
  model = mslam.MSLAMModel(encoder=mslam.encoder_lib.MSLAMEncoder(dtype=jnp.bfloat16))
  params = flax.core.meta.unbox(boxed_params)
  optimizer = optax.adam(3e-3)
  rng = jax.random.key(1)  # the same masks and distractors every step: a memorization task

  def train_step(params, opt_state, step):
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng, step)
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)]))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, finite

  opt_state = optimizer.init(params)
  train_step = _fast_jit(train_step, params, opt_state, 0)
  curve = {}
  for step in range(TRAIN_STEPS + 1):
    params, opt_state, metrics, finite = train_step(params, opt_state, step)
    assert bool(finite), f"non-finite gradient at step {step}"
    if step == 0:
      init_metrics = {k: float(v) for k, v in metrics.items()}
    if step % 25 == 0:
      curve[step] = float(metrics["loss"])
  print("loss curve:", curve)
  print("init metrics:", init_metrics)
  print("final metrics:", {k: round(float(v), 4) for k, v in metrics.items()})

  m = init_metrics
  # Untrained context and target projections are not random directions: their cosines spread
  # more than 1/sqrt(D), which lifts InfoNCE above log(K + 1) (test_losses checks the exact case).
  assert math.log(NEGATIVES + 1) - 0.2 < m["speech/contrastive_loss"] < math.log(NEGATIVES + 1) + 1.0
  for name in ("speech/mlm_loss", "paired/tlm_speech_loss"):
    assert abs(m[name] - math.log(CODEBOOK)) < 0.05, (name, m[name])
  for name in ("text/mlm_loss", "paired/tlm_text_loss"):
    assert abs(m[name] - math.log(VOCAB)) < 0.05, (name, m[name])
  # (Its value at init depends on how alike two untrained pooled encodings happen to be.)
  assert np.isfinite(m["paired/cross_modal_loss"]) and m["paired/cross_modal_loss"] > 0
  np.testing.assert_allclose(m["paired/cross_modal_temperature"], 0.07, rtol=1e-5)
  w = model.weights
  expected_total = (w.speech_contrastive * m["speech/contrastive_loss"] + w.diversity * m["speech/diversity_loss"]
                    + w.speech_mlm * m["speech/mlm_loss"] + w.text_mlm * m["text/mlm_loss"]
                    + w.tlm * m["paired/tlm_loss"] + w.ctc * m["paired/ctc_loss"]
                    + w.cross_modal * m["paired/cross_modal_loss"])
  np.testing.assert_allclose(m["loss"], expected_total, rtol=1e-5)
  assert m["paired/ctc_infeasible"] == 0 and m["paired/ctc_loss"] > 0
  assert 0 < m["codebook/usage"] <= 1 and 1 <= m["codebook/perplexity"] <= CODEBOOK
  assert curve[TRAIN_STEPS] < 0.1 * curve[0], curve
  assert float(metrics["speech/contrastive_accuracy"]) > 0.9 and float(metrics["text/mlm_accuracy"]) > 0.9


def _dot_operand_dtypes(jaxpr) -> list[str]:
  """The operand dtypes of every dot_general in `jaxpr` and its sub-jaxprs (scans, custom vjps)."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      found.append("/".join(str(v.aval.dtype) for v in eqn.invars))
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(item, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          found += _dot_operand_dtypes(inner)
        elif hasattr(item, "eqns"):
          found += _dot_operand_dtypes(item)
  return found


def test_bf16_matmul_operands_reach_every_weight_product_and_leave_the_loss_close(gin_tiny, batch, boxed_params):
  """matmul_precision "bfloat16": the gradient's weight products take bf16 operands (attention's
  two-activation products stay float32), and the loss moves by bf16 rounding only."""
  params = flax.core.meta.unbox(boxed_params)
  rng = jax.random.key(1)

  def loss_and_dots(precision):
    gin.bind_parameter("matmul_precision.precision", precision)
    try:
      model = mslam.MSLAMModel()
      grad = jax.grad(lambda p: model.loss_fn(p, batch, rng, 0)[0])
      dots = _dot_operand_dtypes(jax.make_jaxpr(grad)(params).jaxpr)
      return float(_fast_jit(lambda p: model.loss_fn(p, batch, rng, 0)[0], params)(params)), dots
    finally:
      gin.bind_parameter("matmul_precision.precision", "float32")

  loss32, dots32 = loss_and_dots("float32")
  loss16, dots16 = loss_and_dots("bfloat16")
  print("dot operand dtypes, bfloat16:", {d: dots16.count(d) for d in set(dots16)})
  assert "bfloat16/bfloat16" not in dots32
  # Each bf16 product of the forward pass has two in the backward: the weight products dominate.
  assert dots16.count("bfloat16/bfloat16") > 2 * dots16.count("float32/float32") > 0, dots16
  assert loss16 != loss32 and abs(loss16 - loss32) < 0.02 * abs(loss32), (loss16, loss32)


def test_encodings_do_not_depend_on_batch_padding(model, boxed_params):
  rng = np.random.default_rng(3)
  clip = _audio(rng, 7000)
  other = _audio(rng, 15000)
  short = np.zeros((1, 8000), np.float32)
  short[0, :7000] = clip
  long = np.zeros((2, 16000), np.float32)
  long[0, :7000], long[1, :15000] = clip, other
  params = flax.core.meta.unbox(boxed_params)
  short_mask = jnp.asarray(np.arange(8000)[None] < 7000, jnp.int32)
  long_mask = jnp.asarray(np.arange(16000)[None] < np.array([[7000], [15000]]), jnp.int32)
  frames_a, mask_a, pooled_a = _fast_jit(model.encode_speech, params, short, short_mask)(params, short, short_mask)
  frames_b, mask_b, pooled_b = _fast_jit(model.encode_speech, params, long, long_mask)(params, long, long_mask)
  num = int(mask_a[0].sum())
  assert num > 0 and int(mask_b[0].sum()) == num
  np.testing.assert_allclose(frames_a[0, :num], frames_b[0, :num], atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(pooled_a[0], pooled_b[0], atol=2e-4, rtol=1e-4)

  tokens = jnp.array([[7, 8, 9, 10, 11, 0, 0, 0, 0, 0, 0, 0]])
  encode_text = jax.jit(model.encode_text)
  text_a = encode_text(params, tokens[:, :6], (tokens[:, :6] > 0).astype(jnp.int32))
  text_b = encode_text(params, tokens, (tokens > 0).astype(jnp.int32))
  np.testing.assert_allclose(text_a[0][0, :5], text_b[0][0, :5], atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(text_a[2], text_b[2], atol=2e-4, rtol=1e-4)


def test_ctc_phonotactics_count_valid_frames_and_consecutive_pairs():
  rng = np.random.default_rng(11)
  probs = rng.dirichlet(np.ones(6), size=(2, 7))
  mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
  probs[1, 4:] = 0.0
  probs[1, 4:, 2] = 1.0  # padding that reads as unit 2 must not count
  units = np.array([2, 5, 0])
  got = np.asarray(mslam.ctc_phonotactics(jnp.log(jnp.asarray(probs) + 1e-30), jnp.asarray(mask), jnp.asarray(units)))
  assert got.shape == (2, 3 + 9)
  for b in range(2):
    q = probs[b, :mask[b].sum()][:, units]
    want = np.concatenate([q.sum(0), (q[:-1].T @ q[1:]).ravel()]) / len(q)
    np.testing.assert_allclose(got[b], np.sqrt(want), atol=1e-5)
  # A clip that alternates two characters puts its pairs on them, in both orders, and none on repeats.
  alternating = np.zeros((1, 6, 4))
  alternating[0, ::2, 1], alternating[0, 1::2, 3] = 1.0, 1.0
  pairs = np.asarray(mslam.ctc_phonotactics(jnp.log(jnp.asarray(alternating) + 1e-30), jnp.ones((1, 6)),
                                            jnp.array([1, 3])))[0, 2:].reshape(2, 2)
  np.testing.assert_allclose(pairs ** 2, [[0, 3 / 6], [2 / 6, 0]], atol=1e-6)


def test_phonotactic_language_features_are_the_statistics_and_the_ctc_heads(model, boxed_params):
  rng = np.random.default_rng(5)
  audio = np.zeros((2, 16000), np.float32)
  audio[0], audio[1, :9000] = _audio(rng, 16000), _audio(rng, 9000)
  mask = jnp.asarray(np.arange(16000)[None] < np.array([[16000], [9000]]), jnp.int32)
  params = flax.core.meta.unbox(boxed_params)
  units = jnp.array([5, 9, 12], jnp.int32)
  assert model.has_ctc_head
  got = np.asarray(_fast_jit(model.speech_statistics_and_phonotactics, params, audio, mask, units)(
      params, audio, mask, units))
  stats = np.asarray(_fast_jit(model.speech_statistics, params, audio, mask)(params, audio, mask))
  log_probs, frame_mask, _ = _fast_jit(model.embed_speech_with_ctc, params, audio, mask)(params, audio, mask)
  np.testing.assert_allclose(got[:, :stats.shape[1]], stats, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(got[:, stats.shape[1]:], mslam.ctc_phonotactics(log_probs, frame_mask, units),
                             atol=1e-5, rtol=1e-5)
  assert got.shape == (2, stats.shape[1] + 3 + 9)


def test_fine_tuning_time_masking_replaces_spans_by_the_mask_embedding(model, boxed_params, batch):
  params = flax.core.meta.unbox(boxed_params)
  audio, audio_mask = batch["paired"]["audio"], batch["paired"]["audio_mask"]
  plain, valid, _ = jax.jit(model.encode_speech)(params, audio, audio_mask)
  valid = np.asarray(valid).astype(bool)

  def noised(p, rng, prob):
    return model.encode_speech_for_training(p, audio, audio_mask, rng, prob, 4)[0]

  # No masking (and the tiny config's dropout of 0): the inference encoder, whatever the key.
  np.testing.assert_allclose(jax.jit(noised, static_argnums=2)(params, jax.random.key(1), 0.0), plain,
                             atol=1e-5, rtol=1e-5)
  masked = jax.jit(noised, static_argnums=2)
  a, b = masked(params, jax.random.key(1), 0.3), masked(params, jax.random.key(2), 0.3)
  assert not np.allclose(np.asarray(a)[valid], np.asarray(plain)[valid], atol=1e-3)  # frames changed
  assert not np.allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=1e-3)  # by the key's spans
  # The masked frames carry the pre-trained mask embedding: its gradient is nonzero only with masking.
  grad = jax.jit(jax.grad(lambda p, prob: jnp.sum(noised(p, jax.random.key(1), prob) ** 2)), static_argnums=1)
  assert float(jnp.abs(grad(params, 0.3)["encoder"]["speech_mask_embedding"]).sum()) > 0
  assert float(jnp.abs(grad(params, 0.0)["encoder"]["speech_mask_embedding"]).sum()) == 0


def test_fine_tuning_time_masking_settings_are_checked():
  from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="time_mask_prob"):
    finetune.FinetuneConfig(time_mask_prob=1.5)
  with pytest.raises(ValueError, match="time_mask_length"):
    finetune.FinetuneConfig(time_mask_prob=0.05, time_mask_length=0)


def test_best_rq_quantizer_traces(gin_tiny, batch):
  """The BEST-RQ alternative (here with the tied text head) builds and every objective traces
  (shapes only, nothing compiled)."""
  weights = mslam.ObjectiveWeights(speech_contrastive=0.0, diversity=0.0)
  model = mslam.MSLAMModel(quantizer="best_rq", weights=weights, tie_text_head=True)
  params = flax.core.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), batch))
  assert not any("context_projection" in k for k in params)
  assert set(params["text_head"]) == {"bias"} and params["text_head"]["bias"].shape == (VOCAB,)
  assert any(k.startswith("frozen_") for k in params["quantizer"])
  loss, metrics = jax.eval_shape(model.loss_fn, params, batch, jax.random.key(1), 0)
  assert loss.shape == () and "speech/mlm_loss" in metrics and "speech/contrastive_loss" not in metrics


@pytest.mark.parametrize("stream", ["speech", "text"])
def test_single_stream_batches_get_the_joint_parameter_tree(gin_tiny, batch, stream):
  """A speech-only ablation reads no text nor paired stream, a text-only run no audio; their
  parameters still match a joint run's (the same tree), so the runs load alike."""
  if stream == "speech":
    weights = mslam.ObjectiveWeights(text_mlm=0.0, tlm=0.0, ctc=0.0, cross_modal=0.0)
  else:
    weights = mslam.ObjectiveWeights(speech_contrastive=0.0, diversity=0.0, speech_mlm=0.0, tlm=0.0, ctc=0.0,
                                     cross_modal=0.0)
  model = mslam.MSLAMModel(weights=weights)
  single = {stream: batch[stream]}
  rng = jax.random.key(0)
  joint_params = jax.eval_shape(model.init, rng, batch)
  params = jax.eval_shape(model.init, rng, single)
  assert jax.tree.structure(params) == jax.tree.structure(joint_params)
  loss, metrics = jax.eval_shape(model.loss_fn, flax.core.meta.unbox(params), single, jax.random.key(1), 0)
  assert loss.shape == () and f"{stream}/mlm_loss" in metrics
  other = ("text/", "paired/") if stream == "speech" else ("speech/", "paired/", "health/")
  assert not any(k.startswith(other) for k in metrics), sorted(metrics)


def test_tlm_on_the_first_paired_items_is_tlm_on_those_items_alone(gin_tiny, batch, boxed_params):
  """MSLAMModel.tlm_items: TLM sees the first items of the paired batch, as if they were the whole
  batch (same masks, same losses); CTC and the cross-modal term still see every item."""
  params = flax.core.meta.unbox(boxed_params)
  paired = {"paired": batch["paired"]}
  first = {"paired": jax.tree.map(lambda a: a[:1], batch["paired"])}
  loss = lambda model, b: jax.jit(functools.partial(model.loss_fn, deterministic=True))(
      params, b, jax.random.key(3), 300)[1]
  some = loss(mslam.MSLAMModel(tlm_items=1), paired)
  alone = loss(mslam.MSLAMModel(), first)
  every = loss(mslam.MSLAMModel(), paired)
  for key in ("paired/tlm_speech_loss", "paired/tlm_text_loss", "paired/tlm_speech_masked_share"):
    np.testing.assert_allclose(some[key], alone[key], rtol=1e-5, err_msg=key)
  for key in ("paired/ctc_loss", "paired/cross_modal_loss"):
    np.testing.assert_allclose(some[key], every[key], rtol=1e-5, err_msg=key)
  assert not np.isclose(some["paired/cross_modal_loss"], alone["paired/cross_modal_loss"])
  with pytest.raises(ValueError, match=r"MSLAMModel\.tlm_items"):
    mslam.MSLAMModel(tlm_items=0)


def test_stacks_merge_inputs_of_different_lengths_to_the_same_losses(gin_tiny, batch, boxed_params):
  """MSLAMModel.stack_merge_ratio: speech crops shorter than the paired clips (and text rows shorter
  than TLM's) padded into one call per stack give every loss and metric of separate calls."""
  params = flax.core.meta.unbox(boxed_params)
  short = dict(batch, speech={**batch["speech"], "audio": batch["speech"]["audio"][:, :9000],
                              "audio_mask": batch["speech"]["audio_mask"][:, :9000]})
  metrics = lambda model: jax.jit(functools.partial(model.loss_fn, deterministic=True))(
      params, short, jax.random.key(3), 300)[1]
  separate, merged = metrics(mslam.MSLAMModel()), metrics(mslam.MSLAMModel(stack_merge_ratio=0.1))
  assert set(separate) == set(merged)
  for key in separate:
    np.testing.assert_allclose(merged[key], separate[key], rtol=2e-4, atol=1e-5, err_msg=key)


@pytest.mark.slow  # compiles the tiny model's train step twice
def test_micro_batches_give_the_whole_batch_gradient(gin_tiny, batch):
  """Trainer.num_microbatches: each micro-batch's per-item objectives are summed over the whole
  batch's items (the model's count/ metrics, totalled first), so two micro-batches of one row step
  exactly as the batch does; the mean of the two rows' own means would not."""
  weights = mslam.ObjectiveWeights(speech_contrastive=0.0, diversity=0.0, text_mlm=0.0, tlm=0.0, cross_modal=0.0,
                                   consistency=1.0)
  # Every speech frame masked: the micro-batches' masks are the batch's whatever their keys.
  model = mslam.MSLAMModel(quantizer="best_rq", weights=weights,
                           masks=mslam.masking.MaskingConfig(speech_start_prob=1.0))
  batch = {"speech": batch["speech"], "paired": batch["paired"]}  # no text stream: less to compile
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  sgd = optimizers.Optimizer(tx=optax.sgd(1.0), schedule=lambda step: jnp.float32(1.0), name="sgd")
  steps = {}
  for k, unroll in ((1, 1), (2, 1), (2, 2)):  # the micro-batches' scan rolled, then unrolled
    trainer = trainer_lib.Trainer(model, sgd, mesh, batch, num_microbatches=k, microbatch_unroll=unroll)
    state = trainer.init_state()
    new_state, metrics = trainer.train_step(trainer.init_state(), trainer.shard_batch(batch))
    steps[k, unroll] = jax.device_get((state.params, new_state.params, metrics))
  assert trainer_lib.Trainer(model, sgd, mesh, batch, num_microbatches=2).microbatch_unroll == 2  # CPU's default
  before, whole, m1 = steps[1, 1]
  for _, micro, m2 in (steps[2, 1], steps[2, 2]):
    for key in ("loss", "grad_norm", "speech/mlm_loss", "speech/mlm_accuracy", "paired/ctc_loss",
                "paired/consistency_loss", "count/speech_mlm", "count/ctc", "count/consistency"):
      np.testing.assert_allclose(m2[key], m1[key], rtol=1e-5, err_msg=key)
    for a, b in zip(jax.tree.leaves(micro), jax.tree.leaves(whole)):
      np.testing.assert_allclose(a, b, atol=1e-6)
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(before))) > 1e-3
  # The rows differ in length: the mean of their own means is another loss.
  row_loss = jax.jit(lambda p, row: model.loss_fn(p, row, jax.random.key(0), 0)[0])
  rows = [row_loss(before, jax.tree.map(lambda x, i=i: x[i:i + 1], batch)) for i in range(2)]
  assert abs(float(np.mean(rows)) - float(m1["loss"])) > 1e-3


@pytest.mark.parametrize("overrides,binding", [
    (dict(encoder=dict(contrastive_layer=5)), "MSLAMEncoder.contrastive_layer"),
    (dict(encoder=dict(num_shared_layers=0)), "MSLAMEncoder.num_shared_layers"),
    (dict(encoder=dict(embed_dim=0)), "MSLAMEncoder.embed_dim"),
    (dict(encoder=dict(vocab_size=4)), "MSLAMEncoder.vocab_size"),
    (dict(num_negatives=0), "MSLAMModel.num_negatives"),
    (dict(stack_merge_ratio=0.0), "MSLAMModel.stack_merge_ratio"),
    (dict(quantizer="vq"), "MSLAMModel.quantizer"),
    (dict(quantizer="best_rq"), "ObjectiveWeights.speech_contrastive"),
    (dict(weights=mslam.ObjectiveWeights(text_mlm=-1.0)), "ObjectiveWeights.text_mlm"),
    (dict(masks=mslam.masking.MaskingConfig(speech_start_prob=0.0)), "MaskingConfig.speech_start_prob"),
    (dict(cross_modal_init_temperature=5.0), "MSLAMModel.cross_modal_min_temperature"),
    (dict(cross_modal_frame_hidden=8, encoder=dict(pooling="attention")), "MSLAMEncoder.pooling"),
])
def test_misconfiguration_fails_at_construction_naming_the_binding(gin_tiny, overrides, binding):
  overrides = dict(overrides)
  if "encoder" in overrides:
    overrides["encoder"] = mslam.encoder_lib.MSLAMEncoder(**overrides["encoder"])
  with pytest.raises(ValueError, match=binding.replace(".", r"\.")):
    mslam.MSLAMModel(**overrides)


def test_an_unknown_matmul_precision_fails_at_construction(gin_tiny):
  gin.bind_parameter("matmul_precision.precision", "fp8")
  try:
    with pytest.raises(ValueError, match=r"matmul_precision\.precision='fp8'"):
      mslam.MSLAMModel()
  finally:
    gin.bind_parameter("matmul_precision.precision", "float32")
