"""In-process checks of the trainer's parts: schedule, decay mask, sharding specs, mesh, config."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mslam_jax import cli
from mslam_jax import optimizers
from mslam_jax import partitioning
from tests.trainer import helpers


def test_transformer_schedule_warms_up_linearly_then_decays_as_inverse_sqrt():
  schedule = optimizers.transformer_schedule(peak_learning_rate=6e-4, warmup_steps=100)
  lr = lambda count: float(schedule(count))
  assert lr(0) == pytest.approx(6e-6)          # t = 1
  assert lr(49) == pytest.approx(3e-4)         # half-way up
  assert lr(99) == pytest.approx(6e-4)         # the peak, at the end of warm-up
  assert lr(399) == pytest.approx(3e-4)        # 4x the warm-up: peak / 2
  assert lr(9999) == pytest.approx(6e-5)       # 100x: peak / 10


def test_cosine_and_constant_schedules_share_the_warm_up_and_end_where_told():
  warm = optimizers.transformer_schedule(peak_learning_rate=2e-3, warmup_steps=40)
  cosine = optimizers.make_schedule(2e-3, 40, decay="cosine", decay_steps=420, end_fraction=0.1)
  constant = optimizers.make_schedule(2e-3, 40, decay="constant")
  for count in (0, 19, 39):  # the same linear warm-up as the paper's schedule
    assert float(cosine(count)) == pytest.approx(float(warm(count)), rel=1e-5) == float(constant(count))
  assert float(cosine(229)) == pytest.approx(0.5 * (2e-3 + 2e-4), rel=1e-2)  # half-way down the cosine
  assert float(cosine(419)) == pytest.approx(2e-4)  # the last update: the floor
  assert float(constant(419)) == pytest.approx(2e-3)
  # make_optimizer follows the schedule it is given.
  assert float(optimizers.make_optimizer(peak_learning_rate=2e-3, warmup_steps=40, decay="cosine",
                                         decay_steps=420).schedule(419)) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="decay_steps"):
    optimizers.make_schedule(2e-3, 40, decay="cosine")
  with pytest.raises(ValueError, match="make_optimizer.decay"):
    optimizers.make_schedule(2e-3, 40, decay="linear")


def _params():
  return {"encoder": {"layer": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))},
                      "LayerNorm_0": {"scale": jnp.ones((4,))}},
          "token_embed": {"embedding": jnp.ones((8, 4))}}


def test_weight_decay_skips_biases_norms_and_embeddings():
  mask = optimizers.weight_decay_mask(_params())
  assert mask == {"encoder": {"layer": {"kernel": True, "bias": False},
                              "LayerNorm_0": {"scale": False}},
                  "token_embed": {"embedding": False}}
  # With zero gradients only weight decay moves parameters: kernels shrink, the rest stays.
  opt = optimizers.make_optimizer(peak_learning_rate=0.1, warmup_steps=1, weight_decay=0.5)
  params = _params()
  updates, _ = opt.tx.update(jax.tree.map(jnp.zeros_like, params), opt.tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(new["encoder"]["layer"]["kernel"][0, 0]) == pytest.approx(1 - 0.1 * 0.5)
  for path in (("encoder", "layer", "bias"), ("encoder", "LayerNorm_0", "scale"),
               ("token_embed", "embedding")):
    leaf = new
    for key in path:
      leaf = leaf[key]
    np.testing.assert_array_equal(leaf, 1.0)


def test_gradient_clipping_bounds_the_update_direction():
  opt = optimizers.make_optimizer(name="adafactor", peak_learning_rate=1.0, warmup_steps=1,
                                  clip_grad_norm=1.0)
  params = {"w": jnp.ones((3, 5))}
  state = opt.tx.init(params)
  updates, _ = opt.tx.update({"w": jnp.full((3, 5), 1e6)}, state, params)
  assert np.all(np.isfinite(updates["w"]))
  with pytest.raises(ValueError, match="make_optimizer.name"):
    optimizers.make_optimizer(name="sgd")


def test_optimizer_state_inherits_parameter_shardings():
  params = {"dense": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones((8,))}}
  specs = {"dense": {"kernel": P("embed", "mlp"), "bias": P("mlp")}}
  adam = optimizers.make_optimizer()
  opt_specs = partitioning.derive_state_specs(adam.tx.init(params), params, specs)
  leaves = jax.tree.leaves(opt_specs, is_leaf=lambda x: isinstance(x, P))
  # Adam's mu and nu shadow the params; its step count is replicated.
  assert leaves.count(P("embed", "mlp")) == 2 and leaves.count(P("mlp")) == 2
  assert P() in leaves
  # Adafactor factors kernels from 128 x 128 on: its row/column statistics do not have the
  # kernel's shape and are replicated; the unfactored bias statistics follow the bias.
  big = {"dense": {"kernel": jnp.ones((128, 256)), "bias": jnp.ones((256,))}}
  ada = optimizers.make_optimizer(name="adafactor")
  ada_leaves = jax.tree.leaves(
      partitioning.derive_state_specs(jax.eval_shape(ada.tx.init, big), big, specs),
      is_leaf=lambda x: isinstance(x, P))
  assert P("embed", "mlp") not in ada_leaves and P("mlp") in ada_leaves


def test_logical_rules_map_parameters_and_activations():
  rules = partitioning.logical_axis_rules()
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("fsdp", "model")
  assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("model", "fsdp")
  # An activation's batch takes data and fsdp, so its embed dimension stays whole.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
  overridden = partitioning.logical_axis_rules(overrides=(("embed", None),))
  assert nn.logical_to_mesh_axes(("embed", "mlp"), overridden) == P(None, "model")


def test_mesh_shape_fills_minus_one_and_names_the_binding_when_impossible():
  assert partitioning.resolve_mesh_shape(2, -1, 2, 16) == (2, 4, 2)
  assert partitioning.resolve_mesh_shape(1, 1, 1, 1) == (1, 1, 1)
  with pytest.raises(ValueError, match="make_mesh"):
    partitioning.resolve_mesh_shape(3, -1, 1, 8)
  with pytest.raises(ValueError, match="at most one"):
    partitioning.resolve_mesh_shape(-1, -1, 1, 8)
  with pytest.raises(ValueError, match="make_mesh"):
    partitioning.resolve_mesh_shape(2, 2, 1, 8)


@pytest.mark.parametrize("given, missing", [
    (["--gin.TRAIN_STEPS=3"], ["MODEL_DIR"]),
    ([], ["MODEL_DIR", "TRAIN_STEPS"]),
])
def test_a_missing_required_macro_fails_at_start_naming_it(capsys, given, missing):
  import gin  # pylint: disable=g-import-not-at-top
  try:
    rc = cli.main(["train", f"--gin_file={helpers.STANDIN_GIN}"] + given)
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  assert rc == 2
  assert f"REQUIRED gin macro(s) not set: {', '.join(missing)}" in err
  for name in missing:
    assert f"--gin.{name}=" in err


def test_initialize_params_runs_on_a_fresh_start_only(tmp_path, caplog):
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  calls = []

  def fill_with_ones(params):  # the abstract parameters, each with its sharding
    calls.append(1)
    assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None for x in jax.tree.leaves(params))
    return jax.tree.map(lambda x: np.ones(x.shape, x.dtype), params)

  model_dir = str(tmp_path / "run")
  with caplog.at_level("WARNING"):
    for steps in (2, 4):  # a fresh run, then a resumed one
      gin.clear_config()
      try:
        config.parse_gin([helpers.STANDIN_GIN], [
            f"MODEL_DIR = {model_dir!r}", f"TRAIN_STEPS = {steps}",
            "make_optimizer.peak_learning_rate = 1e-30"])  # the updates leave the ones visible
        train_lib.train(initialize_params=fill_with_ones)
      finally:
        gin.clear_config()
    assert len(calls) == 1
    params = checkpoints.load_state_dict(os.path.join(model_dir, "checkpoints", "4"))["params"]
    for leaf in jax.tree.leaves(params):
      np.testing.assert_allclose(np.asarray(leaf), 1.0, atol=1e-6)
    assert jax.tree.structure(checkpoints.load_params(checkpoints.step_dir(model_dir, 4))) == jax.tree.structure(params)
  # Resuming and loading read each item's metadata by its handler: no warning about step metadata
  # inside the item directory, where Orbax never writes it.
  assert "Metadata file does not exist" not in caplog.text, caplog.text


def _by_name(tree) -> dict:
  return {"/".join(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_the_models_init_is_traced_once_for_the_abstract_state_and_the_init_program(monkeypatch):
  """Trainer traces `model.init` (a forward pass) once: for the abstract state at construction, and
  `init_state`'s program reuses that trace, fresh start or given parameters alike."""
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.trainer import standin  # pylint: disable=g-import-not-at-top
  traces, init = [], standin.StandInModel.init

  def counted(self, rng, batch):
    traces.append(1)
    return init(self, rng, batch)
  monkeypatch.setattr(standin.StandInModel, "init", counted)
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), standin.SyntheticIterator().global_batch(0))
  trainer = trainer_lib.Trainer(standin.StandInModel(), optimizers.make_optimizer(), partitioning.make_mesh(), spec)
  state = trainer.init_state()
  given = dict(trainer.abstract_state_sharded.params, block=state.params["block"])
  trainer.init_state(given)
  assert len(traces) == 1


