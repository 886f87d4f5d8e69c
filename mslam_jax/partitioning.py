"""Device mesh, the one table of logical-axis rules, and the glue that shards state and batches.

Parameters and activations are annotated with logical axis names (`batch`, `embed`, `mlp`, ...);
`LOGICAL_AXIS_RULES` maps them onto the mesh axes `data`, `fsdp` and `model`:

  * `data`: pure data parallelism (parameters replicated across it);
  * `fsdp`: data parallelism whose parameters and optimizer state are sharded (ZeRO-3 style);
  * `model`: tensor parallelism over attention heads, MLP hidden units and the vocabulary.

Multi-host runs go through `jax.distributed`; each process feeds its own rows of the global batch
(`global_batch_from_process_local`).
"""
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "model")
BATCH_MESH_AXES = ("data", "fsdp")

# The one table. Flax applies rules in order and never uses a mesh axis twice in one array, so an
# activation [batch, length, embed] gets batch -> (data, fsdp) and leaves embed unsharded, while a
# parameter [embed, mlp] gets embed -> fsdp, mlp -> model.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_MESH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("codebook", None),
    ("conv", None),
    ("layers", None),
)


@gin.configurable
def logical_axis_rules(overrides: Sequence[tuple[str, Any]] = ()) -> tuple[tuple[str, Any], ...]:
  """The logical-axis rules; `overrides` (gin) come first and so take precedence."""
  overridden = {name for name, _ in overrides}
  return tuple(overrides) + tuple(rule for rule in LOGICAL_AXIS_RULES if rule[0] not in overridden)


def resolve_mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, int, int]:
  """Fills in the one axis given as -1 so that the mesh covers `num_devices`."""
  shape = [data, fsdp, model]
  if shape.count(-1) > 1:
    raise ValueError(f"at most one of make_mesh.data/fsdp/model may be -1, got {shape}")
  if any(size == 0 or size < -1 for size in shape):
    raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(zip(MESH_AXES, shape))}")
  known = math.prod(size for size in shape if size != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
          f"make_mesh: {num_devices} devices are not divisible by the fixed axes "
          f"{dict(zip(MESH_AXES, shape))}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
        f"make_mesh: mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
        f"{num_devices} are available; set make_mesh.data/fsdp/model (one may be -1)")
  return tuple(shape)


@gin.configurable
def make_mesh(data: int = 1, fsdp: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh over all devices (or `devices`); -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(data, fsdp, model, len(devices))
  if len(devices) == 1:
    device_array = np.asarray(devices).reshape(shape)
  else:
    # Physical-topology aware on TPU/GPU; on CPU a plain reshape in process order, so that each
    # process owns a contiguous block of the batch axes (the model axis is innermost).
    device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  mesh = Mesh(device_array, MESH_AXES)
  logging.info("Mesh %s over %d devices (%d processes)", dict(mesh.shape), len(devices),
               jax.process_count())
  return mesh


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules) -> Any:
  """Pytree of logical PartitionSpecs -> pytree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def params_logical_specs(boxed_params: Any) -> Any:
  """Logical PartitionSpecs of (abstract) boxed params; unannotated leaves are replicated."""
  return nn.get_partition_spec(boxed_params)


def derive_state_specs(tree: Any, params: Any, param_specs: Any) -> Any:
  """Logical specs for a tree (e.g. an optimizer state) whose leaves shadow the params.

  A leaf whose key path ends with a parameter's key path and has that parameter's shape (Adam's
  mu and nu, weight-decay masks' inner states, ...) gets the parameter's spec; anything else
  (step counts, Adafactor's factored row/column statistics) is replicated.
  """
  by_path = {}
  for (path, leaf), spec in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree_util.tree_leaves(param_specs, is_leaf=_is_spec)):
    by_path[tuple(path)] = (tuple(np.shape(leaf)), spec)

  def spec_for(path, leaf):
    shape = tuple(np.shape(leaf))
    for start in range(len(path)):
      match = by_path.get(tuple(path[start:]))
      if match is not None and match[0] == shape:
        return match[1]
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(spec_for, tree)


def batch_logical_specs(batch: Any) -> Any:
  """Every batch leaf is split along its leading axis (logical `batch`)."""
  return jax.tree.map(lambda x: PartitionSpec("batch", *([None] * (np.ndim(x) - 1))), batch)


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: what `.lower()` and Orbax restore take."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def process_batch_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
  """The contiguous rows [start, stop) of a batch-sharded array that this process feeds."""
  index_map = sharding.addressable_devices_indices_map((global_batch,))
  rows = set()
  for index in index_map.values():
    rows.update(range(*index[0].indices(global_batch)))
  start, stop = min(rows), max(rows) + 1
  if len(rows) != stop - start:
    raise ValueError(
        f"process {jax.process_index()} owns non-contiguous batch rows under {sharding}; "
        "order the mesh so that the batch axes follow process order")
  return start, stop


def global_batch_from_process_local(local_batch: Any, shardings: Any,
                                    global_shapes: Any | None = None) -> Any:
  """Assembles global jax.Arrays from each process's rows of the batch."""
  if global_shapes is None:
    return jax.tree.map(jax.make_array_from_process_local_data, shardings, local_batch)
  return jax.tree.map(
      lambda s, x, g: jax.make_array_from_process_local_data(s, x, g.shape),
      shardings, local_batch, global_shapes)


def global_batch_spec(local_spec: Any, num_processes: int | None = None) -> Any:
  """Global ShapeDtypeStructs from one process's batch, each process feeding equal rows."""
  num_processes = jax.process_count() if num_processes is None else num_processes
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((x.shape[0] * num_processes,) + tuple(x.shape[1:]), x.dtype),
      local_spec)


@gin.configurable
def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           auto_detect: bool = False,
                           cpu_collectives: str = "gloo") -> bool:
  """Starts jax.distributed when flags name a coordinator or `auto_detect` is set (TPU pods,
  SLURM, Open MPI: JAX finds the cluster itself). Returns whether the run is multi-process.

  Must run before anything touches a JAX backend. On CPU, cross-process collectives need an
  implementation (`cpu_collectives`, gloo by default).
  """
  if coordinator_address is None and not auto_detect:
    return False
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1

