"""Train state and the jitted train step, generic over any model with the t5x-like contract:

  model.init(rng, batch) -> params boxed with flax logical partitioning
  model.loss_fn(params, batch, rng, step) -> (loss, metrics)   (unboxed params, scalar metrics)

Micro-batches (`num_microbatches` > 1): one step's batch is split into micro-batches whose
gradients are summed in a scan (less memory; on CPU, caches that hold each op's output). On CPU the
scan is unrolled (`microbatch_unroll`): the micro-batches' passes are then independent chains that
XLA's CPU runtime runs side by side on the host's threads. A model
whose metrics include "count/<name>" (the items a per-item mean runs over: masked frames, tokens)
gets the batch-wide totals back, `loss_fn(..., normalizers={<name>: total, "microbatches": k})`,
and returns each micro-batch's share of the batch's loss and metrics: the summed gradient is the
whole batch's, up to float rounding. Other models get the mean of the micro-batches' losses.

The abstract state comes from jax.eval_shape; its logical specs map to NamedShardings through the
rules of mslam_jax.partitioning; the step is a plain jax.jit with in/out shardings and the state
donated (MaxText / big_vision style). A non-finite loss or gradient keeps the old parameters and
optimizer state (decided inside the step, so no host round trip) and is counted.
"""
import functools
from typing import Any, Protocol, Sequence

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mslam_jax import optimizers
from mslam_jax import partitioning
# The batch contract's AOT spec and audio count, here for the Trainer's callers (one definition each).
from mslam_jax.data.contract import audio_seconds, contract_batch_spec  # pylint: disable=unused-import


class Model(Protocol):
  def init(self, rng: jax.Array, batch: Any) -> Any: ...
  def loss_fn(self, params: Any, batch: Any, rng: jax.Array, step: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]: ...


@flax.struct.dataclass
class TrainState:
  step: jax.Array              # batches consumed (skipped non-finite ones included)
  params: Any                  # unboxed parameters
  opt_state: Any
  rng: jax.Array               # base key; the step's key is fold_in(rng, step)
  nonfinite_count: jax.Array   # updates skipped for a non-finite loss or gradient, in total
  nonfinite_streak: jax.Array  # ... in a row, up to this step


COUNT_PREFIX = "count/"