def test_init_state_computes_only_the_parameters_it_is_not_given():
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.trainer import standin  # pylint: disable=g-import-not-at-top
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), standin.SyntheticIterator().global_batch(0))
  trainer = trainer_lib.Trainer(standin.StandInModel(), optimizers.make_optimizer(), partitioning.make_mesh(), spec)
  plain = _by_name(trainer.init_state().params)
  # The block comes from elsewhere (e.g. a checkpoint), in float64: it lands in the model's dtype.
  abstract = trainer.abstract_state_sharded.params
  given = dict(abstract, block=jax.tree.map(lambda x: np.full(x.shape, 7.0), abstract["block"]))
  state = trainer.init_state(given)
  for name, leaf in _by_name(state.params).items():
    if name.startswith("block/"):
      assert leaf.dtype == jnp.float32 and np.all(np.asarray(leaf) == 7.0), name
    else:  # the same fresh values as a whole initialization's
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(plain[name]), err_msg=name)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(trainer.abstract_state.opt_state)
  # The given leaves' random initialization is not in the init program at all.
  rng = jax.random.PRNGKey(0)
  block = {f"block/{k}": v for k, v in _by_name(given["block"]).items()}
  with trainer.mesh:
    whole = trainer._init.lower(rng, {}).as_text().count("threefry")  # pylint: disable=protected-access
    part = trainer._init.lower(rng, block).as_text().count("threefry")  # pylint: disable=protected-access
  assert 0 < part < whole
  with pytest.raises(ValueError, match="embed/embedding"):
    trainer.init_state(dict(abstract, embed={"embedding": np.zeros((3, 3))}))


