"""The run directory and its Orbax checkpoints: the one module every command goes through to list,
select and restore them.

A run directory (MODEL_DIR) is what `mslam train` writes, what `mslam convert from-hf` writes (a
converted w2v-BERT 2.0 model: one checkpoint, step 0, holding only "params") and what a
fine-tuning run starts from:

  MODEL_DIR/operative_config.gin    the run's gin config (config.parse_run_config reads it back)
  MODEL_DIR/checkpoints/<step>/     one checkpoint per saved step (latest N kept)

The train state (params, optimizer state, step, RNG, non-finite counters) and the data
iterator's position are saved asynchronously. Layout of MODEL_DIR/checkpoints/<step>/:
  state/              the train state (Orbax PyTree, sharded arrays written by all processes)
  data_state/         process_<i>.json: each process's iterator position (every process reads its
                      own shard of the data, so each keeps its own position); its bytes values
                      (the tf.data iterator's own checkpoint) in process_<i>.<key>.bin

Restoring takes the *target* shardings, so a checkpoint written on one mesh restores onto another.
"""
import base64
import dataclasses
import json
import logging
import os
import re
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_args
from orbax.checkpoint._src.futures import future
from orbax.checkpoint._src.handlers import async_checkpoint_handler

from mslam_jax import storage

STATE_ITEM = "state"
DATA_ITEM = "data_state"
CHECKPOINTS_SUBDIR = "checkpoints"


def _encode_data_state(value: Any) -> tuple[dict, dict[str, bytes]]:
  """Iterator states may be bytes (e.g. tf.data / grain) or JSON-able objects; a dict's bytes
  values (a tf.data iterator checkpoint: megabytes) go to files of their own, not into the JSON."""
  if isinstance(value, (bytes, bytearray)):
    return {"kind": "bytes", "value": base64.b64encode(bytes(value)).decode("ascii")}, {}
  if isinstance(value, dict):
    blobs = {k: bytes(v) for k, v in value.items() if isinstance(v, (bytes, bytearray))}
    if blobs:
      rest = {k: v for k, v in value.items() if k not in blobs}
      return {"kind": "json", "value": rest, "blobs": sorted(blobs)}, blobs
  return {"kind": "json", "value": value}, {}


def _decode_data_state(record: dict, read_blob=None) -> Any:
  if record["kind"] == "bytes":
    return base64.b64decode(record["value"])
  value = record["value"]
  for key in record.get("blobs", ()):
    value[key] = read_blob(key)
  return value


class DataStateHandler(async_checkpoint_handler.AsyncCheckpointHandler):
  """Writes each process's data-iterator state to its own JSON file in the checkpoint."""

  def _filename(self, process_index: int | None = None) -> str:
    index = jax.process_index() if process_index is None else process_index
    return f"process_{index}.json"

  def _blob_filename(self, key: str) -> str:
    return self._filename().replace(".json", f".{key}.bin")

  def _write(self, directory: epath.Path, record: dict, blobs: dict[str, bytes]) -> None:
    for key, data in blobs.items():
      (directory / self._blob_filename(key)).write_bytes(data)
    (directory / self._filename()).write_text(json.dumps(record))

  async def async_save(self, directory: epath.Path, args: "DataStateSave"):
    record, blobs = _encode_data_state(args.state)

    async def write():
      self._write(directory, record, blobs)

    return [future.CommitFutureAwaitingContractedSignals(write(), name="data_state_save")]

  def save(self, directory: epath.Path, args: "DataStateSave"):
    self._write(directory, *_encode_data_state(args.state))

  def restore(self, directory: epath.Path, args: "DataStateRestore | None" = None) -> Any:
    path = directory / self._filename()
    if not path.exists():
      raise FileNotFoundError(
          f"no data-iterator state for process {jax.process_index()} at {path}: the checkpoint was "
          "written by a run with fewer processes")
    return _decode_data_state(json.loads(path.read_text()),
                              lambda key: (directory / self._blob_filename(key)).read_bytes())


@checkpoint_args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(checkpoint_args.CheckpointArgs):
  state: Any


@checkpoint_args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(checkpoint_args.CheckpointArgs):
  pass


absolute = storage.absolute  # a local path made absolute; gs://... kept as it is


