"""Run in a subprocess with 8 fake CPU devices (tests/trainer/test_sharding.py).

Trains the stand-in for 5 steps on a 1-device mesh and on a data=2, fsdp=2, model=2 mesh from the
same seed and batches; saves the sharded state and restores it onto two other meshes. Prints JSON.
"""
import json
import sys
import tempfile

import jax
import numpy as np

from mslam_jax import checkpoints
from mslam_jax import optimizers
from mslam_jax import partitioning
from mslam_jax import trainer as trainer_lib
from tests.trainer import standin


class PairedRows(standin.SyntheticIterator):
  """Rows 2j and 2j+1 equal: with 2 micro-batches (rows i, i+2, ...) each one is the same as the
  de-duplicated batch, so accumulation must reproduce the full-batch step."""

  def __next__(self):
    return jax.tree.map(lambda x: np.repeat(x[::2], 2, axis=0), super().__next__())


def build(mesh, num_microbatches=1, iterator=None, model=None):
  iterator = iterator or standin.SyntheticIterator()
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), iterator.global_batch(0))
  optimizer = optimizers.make_optimizer(peak_learning_rate=1e-2, warmup_steps=3)
  return trainer_lib.Trainer(model or standin.StandInModel(), optimizer, mesh, spec,
                             num_microbatches=num_microbatches), iterator


def train_accumulated(mesh, steps, num_microbatches):
  # No random frame masking, so that micro-batches with their own keys see the same inputs.
  trainer, iterator = build(mesh, num_microbatches, PairedRows(),
                            standin.StandInModel(mask_prob=0.0))
  state = trainer.init_state()
  losses = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, trainer.shard_batch(next(iterator)))
    losses.append(float(metrics["loss"]))
  return losses, jax.tree.map(np.asarray, state.params)


def train(mesh, steps):
  trainer, iterator = build(mesh)
  state = trainer.init_state()
  init_params = jax.tree.map(np.asarray, state.params)
  losses = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, trainer.shard_batch(next(iterator)))
    losses.append(float(metrics["loss"]))
  return trainer, state, losses, init_params


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  steps = int(sys.argv[1])
  devices = jax.devices()
  assert len(devices) == 8, devices
  one = partitioning.make_mesh(1, 1, 1, devices=devices[:1])
  eight = partitioning.make_mesh(2, 2, 2, devices=devices)
  _, state1, losses1, init1 = train(one, steps)
  trainer8, state8, losses8, init8 = train(eight, steps)

  # Which parameters the 8-device state really splits (per-device shard smaller than the whole).
  sharded = [jax.tree_util.keystr(path) for path, x in
             jax.tree_util.tree_flatten_with_path(state8.params)[0]
             if x.addressable_shards[0].data.size < x.size]
  opt_sharded = sum(1 for x in jax.tree.leaves(state8.opt_state)
                    if x.addressable_shards[0].data.size < x.size)

  # Save on the 8-device mesh; restore onto one device and onto data=1, fsdp=8, model=1.
  final8 = jax.tree.map(np.asarray, state8.params)
  restore_diffs = {}
  with tempfile.TemporaryDirectory() as directory:
    ckpt = checkpoints.Checkpointer(directory, save_every=1)
    ckpt.save(steps, state8, {"position": steps}, force=True)
    ckpt.wait()
    for name, mesh in (("one_device", one),
                       ("fsdp8", partitioning.make_mesh(1, 8, 1, devices=devices))):
      target, _ = build(mesh)
      restored, data_state = ckpt.restore(None, target.abstract_state_sharded)
      assert data_state == {"position": steps}, data_state
      assert int(restored.step) == steps
      first = jax.tree.leaves(restored.params)[0]
      assert first.sharding.mesh.shape == mesh.shape
      restore_diffs[name] = max_diff(final8, restored.params)
    ckpt.close()

  accumulated = {k: train_accumulated(eight, 3, k) for k in (1, 2)}

  print("RESULT " + json.dumps({
      "accum_losses_1": accumulated[1][0], "accum_losses_2": accumulated[2][0],
      "accum_param_diff": max_diff(accumulated[1][1], accumulated[2][1]),
      "losses_1": losses1, "losses_8": losses8,
      "init_param_diff": max_diff(init1, init8),
      "final_param_diff": max_diff(state1.params, final8),
      "sharded_params": sharded, "sharded_opt_leaves": opt_sharded,
      "restore_diffs": restore_diffs,
  }))


if __name__ == "__main__":
  main()
