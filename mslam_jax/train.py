"""gin-configured pre-training: the `train` configurable that `mslam train` calls.

  mslam train --gin_file=models/tiny.gin --gin_file=runs/pretrain.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000 --gin.CORPUS_DIR="'/path/to/corpus'"

A run on a MODEL_DIR that holds checkpoints resumes from the latest by itself (parameters,
optimizer state, RNG, step and the data iterator's position), so a restarted job sees exactly the
batches an uninterrupted one would. SIGTERM (preemption), SIGINT (Ctrl-C) and SIGHUP save a
checkpoint and exit with 0.
Multi-host: pass --coordinator_address/--num_processes/--process_id (or --distributed_auto on
TPU pods / SLURM) and start the same command on every host; each feeds its shard of the batch.

Exit codes: 0 done (or preempted and saved), 2 bad configuration, 3 stopped on non-finite losses.
"""
import json
import logging
import os
import signal
import time
from typing import Any, Callable, Iterator, Sequence

import gin
from etils import epath

from mslam_jax import config
from mslam_jax import resume_checks
from mslam_jax import storage

# A health cosine (frames within an utterance, pooled vectors across utterances) above this is a
# collapsed encoder: the run's log says so, and benchmarks read it the same way.
COLLAPSE_COSINE = 0.99


class NonFiniteLossError(RuntimeError):
  """K updates in a row had a non-finite loss or gradient."""


# -- metric writers ----------------------------------------------------------------------------

class JsonLinesWriter:
  """clu MetricWriter that appends one JSON object per step to a file (read by tests and plots).

  A remote file (gs://..., any etils.epath scheme) cannot be appended to: it is kept in memory and
  rewritten whole on flush() and close(), and at most every `remote_every_s` seconds in between.
  """

  def __init__(self, path: str, remote_every_s: float = 30.0):
    self._path = epath.Path(path)
    self._remote = storage.is_remote(path)
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if self._remote:  # a resumed run's earlier records are kept
      self._lines = [self._path.read_text()] if self._path.exists() else []
      self._written, self._every, self._last = len(self._lines), remote_every_s, time.time()
    else:
      self._file = open(path, "a")

  def write_scalars(self, step: int, scalars) -> None:
    record = {"step": int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    if not self._remote:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
      return
    self._lines.append(json.dumps(record) + "\n")
    if time.time() - self._last >= self._every:
      self.flush()

  def flush(self) -> None:
    if not self._remote:
      self._file.flush()
    elif len(self._lines) != self._written:
      self._path.write_text("".join(self._lines))
      self._written, self._last = len(self._lines), time.time()

  def close(self) -> None:
    if self._remote:
      self.flush()
    else:
      self._file.close()

  def write_images(self, step, images): pass
  def write_videos(self, step, videos): pass
  def write_audios(self, step, audios, *, sample_rate): pass
  def write_texts(self, step, texts): pass
  def write_histograms(self, step, arrays, num_buckets=None): pass
  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None): pass
  def write_hparams(self, hparams): pass