class Checkpointer:
  """An Orbax CheckpointManager for train state + data position, keeping the last `max_to_keep`."""

  def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = absolute(directory)
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

  def is_due(self, step: int) -> bool:
    """Whether save(step) will write a checkpoint (without force)."""
    return step not in self._manager.all_steps() and self._manager.should_save(step)

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

  def check_compatible(self, step: int, abstract_state: Any) -> None:
    """ValueError naming the leaves whose shape, dtype or presence differ between checkpoint `step`
    and `abstract_state` (a changed model or optimizer), before any array is read."""
    tree = _tree_metadata(epath.Path(self.directory) / str(step) / STATE_ITEM)
    saved = {jax.tree_util.keystr(p): (tuple(m.shape), str(m.dtype))
             for p, m in jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(m, "shape")}
    if not saved:
      raise FileNotFoundError(f"checkpoint {step} holds no readable train-state metadata")
    wanted = {jax.tree_util.keystr(p): (tuple(a.shape), str(a.dtype)) for p, a in
              jax.tree_util.tree_flatten_with_path(flax.serialization.to_state_dict(abstract_state))[0]}
    problems = [f"{k}: checkpoint {saved[k][0]} {saved[k][1]}, this config {wanted[k][0]} {wanted[k][1]}"
                for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]
    problems += [f"{k}: only in the checkpoint" for k in sorted(set(saved) - set(wanted))]
    problems += [f"{k}: not in the checkpoint" for k in sorted(set(wanted) - set(saved))]
    if problems:
      problems.sort(key=lambda p: not p.startswith("['params']"))  # the model's own first
      more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
      raise ValueError(f"the train state of this config does not match checkpoint {step}: "
                       f"{'; '.join(problems[:3])}{more}")

  def restore_newest_intact(self, abstract_state: Any, check_data_state=None) -> tuple[int, Any, Any] | None:
    """(step, state, data state) of the newest checkpoint that restores; None when there is none.

    A checkpoint that cannot be read (truncated arrays, missing or garbled files) is moved to
    MODEL_DIR/checkpoints_damaged/ (kept for a post-mortem, out of the way of the step numbers this
    run will save again) and the previous one is tried, with a warning naming both. A checkpoint of
    another config (ValueError from `check_compatible` or `check_data_state(data_state)`) is not
    damage: that error propagates.
    """
    steps = sorted(self.all_steps(), reverse=True)
    for index, step in enumerate(steps):
      try:
        self.check_compatible(step, abstract_state)
      except ValueError:
        raise
      except Exception as e:  # pylint: disable=broad-except  (unreadable metadata: damage)
        self._set_aside(step, e, steps[index + 1:])
        continue
      try:
        state, data_state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e, steps[index + 1:])
        continue
      if check_data_state is not None:
        check_data_state(data_state)
      return step, state, data_state
    return None

  def _set_aside(self, step: int, error: Exception, older: list[int]) -> None:
    damaged = epath.Path(self.directory).parent / (CHECKPOINTS_SUBDIR + "_damaged")  # local or gs://
    damaged.mkdir(parents=True, exist_ok=True)
    target = damaged / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = damaged / f"{step}.{suffix}"
    if jax.process_index() == 0:  # one host moves it; the others fall back alike
      try:
        (epath.Path(self.directory) / str(step)).rename(target)
      except FileNotFoundError:
        pass
    self._manager.reload()
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
    logging.warning("Checkpoint %d in %s cannot be restored (%s); moved it to %s and %s", step,
                    self.directory, reason, target,
                    f"falling back to checkpoint {older[0]}" if older else "no older checkpoint is left")

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _tree_metadata(item_dir: Any) -> Any:
  """The shapes and dtypes of a saved PyTree item (e.g. CHECKPOINT/state), read by its handler.

  `Checkpointer.metadata` would also read step metadata inside the item directory, where Orbax
  never writes it (it sits one level up, beside the items), and warn "Metadata file does not exist"
  at every restore. Unreadable metadata (a damaged checkpoint) raises FileNotFoundError.
  """
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(epath.Path(item_dir))
  except (FileNotFoundError, NotImplementedError, ValueError, TypeError) as e:
    raise FileNotFoundError(f"{item_dir} holds no readable metadata ({e})") from e
  finally:
    handler.close()
  return getattr(metadata, "tree", metadata)


def load_state_dict(step_dir: str, item: str = STATE_ITEM) -> Any:
  """A checkpoint's train state as nested dicts of arrays on this process's first device.

  For tools (evaluation, export) that run on one device whatever mesh wrote the checkpoint: Orbax
  restores onto the shardings we give it, so a checkpoint from a 256-chip mesh loads here too.
  """
  path = epath.Path(step_dir) / item
  tree = _tree_metadata(path)
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return checkpointer.restore(path, target)


# -- the run directory -----------------------------------------------------------------------------

def checkpoints_dir(model_dir: str) -> str:
  return os.path.join(model_dir, CHECKPOINTS_SUBDIR)


def step_dir(model_dir: str, step: int) -> str:
  """MODEL_DIR/checkpoints/<step>."""
  return os.path.join(absolute(model_dir), CHECKPOINTS_SUBDIR, str(step))