def _path_name(path) -> str:
  """"encoder/shared/layers/..." of a pytree key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _scalar_specs():
  return PartitionSpec()


@gin.configurable(denylist=["model", "optimizer", "mesh", "batch_spec"])
class Trainer:
  """Builds the sharded train state and the jitted step for one model, optimizer, mesh and batch."""

  def __init__(self, model: Model, optimizer: optimizers.Optimizer, mesh: Mesh, batch_spec: Any,
               *, rules: Sequence[tuple[str, Any]] | None = None, num_microbatches: int = 1,
               microbatch_unroll: int | None = None, seed: int = 0):
    """`batch_spec`: the GLOBAL batch as ShapeDtypeStructs (or arrays).

    `microbatch_unroll`: micro-batches per iteration of their scan. None: all of them on CPU, where
    one op rarely fills both cores and two independent passes do (the tiny speech step on 2 cores:
    0.56 s in one pass, 0.58 s as 2 rolled micro-batches, 0.49 s as 2 unrolled; benchmarks/README.md,
    thirty-third pass), and 1 elsewhere, where micro-batches exist to bound activation memory.
    """
    self.model = model
    self.optimizer = optimizer
    self.mesh = mesh
    self.rules = tuple(partitioning.logical_axis_rules() if rules is None else rules)
    self.num_microbatches = num_microbatches
    if microbatch_unroll is None:
      microbatch_unroll = num_microbatches if jax.default_backend() == "cpu" else 1
    self.microbatch_unroll = max(1, min(int(microbatch_unroll), num_microbatches))
    self.seed = seed
    self.batch_spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), batch_spec)
    self._check_batch()

    batch_specs = partitioning.batch_logical_specs(self.batch_spec)
    self.batch_shardings = partitioning.logical_to_sharding(batch_specs, mesh, self.rules)

    # Abstract boxed params -> logical specs; the state itself holds unboxed params. One jitted
    # `model.init`, traced here under the contexts `init_state` runs in: `_init` calls it again with
    # the same shapes and JAX reuses this trace (a forward pass: about a second for the tiny model).
    self._model_init = jax.jit(model.init)
    rng = jax.random.PRNGKey(seed)
    with mesh, nn.logical_axis_rules(self.rules):
      boxed = jax.eval_shape(self._model_init, rng, self.batch_spec)
    param_specs = partitioning.params_logical_specs(boxed)
    abstract_params = meta.unbox(boxed)
    abstract_opt = jax.eval_shape(optimizer.tx.init, abstract_params)
    opt_specs = partitioning.derive_state_specs(abstract_opt, abstract_params, param_specs)
    self.abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype),
        nonfinite_count=jax.ShapeDtypeStruct((), jnp.int32),
        nonfinite_streak=jax.ShapeDtypeStruct((), jnp.int32))
    self.state_logical_specs = TrainState(
        step=_scalar_specs(), params=param_specs, opt_state=opt_specs, rng=PartitionSpec(),
        nonfinite_count=_scalar_specs(), nonfinite_streak=_scalar_specs())
    self.state_shardings = partitioning.logical_to_sharding(
        self.state_logical_specs, mesh, self.rules)
    self.param_shardings = self.state_shardings.params
    self.abstract_state_sharded = partitioning.abstract_with_shardings(
        self.abstract_state, self.state_shardings)
    self.replicated = NamedSharding(mesh, PartitionSpec())

    self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._objective_grad_fns: dict[tuple[str, str], Any] = {}
    self._step = jax.jit(
        self._train_step, in_shardings=(self.state_shardings, self.batch_shardings),
        out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))

  def _check_batch(self):
    row_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"] * self.num_microbatches
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.batch_spec)[0]:
      if leaf.shape[0] % row_shards:
        raise ValueError(
            f"batch leaf {jax.tree_util.keystr(path)} has {leaf.shape[0]} rows, not divisible by "
            f"data*fsdp*num_microbatches = {row_shards}; change the sub-batch size in gin or "
            "Trainer.num_microbatches / make_mesh")

  # -- state ---------------------------------------------------------------------------------

  def _init_state(self, rng, given):
    init_rng, base_rng = jax.random.split(rng)
    fresh = meta.unbox(self._model_init(init_rng, self._dummy_batch()))
    # The fresh leaves that `given` replaces are dead code, dropped from the compiled program: a
    # fine-tune's encoder never pays for its random initialization, in compile time or memory.
    def take(path, leaf):
      name = _path_name(path)
      return given[name].astype(leaf.dtype) if name in given else leaf
    params = jax.tree_util.tree_map_with_path(take, fresh)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=self.optimizer.tx.init(params),
                      rng=base_rng, nonfinite_count=zero, nonfinite_streak=zero)

  def _dummy_batch(self):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.batch_spec)

  def init_state(self, params: Any = None) -> TrainState:
    """Initializes params and optimizer state directly in their shardings (never unsharded).

    `params`: optionally a tree shaped like `abstract_state_sharded.params` whose leaves are arrays
    where they are given (e.g. read from a checkpoint, in their shardings) and ShapeDtypeStructs
    where the model's own initialization fills them; only those are computed.
    """
    given = {}
    if params is not None:
      want = {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(self.abstract_state.params)[0]}
      for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _path_name(path)
        if name not in want:
          raise ValueError(f"init_state: parameter {name!r} is not one of the model's")
        if isinstance(leaf, jax.ShapeDtypeStruct):
          continue
        if tuple(np.shape(leaf)) != tuple(want[name].shape):
          raise ValueError(f"init_state: parameter {name!r} is {tuple(np.shape(leaf))}, the model's is "
                           f"{tuple(want[name].shape)}")
        given[name] = leaf
    with self.mesh, nn.logical_axis_rules(self.rules):
      return self._init(jax.random.PRNGKey(self.seed), given)

  # -- step ----------------------------------------------------------------------------------

  def _loss_and_grads(self, params, batch, rng, step):
    grad_fn = jax.value_and_grad(
        lambda p, b, r: self.model.loss_fn(p, b, r, step), has_aux=True)
    k = self.num_microbatches
    if k == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
      return loss, metrics, grads

    def split(x):
      # Micro-batch i takes rows i, i+k, ...: each one stays spread over every batch shard.
      x = x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
      return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))

    micro = jax.tree.map(split, batch)
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(k))
    first = jax.tree.map(lambda x: x[0], micro)
    metric_shapes = jax.eval_shape(lambda: self.model.loss_fn(params, first, rng, step)[1])
    counted = sorted(name for name in metric_shapes if name.startswith(COUNT_PREFIX))
    if counted:
      # The micro-batches' counts come first, from the same keys as their losses: only the masks
      # feed them, so XLA drops the rest of this pass.
      counts = jax.vmap(lambda mb, key: {name: self.model.loss_fn(params, mb, key, step)[1][name]
                                         for name in counted})(micro, keys)
      normalizers = {name[len(COUNT_PREFIX):]: jnp.sum(counts[name]) for name in counted}
      normalizers["microbatches"] = jnp.float32(k)
      grad_fn = jax.value_and_grad(
          lambda p, b, r: self.model.loss_fn(p, b, r, step, normalizers=normalizers), has_aux=True)
      metric_shapes = jax.eval_shape(lambda: grad_fn(params, first, rng)[0][1])

    def body(carry, inputs):
      key, mb = inputs
      (loss, metrics), grads = grad_fn(params, mb, key)
      grad_sum, loss_sum, metric_sum = carry
      return (jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss,
              jax.tree.map(jnp.add, metric_sum, metrics)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes))
    (grad_sum, loss_sum, metric_sum), _ = jax.lax.scan(body, zeros, (keys, micro), unroll=self.microbatch_unroll)
    if counted:  # shares of the batch: their sums are the batch's values
      return loss_sum, metric_sum, grad_sum
    mean = lambda x: x / k
    return mean(loss_sum), jax.tree.map(mean, metric_sum), jax.tree.map(mean, grad_sum)

  def _train_step(self, state: TrainState, batch):
    with nn.logical_axis_rules(self.rules):
      rng = jax.random.fold_in(state.rng, state.step)
      loss, metrics, grads = self._loss_and_grads(state.params, batch, rng, state.step)
      grads = jax.lax.with_sharding_constraint(grads, self.param_shardings)
      grad_norm = optax.global_norm(grads)
      updates, new_opt_state = self.optimizer.tx.update(grads, state.opt_state, state.params)
      new_params = optax.apply_updates(state.params, updates)

      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      # The optimizer's own count advances only on applied updates.
      lr_step = state.step - state.nonfinite_count
      new_state = TrainState(
          step=state.step + 1,
          params=keep(new_params, state.params),
          opt_state=keep(new_opt_state, state.opt_state),
          rng=state.rng,
          nonfinite_count=state.nonfinite_count + (~finite).astype(jnp.int32),
          nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
      out = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
      out.update(
          loss=jnp.asarray(loss, jnp.float32), grad_norm=grad_norm,
          param_norm=optax.global_norm(new_state.params),
          learning_rate=self.optimizer.schedule(lr_step),
          nonfinite=(~finite).astype(jnp.int32),
          nonfinite_count=new_state.nonfinite_count,
          nonfinite_streak=new_state.nonfinite_streak)
      return new_state, out

  def objective_grad_norms(self, state: TrainState, batch, prefix: str = "objective/",
                           params_under: str | tuple[str, ...] = "") -> dict[str, jax.Array]:
    """Gradient norm of each objective alone (metrics named `prefix`<name>, which sum to the loss)
    over the parameters whose path starts with `params_under` (e.g. "encoder/shared": who is
    shaping the shared layers?). Not part of the step: one forward and a backward per objective
    (jacrev), for a periodic health check. Keys: "grad_norm/<name>", or with a tuple of prefixes
    (one pass for all), "grad_norm/<prefix>/<name>"."""
    key = (prefix, params_under)
    if key not in self._objective_grad_fns:
      self._objective_grad_fns[key] = jax.jit(functools.partial(
          self._objective_grad_norms, prefix=prefix, params_under=params_under),
          in_shardings=(self.state_shardings, self.batch_shardings), out_shardings=self.replicated)
    with self.mesh:
      return self._objective_grad_fns[key](state, batch)

  def _objective_grad_norms(self, state: TrainState, batch, prefix: str, params_under):
    with nn.logical_axis_rules(self.rules):
      rng = jax.random.fold_in(state.rng, state.step)
      metric_shapes = jax.eval_shape(lambda: self.model.loss_fn(state.params, batch, rng, state.step)[1])
      names = sorted(k for k in metric_shapes if k.startswith(prefix))
      if not names:
        return {}
      groups = (params_under,) if isinstance(params_under, str) else tuple(params_under)
      flat, treedef = jax.tree_util.tree_flatten_with_path(state.params)
      paths = [_path_name(path) for path, _ in flat]
      for group in groups:
        if not any(path.startswith(group) for path in paths):
          raise ValueError(f"no parameter path starts with {group!r}")
      # Differentiate only the parameters asked about: the rest enter as constants, so XLA drops
      # the backward pass below them (e.g. the speech-only stack for "encoder/shared").
      chosen = [i for i, path in enumerate(paths) if any(path.startswith(g) for g in groups)]
      leaves = [leaf for _, leaf in flat]

      def terms(selected):
        full = list(leaves)
        for i, leaf in zip(chosen, selected):
          full[i] = leaf
        metrics = self.model.loss_fn(jax.tree_util.tree_unflatten(treedef, full), batch, rng, state.step)[1]
        return jnp.stack([metrics[k] for k in names])

      jacobian = jax.jacrev(terms)([leaves[i] for i in chosen])
      out = {}
      for group in groups:
        squares = sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)).reshape(len(names), -1), axis=1)
                      for i, leaf in zip(chosen, jacobian) if paths[i].startswith(group))
        label = "grad_norm/" if isinstance(params_under, str) else f"grad_norm/{group}/"
        out.update({label + name[len(prefix):]: jnp.sqrt(squares[i]) for i, name in enumerate(names)})
      return out

  def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update; `state` is donated. `batch` must be global arrays in `batch_shardings`."""
    with self.mesh:
      return self._step(state, batch)

  def lower_train_step(self):
    """The step lowered from abstract, sharded inputs (nothing allocated): for AOT compiles."""
    batch = partitioning.abstract_with_shardings(self.batch_spec, self.batch_shardings)
    with self.mesh:
      return self._step.lower(self.abstract_state_sharded, batch)

  # -- host side -----------------------------------------------------------------------------

  def process_rows(self) -> dict[str, tuple[int, int]]:
    """Rows [start, stop) of each sub-batch that this process must feed."""
    flat = jax.tree_util.tree_flatten_with_path(self.batch_shardings)[0]
    specs = jax.tree.leaves(self.batch_spec)
    return {jax.tree_util.keystr(path): partitioning.process_batch_rows(s, spec.shape[0])
            for (path, s), spec in zip(flat, specs)}

  def shard_batch(self, local_batch) -> Any:
    """This process's rows -> global arrays laid out as the step expects. A batch's lengths may
    differ from batch_spec's (length buckets): the step then compiles once per shape."""
    return partitioning.global_batch_from_process_local(
        local_batch, self.batch_shardings, partitioning.global_batch_spec(local_batch))