def test_a_collapsing_encoder_is_named_in_the_log_once_until_it_recovers(caplog):
  from mslam_jax import train  # pylint: disable=g-import-not-at-top
  collapsed = set()
  with caplog.at_level("WARNING"):
    train._warn_on_collapse(7, {"health/frame_cosine": 0.5, "health/utterance_cosine": 0.999}, 0.99, collapsed)
  assert "Step 7: the encoder is collapsing: mean cosine 0.999 between pooled utterances" in caplog.text
  assert "frames within an utterance" not in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    train._warn_on_collapse(8, {"health/frame_cosine": 0.5, "health/utterance_cosine": 1.0}, 0.99, collapsed)
    train._warn_on_collapse(9, {"health/frame_cosine": 0.5}, 0.99, collapsed)  # not measured this step
  assert not caplog.text  # still collapsed: said once
  with caplog.at_level("WARNING"):
    train._warn_on_collapse(10, {"health/utterance_cosine": 0.8}, 0.99, collapsed)
  assert "Step 10: the encoder no longer collapses: mean cosine 0.800 between pooled utterances" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    train._warn_on_collapse(11, {"health/utterance_cosine": 0.995}, 0.99, collapsed)
  assert "Step 11: the encoder is collapsing" in caplog.text


def test_a_length_bucket_batch_of_other_rows_and_lengths_trains_through_the_same_trainer():
  """The step iterator's length buckets (data/pipeline.py) give the paired sub-batch other shapes
  than the spec's; the Trainer shards and steps them (one compile per shape)."""
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.trainer import standin  # pylint: disable=g-import-not-at-top
  main = standin.SyntheticIterator(paired_batch=4, paired_samples=128, paired_length=8).global_batch(0)
  bucket = standin.SyntheticIterator(paired_batch=8, paired_samples=64, paired_length=4).global_batch(1)
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), main)
  trainer = trainer_lib.Trainer(standin.StandInModel(), optimizers.make_optimizer(), partitioning.make_mesh(), spec)
  state = trainer.init_state()
  for batch in (main, bucket, main):
    state, metrics = trainer.train_step(state, trainer.shard_batch(batch))
    assert np.isfinite(float(metrics["loss"])) and not float(metrics["nonfinite"])
  assert int(state.step) == 3
  assert trainer.shard_batch(bucket)["paired"]["audio"].shape == (8, 64)


def test_the_health_check_waits_for_a_batch_of_the_main_shapes(tmp_path, monkeypatch):
  """With length buckets, a due health check runs on the next batch of the spec's shapes: a bucket's
  batch would compile the check's jacrev again."""
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from tests.trainer import standin  # pylint: disable=g-import-not-at-top

  class Bucketed(standin.SyntheticIterator):
    """Steps 2, 3 and 5 (1-based) bring a paired sub-batch of twice the rows at half the length."""
    def global_batch(self, position):
      if position not in (1, 2, 4):
        return super().global_batch(position)
      short = standin.SyntheticIterator(paired_batch=16, paired_samples=64, paired_length=4)
      return short.global_batch(position)

  checked = []

  def record(self, state, batch, **kwargs):
    del self, kwargs
    checked.append((int(state.step), batch["paired"]["audio"].shape))
    return {}
  monkeypatch.setattr(trainer_lib.Trainer, "objective_grad_norms", record)
  gin.clear_config()
  try:
    config.parse_gin([helpers.STANDIN_GIN], [f"MODEL_DIR = {str(tmp_path / 'run')!r}", "TRAIN_STEPS = 6"])
    train_lib.train(iterator_fn=lambda shard_index, num_shards: Bucketed(shard_index, num_shards),
                    health_every=2)
  finally:
    gin.clear_config()
  # Due at 2 (a bucket's batch) -> 4; due at 4 -> 4; due at 6 -> 6.
  assert checked == [(4, (8, 128)), (6, (8, 128))]