def checkpoint_steps(model_dir: str) -> list[int]:
  """Finished checkpoints of a run (Orbax renames a checkpoint to its bare step once committed)."""
  directory = epath.Path(checkpoints_dir(model_dir))
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if re.fullmatch(r"\d+", p.name) and (p / STATE_ITEM).is_dir())


def select_steps(model_dir: str, which: str | int | None = "latest") -> list[int]:
  """'latest' (or None), 'all', or one step number; FileNotFoundError when there is none."""
  steps = checkpoint_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoints under {checkpoints_dir(model_dir)}")
  if which is None or which == "latest":
    return steps[-1:]
  if which == "all":
    return steps
  try:
    step = int(which)
  except ValueError:
    raise ValueError(f"bad checkpoint step {which!r}: expected latest, all or a step number") from None
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {model_dir} (have {steps})")
  return [step]


def resolve_checkpoint(path: str, step: int | None = None) -> tuple[str | None, str]:
  """(run directory or None, step directory) of a run directory (its latest step, or `step`) or of
  one checkpoint's directory."""
  path = absolute(path)
  if epath.Path(checkpoints_dir(path)).is_dir():
    return path, step_dir(path, select_steps(path, step)[0])
  if epath.Path(path, STATE_ITEM).is_dir():
    parent = os.path.dirname(path)
    run_dir = os.path.dirname(parent) if os.path.basename(parent) == CHECKPOINTS_SUBDIR else None
    return run_dir, path
  raise FileNotFoundError(f"{path} is neither a run directory (with {CHECKPOINTS_SUBDIR}/) nor a checkpoint "
                          f"directory (with {STATE_ITEM}/)")


def load_params(checkpoint_dir: str) -> Any:
  """The "params" of one checkpoint's state (a training run's or a converted one) on this process'
  first device, whatever mesh wrote it; the optimizer state and the rest are never read (Orbax
  partial restore)."""
  path = os.path.join(absolute(checkpoint_dir), STATE_ITEM)
  tree = _tree_metadata(path)
  checkpointer = ocp.PyTreeCheckpointer()
  if "params" not in tree:
    raise ValueError(f"{path} holds no params (keys: {sorted(tree)})")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                   tree["params"])}
  args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                partial_restore=True)
  return checkpointer.restore(path, args=args)["params"]


def restore_params(model_dir: str, step: int | str | None = "latest") -> tuple[Any, int]:
  """(params, step) of a run's checkpoint (`select_steps` vocabulary; 'all' is not one step)."""
  chosen = select_steps(model_dir, step)[-1]
  logging.info("Restoring the parameters of step %d of %s", chosen, model_dir)
  return load_params(step_dir(model_dir, chosen)), chosen


def save_params_checkpoint(model_dir: str, params: Any, step: int = 0) -> str:
  """Writes {"params": params} as MODEL_DIR/checkpoints/<step>/state (an Orbax PyTree), the layout
  `load_params` reads (e.g. a converted w2v-BERT 2.0 model). Returns the step directory."""
  directory = os.path.join(absolute(model_dir), CHECKPOINTS_SUBDIR)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, item_names=(STATE_ITEM,), options=options) as manager:
    if step in manager.all_steps():
      raise FileExistsError(f"{directory} already holds step {step}; choose an empty --out directory")
    manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave({"params": params})}))
    manager.wait_until_finished()
  return os.path.join(directory, str(step))


def check_corpus(checkpoint_dir: str, corpus_dir: str, run_dir: str | None = None) -> None:
  """ValueError, naming both corpora, when `corpus_dir`'s vocabulary is not the one the checkpoint
  was trained with (its data state records the corpus fingerprint): token ids would mean other
  characters and every score would be noise. Checkpoints that recorded none pass."""
  path = epath.Path(absolute(checkpoint_dir), DATA_ITEM, "process_0.json")
  if not path.exists():
    return
  value = json.loads(path.read_text()).get("value")
  trained = (value.get("config") or {}).get("corpus") if isinstance(value, dict) else None
  if not trained:
    return
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  given = builtin_corpus.corpus_fingerprint(corpus_dir)
  if given["vocabulary"] == trained.get("vocabulary"):
    return
  trained_dir = None
  if run_dir:
    from mslam_jax import resume_checks  # pylint: disable=g-import-not-at-top
    text = resume_checks.read_operative_config(run_dir)
    trained_dir = resume_checks.bindings(text).get("CORPUS_DIR", "").strip("'\"") if text else None
  raise ValueError(
      f"{corpus_dir} (vocabulary {given['vocabulary']}) is not the corpus {checkpoint_dir} was trained on "
      f"({trained_dir or 'its CORPUS_DIR'}, vocabulary {trained['vocabulary']}): its token ids mean other "
      "characters; pass --corpus_dir of the training corpus")