class _Writers:
  """Fans scalars out to several writers (clu's MultiWriter without importing TensorFlow)."""

  def __init__(self, writers):
    self._writers = writers

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def make_writer(model_dir: str, primary: bool, tensorboard: bool):
  """TensorBoard (clu SummaryWriter) + MODEL_DIR/metrics.jsonl on process 0; nothing elsewhere."""
  if not primary:
    return _Writers([])
  writers = [JsonLinesWriter(os.path.join(model_dir, "metrics.jsonl"))]
  if tensorboard:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    writers.append(metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard")))
  return _Writers(writers)


# -- preemption --------------------------------------------------------------------------------

class PreemptionWatcher:
  """SIGTERM (preemption), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) -> save and exit.

  One process: a Python signal flag. Several: JAX's preemption service, when it runs, catches
  SIGTERM on any host and all agree on the step to stop at; the other signals (and SIGTERM when the
  service is off) set a flag that the hosts combine every `sync_every` steps (a tiny all-gather), so
  that every host stops at the same step. A second Ctrl-C stops at once, without a save.
  """
  SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

  def __init__(self, multi_process: bool, sync_every: int = 10):
    self._multi = multi_process
    self._sync_every = max(1, sync_every)
    self._service = multi_process and _preemption_service_on()
    self._requested = False
    self._previous = {}
    for signum in self.SIGNALS:
      if signum == signal.SIGTERM and self._service:
        continue  # the preemption service handles it on every host
      self._previous[signum] = signal.signal(signum, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning("Signal %s received: saving a checkpoint and exiting%s", signal.Signals(signum).name,
                    " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else "")
    self._requested = True
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)

  def should_stop(self, step: int) -> bool:
    if self._service:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if multihost_utils.reached_preemption_sync_point(step):
        return True
    if not self._multi:
      return self._requested
    if step % self._sync_every:
      return False
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return bool(np.max(multihost_utils.process_allgather(np.int32(self._requested))))

  def close(self) -> None:
    """Puts the signal handlers back (a run inside a longer-lived process, e.g. tests)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def _preemption_service_on() -> bool:
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    return distributed.global_state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


# -- the run -----------------------------------------------------------------------------------

def make_iterator(iterator_fn: Callable[..., Iterator], shard_index: int, num_shards: int):
  """Calls the gin-named iterator factory for this process's shard: SeqIO-style factories take
  `shard_info`, others `shard_index` / `num_shards`."""
  import inspect  # pylint: disable=g-import-not-at-top
  try:
    parameters = inspect.signature(iterator_fn).parameters
  except (TypeError, ValueError):
    parameters = {}
  if "shard_info" in parameters:
    import seqio  # pylint: disable=g-import-not-at-top
    return iterator_fn(shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards))
  return iterator_fn(shard_index=shard_index, num_shards=num_shards)


def _peek_batch(iterator) -> Any:
  """One batch's structure without losing its position."""
  spec = getattr(iterator, "element_spec", None)
  if spec is not None:
    return spec
  position = iterator.get_state()
  batch = next(iterator)
  iterator.set_state(position)
  return batch


@gin.configurable(denylist=["stop_after"])
def train(*,
          model_dir: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          model: Any = gin.REQUIRED,
          iterator_fn: Callable[..., Iterator] = gin.REQUIRED,
          optimizer: Any = None,
          mesh: Any = None,
          checkpoint_every: int = 1000,
          keep_checkpoints: int = 3,
          async_checkpoints: bool = True,
          log_every: int = 50,
          eval_every: int = 0,
          evaluators: Sequence[Any] = (),
          corpus_dir: str | None = None,
          initialize_params: Callable[[Any], Any] | None = None,
          max_consecutive_nonfinite: int = 5,
          health_every: int = 0,
          health_params: str = "encoder/shared",
          collapse_cosine: float = COLLAPSE_COSINE,
          progress_bar: bool = True,
          tensorboard: bool = True,
          log_config: bool = True,
          stop_after: int | None = None) -> dict:
  """Trains `model` on batches from `iterator_fn(shard_index=, num_shards=)` for `train_steps`.

  `optimizer` defaults to optimizers.make_optimizer() and `mesh` to partitioning.make_mesh().
  `initialize_params(params) -> params` runs once, on a fresh start only (never on resume): e.g.
  `@initialize_from_checkpoint` to start the encoder from a converted w2v-BERT 2.0 checkpoint. It
  receives the abstract parameters (ShapeDtypeStructs with their shardings) and returns them with
  the leaves it provides replaced by arrays; the model's initialization fills the others, and only
  those are computed (Trainer.init_state).
  Returns a summary dict (final step, non-finite count, why it stopped).

  Periodic evaluation: every `eval_every` steps the `evaluators` (evaluation/registry.py) run on the
  current parameters and `corpus_dir` through the same function as `mslam eval`; their figures go
  to the metrics under "eval/" and, as a sweep would write them, to MODEL_DIR/eval/step_<N>/.

  `log_config=False` writes MODEL_DIR/operative_config.gin without logging it (a fine-tuning job
  run by an evaluator).

  Health: every `health_every` steps (0: never; with length buckets, the next step whose batch has
  the iterator's main shapes) the step's batch is differentiated objective by objective and each
  one's gradient norm over the parameters under `health_params` is logged (`grad_norm/<objective>`). When the model's `health/frame_cosine` or `health/utterance_cosine`
  rises above `collapse_cosine`, the log says that the encoder is collapsing (once, and again when
  it falls back below).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top

  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import optimizers  # pylint: disable=g-import-not-at-top
  from mslam_jax import partitioning  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  if train_steps < 1 or checkpoint_every < 1 or max_consecutive_nonfinite < 1:
    raise ValueError("train.train_steps, train.checkpoint_every and "
                     "train.max_consecutive_nonfinite must be >= 1")
  primary = jax.process_index() == 0
  multi = jax.process_count() > 1
  optimizer = optimizer if optimizer is not None else optimizers.make_optimizer()
  mesh = mesh if mesh is not None else partitioning.make_mesh()

  iterator = make_iterator(iterator_fn, jax.process_index(), jax.process_count())
  iterator_spec = _peek_batch(iterator)
  batch_spec = partitioning.global_batch_spec(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), iterator_spec))
  trainer = trainer_lib.Trainer(model, optimizer, mesh, batch_spec)
  expected_rows = {}
  for path, (start, stop) in trainer.process_rows().items():
    per_process = stop - start
    expected_rows[path] = (jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    if (start, stop) != expected_rows[path]:
      raise ValueError(f"process {jax.process_index()} owns rows {start}:{stop} of {path}, but the "
                       "iterator shards by process index; use a mesh in process order")
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"),
                                  save_every=checkpoint_every, max_to_keep=keep_checkpoints,
                                  async_save=async_checkpoints)
  # The iterator's setup (e.g. register_builtin_corpus) runs lazily; run it now so that the
  # operative config records it (CORPUS_DIR among others) for `mslam eval` to read back.
  getattr(iterator, "ensure_setup", lambda: None)()
  # What changed since the run's last start (its operative config, rewritten below only once the
  # resume is accepted: a refused config must not replace the run's).
  changed = resume_checks.changes(resume_checks.read_operative_config(model_dir), gin.operative_config_str())

  latest = None
  if ckpt.all_steps():
    try:
      restored = ckpt.restore_newest_intact(trainer.abstract_state_sharded, iterator.set_state)
    except ValueError as e:
      hint = f" (changed since its last start: {resume_checks.describe(changed)})" if changed else ""
      raise ValueError(f"cannot resume {model_dir}{hint}: {str(e).rstrip('.')}. Use another MODEL_DIR for a new "
                       "config.") from None
    if restored is not None:
      latest, state, data_state = restored
      resume_checks.warn_about(changed, latest)
      logging.info("Resuming from step %d of %s", latest, model_dir)
  if log_config:
    config.log_operative_config(model_dir if primary else None)
  elif primary:  # written, not logged (e.g. a fine-tuning job inside an evaluation)
    config.write_operative_config(model_dir)
  if latest is None:
    given = None
    if initialize_params is not None:
      given = initialize_params(trainer.abstract_state_sharded.params)
    state = trainer.init_state(given)
    del given  # the state holds its own copy: no second copy of the loaded weights lives on
  start = int(jax.device_get(state.step))

  writer = make_writer(model_dir, primary, tensorboard)
  compiled = {}  # the evaluators' compiled programs, kept from one periodic evaluation to the next

  def evaluate(evaluators, model, params, step) -> dict:
    from mslam_jax.evaluation import base as eval_base  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import runner  # pylint: disable=g-import-not-at-top
    ctx = eval_base.EvalContext(
        model=model, params=params, step=step, model_dir=model_dir, corpus_dir=corpus_dir,
        out_dir=eval_base.step_eval_dir(model_dir, step) if primary else None, compiled=compiled)
    result = runner.evaluate_checkpoint(evaluators, ctx, source=checkpoints.step_dir(model_dir, step))
    if result.failed:
      logging.warning("Step %d: evaluator(s) %s failed; training goes on", step, result.failed)
    return {f"eval/{k}": v for k, v in result.metrics.items()}

  watcher = PreemptionWatcher(multi)
  summary = {"start_step": start, "final_step": start, "stopped": "done", "nonfinite_count": 0}
  bar = tqdm.tqdm(total=train_steps, initial=start, unit="step", dynamic_ncols=True,
                  disable=not (progress_bar and primary), desc="train")
  audio_seconds_total, t0 = 0.0, time.time()
  window = {"t": time.time(), "steps": 0, "audio": 0.0}
  collapsed: set[str] = set()  # health cosines above collapse_cosine at the last logged step

  def handle(step: int, metrics, audio_seconds: float) -> None:
    """Host side of step `step` (run one step late, so that dispatch stays ahead)."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    summary["nonfinite_count"] = int(metrics["nonfinite_count"])
    window["steps"] += 1
    window["audio"] += audio_seconds
    if metrics["nonfinite"]:
      logging.warning("Step %d: non-finite loss or gradient (loss=%s); update skipped "
                      "(%d skipped in all, %d in a row)", step, metrics["loss"],
                      metrics["nonfinite_count"], metrics["nonfinite_streak"])
    # Skipped steps are always written, so that the metrics show every one of them.
    if step % log_every == 0 or step == train_steps or metrics["nonfinite"]:
      elapsed = max(time.time() - window["t"], 1e-9)
      metrics["steps_per_sec"] = window["steps"] / elapsed
      metrics["audio_hours_per_sec"] = window["audio"] / 3600 / elapsed
      writer.write_scalars(step, metrics)
      window.update(t=time.time(), steps=0, audio=0.0)
      _warn_on_collapse(step, metrics, collapse_cosine, collapsed)
    if metrics["nonfinite_streak"] >= max_consecutive_nonfinite:
      raise NonFiniteLossError(
          f"{int(metrics['nonfinite_streak'])} non-finite losses in a row up to step {step} "
          f"(train.max_consecutive_nonfinite={max_consecutive_nonfinite}); the parameters "
          f"were not updated by them and the last checkpoint in {ckpt.directory} is intact")
    bar.set_postfix(loss=f"{metrics['loss']:.4g}",
                    audio_s_per_s=f"{audio_seconds_total / max(time.time() - t0, 1e-9):.3g}",
                    refresh=False)

  pending = None
  step = start
  main_shapes, health_due = _shapes(iterator_spec), False
  try:
    while step < train_steps:
      if watcher.should_stop(step):
        summary["stopped"] = "preempted"
        break
      if stop_after is not None and step - start >= stop_after:
        summary["stopped"] = "stop_after"
        break
      host_batch = next(iterator)
      # Every process feeds equal rows, so the global audio is this process's times the count.
      seconds = trainer_lib.audio_seconds(host_batch) * jax.process_count()
      batch = trainer.shard_batch(host_batch)
      state, metrics = trainer.train_step(state, batch)
      step += 1
      health_due = health_due or bool(health_every and step % health_every == 0)
      # On a batch of the spec's shapes only: a length bucket's would compile the check again.
      if health_due and _shapes(host_batch) == main_shapes:
        metrics = {**metrics, **trainer.objective_grad_norms(state, batch, params_under=health_params)}
        health_due = False
      audio_seconds_total += seconds
      if pending is not None:
        handle(*pending)
      pending = (step, metrics, seconds)
      bar.update(1)
      if ckpt.is_due(step):
        # A checkpoint never gets ahead of the metrics: a run killed after this save resumes after
        # a step whose metrics are already written.
        handle(*pending)
        pending = None
        writer.flush()  # (a remote metrics.jsonl is only rewritten now and then)
        ckpt.save(step, state, iterator.get_state())  # (the data state is only taken when saved)
      if eval_every and evaluators and step % eval_every == 0:
        writer.write_scalars(step, evaluate(evaluators, model, state.params, step))
    if pending is not None:
      handle(*pending)
      pending = None
    summary["final_step"] = step
    writer.flush()
    ckpt.save(step, state, iterator.get_state(), force=True)
  except NonFiniteLossError:
    summary["stopped"] = "nonfinite"
    raise
  finally:
    watcher.close()
    bar.close()
    writer.close()
    ckpt.close()
    summary["final_step"] = step
    summary["nonfinite_count"] = max(summary["nonfinite_count"], 0)
    logging.info("Training stopped at step %d (%s); %d non-finite updates skipped",
                 step, summary["stopped"], summary["nonfinite_count"])
  return summary


def _shapes(batch) -> list:
  import jax  # pylint: disable=g-import-not-at-top
  return [tuple(x.shape) for x in jax.tree.leaves(batch)]


def _warn_on_collapse(step: int, metrics: dict, threshold: float, collapsed: set[str]) -> None:
  """Warns when a health cosine crosses `threshold` and says when it falls back below it; `collapsed`
  (the keys above it now) carries the state between calls, so a long collapse is one line, not one
  per logged step."""
  for key, what in (("health/frame_cosine", "frames within an utterance"),
                    ("health/utterance_cosine", "pooled utterances of the batch")):
    if key not in metrics:
      continue
    if metrics[key] > threshold and key not in collapsed:
      collapsed.add(key)
      logging.warning("Step %d: the encoder is collapsing: mean cosine %.3f between %s (%s > %.2f)",
                      step, metrics[key], what, key, threshold)
    elif metrics[key] <= threshold and key in collapsed:
      collapsed.discard(key)
      logging.warning("Step %d: the encoder no longer collapses: mean cosine %.3f between %s (%s)",
                      step, metrics[key], what, key)

