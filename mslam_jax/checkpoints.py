"""Orbax checkpoints of the whole run: train state (params, optimizer state, step, RNG, non-finite
counters) and the data iterator's position, saved asynchronously, keeping the last N.

Layout of MODEL_DIR/checkpoints/<step>/:
  state/              the train state (Orbax PyTree, sharded arrays written by all processes)
  data_state/         process_<i>.json: each process's iterator position (every process reads its
                      own shard of the data, so each keeps its own position)

Restoring takes the *target* shardings, so a checkpoint written on one mesh restores onto another.
"""
import base64
import dataclasses
import json
import logging
import os
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_args
from orbax.checkpoint._src.futures import future
from orbax.checkpoint._src.handlers import async_checkpoint_handler

STATE_ITEM = "state"
DATA_ITEM = "data_state"


def _encode_data_state(value: Any) -> dict:
  """Iterator states may be bytes (e.g. tf.data / grain) or JSON-able objects."""
  if isinstance(value, (bytes, bytearray)):
    return {"kind": "bytes", "value": base64.b64encode(bytes(value)).decode("ascii")}
  return {"kind": "json", "value": value}


def _decode_data_state(record: dict) -> Any:
  if record["kind"] == "bytes":
    return base64.b64decode(record["value"])
  return record["value"]


class DataStateHandler(async_checkpoint_handler.AsyncCheckpointHandler):
  """Writes each process's data-iterator state to its own JSON file in the checkpoint."""

  def _filename(self, process_index: int | None = None) -> str:
    index = jax.process_index() if process_index is None else process_index
    return f"process_{index}.json"

  async def async_save(self, directory: epath.Path, args: "DataStateSave"):
    text = json.dumps(_encode_data_state(args.state))

    async def write():
      (directory / self._filename()).write_text(text)

    return [future.CommitFutureAwaitingContractedSignals(write(), name="data_state_save")]

  def save(self, directory: epath.Path, args: "DataStateSave"):
    (directory / self._filename()).write_text(json.dumps(_encode_data_state(args.state)))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    path = directory / self._filename()
    if not path.exists():
      raise FileNotFoundError(
          f"no data-iterator state for process {jax.process_index()} at {path}: the checkpoint was "
          "written by a run with fewer processes")
    return _decode_data_state(json.loads(path.read_text()))


@checkpoint_args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(checkpoint_args.CheckpointArgs):
  state: Any


@checkpoint_args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(checkpoint_args.CheckpointArgs):
  pass


class Checkpointer:
  """An Orbax CheckpointManager for train state + data position, keeping the last `max_to_keep`."""

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.save_every = save_every
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=max(1, save_every), create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=(STATE_ITEM, DATA_ITEM), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any = None, *, force: bool = False) -> bool:
    """Saves (asynchronously) when `step` is due or `force`; returns whether a save started."""
    if step in self._manager.all_steps():
      return False
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            DATA_ITEM: DataStateSave(data_state),
        }),
        force=force)
    if saved:
      logging.info("Checkpoint at step %d -> %s%s", step, self.directory,
                   " (writing in the background)" if not force else "")
    return saved

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, Any]:
    """Restores `step` (latest when None) onto the shardings carried by `abstract_state`.

    `abstract_state` is the train state as ShapeDtypeStructs with `.sharding` set (for the mesh
    of *this* run, which may differ from the one that wrote the checkpoint).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(flax.serialization.to_state_dict(abstract_state)),
            DATA_ITEM: DataStateRestore(),
        }))
    state = flax.serialization.from_state_dict(abstract_state, restored[STATE_ITEM])
    logging.info("Restored step %d from %s", step, self.directory)
    return state, restored[DATA_ITEM]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def load_state_dict(step_dir: str, item: str = STATE_ITEM) -> Any:
  """A checkpoint's train state as nested dicts of arrays on this process's first device.

  For tools (evaluation, export) that run on one device whatever mesh wrote the checkpoint: Orbax
  restores onto the shardings we give it, so a checkpoint from a 256-chip mesh loads here too.
  """
  path = epath.Path(step_dir) / item
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  tree = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return checkpointer.restore(path, target)
