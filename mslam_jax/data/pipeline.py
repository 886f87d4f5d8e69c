"""The three-stream step iterator: one dict of fixed-shape numpy arrays per training step, of the
batch contract's structure (mslam_jax/data/contract.py).

Each stream is a SeqIO Mixture (temperature-sampled over per-language Tasks), run through its
feature converter (mslam_jax.data.feature_converters) and batched with drop_remainder; the three
are zipped. Batch sizes in gin are global; each host yields `global / num_hosts` rows. By default
(`host_split="shard"`) each host reads only its shard of every Task
(`seqio.ShardInfo(jax.process_index(), jax.process_count())`); `host_split="slice"` makes every
host read all data and keep its rows of the global batch, so that the global batches are the same
for any number of hosts (for equivalence tests, or to resume on a different host count).

Length buckets (`make_step_iterator.paired_buckets` / `speech_buckets`). Padding every item to
the stream's longest length wastes the compute of the padding: the demo's pairs up to 4 s average
2.3 s. With buckets, a stream has a few shapes (batch_size, lengths), shorter ones with more rows;
an item goes to the first shape it fits, the main shape (the element spec, which init and AOT
compiles use) takes the rest. Each step's batch of the stream has ONE shape, drawn from a seeded
sequence that is the same on every host (the hosts' rows must form one global array), with
probabilities p_k ∝ share_k / batch_k so that every bucket's items are drawn at the rate the data
holds them (shares measured on `bucket_sample_items` items at start). The step compiles once per
shape. The price is one read of the stream per shape, each keeping its own items. Without
`repeat`, the stream ends when a drawn shape has no full batch left (a pass then misses the other
shapes' last items): buckets are for training streams.

Exact resume. The pipeline is deterministic: every random choice (file order, shuffle buffers,
mixture sampling, crop windows) is seeded from `seed`, and tf.data runs with
`deterministic=True`, so the k-th batch depends only on the config and k. `get_state()` returns
`{"position": k, "fingerprint": ..., "config": ..., "pipeline": bytes}`: the JSON part is the same
on every host; "pipeline" is this host's tf.data iterator checkpoint (read positions in every
file, shuffle buffers, mixture sampler, prefetched batches). `set_state(state)` restores that
checkpoint, so a resume costs the same at any position (a few seconds to rebuild the pipeline);
the next batch is the one an uninterrupted run would have produced. Without it (an older state,
`checkpoint_pipeline=False`) the pipeline is rebuilt and skips k * B items per stream, reading
them once: a cost that grows with k (about 1.7k items/s on 2 CPU cores).

The price of the pipeline checkpoint is its size: the per-Task shuffle buffers hold decoded
float32 audio, so it grows with languages x buffer size x clip length (8-10 MB for the tests' tiny
corpus; about 64 clips x 5 s x 64 kB/s = 20 MB per audio Task, i.e. GBs per host with a hundred
languages). Runs at that scale shrink the buffers (register_builtin_corpus.shuffle_buffer_sizes)
or set make_step_iterator.checkpoint_pipeline = False and pay the skip instead.

The fingerprint covers the data config and, when `corpus_dir` is given (data/builtin.gin binds
CORPUS_DIR), the corpus' manifest and vocabulary by content: a run resumed on another build of
its corpus is refused, naming the changed fields.

Start-up grows with the number of Tasks: tf.data traces a few functions per Task when the
pipeline is built, and each Task opens its files and fills its shuffle buffer the first time the
Mixture samples it. On 2 busy CPU cores a few dozen Tasks start in seconds; ~300 Tasks take
about 1.5 minutes to build and another minute until every Task has been touched, after which the
step rate is close to that of a few Tasks (benchmarks/input_pipeline_benchmark.py).
"""
import base64
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import gin
import numpy as np
import seqio
import tensorflow as tf

from mslam_jax.data import contract
from mslam_jax.data.contract import audio_seconds  # pylint: disable=unused-import  (one definition)
from mslam_jax.data import feature_converters
from mslam_jax.data import preprocessors
from mslam_jax.data import records

STREAMS = records.STREAMS
STATE_FORMAT = "mslam_jax.step_iterator"
STATE_FILE = "data_iterator.json"
PIPELINE_KEY = "pipeline"  # get_state()'s tf.data iterator checkpoint (bytes)
# "shard": each host reads 1/num_hosts of every Task (scales). "slice": each host reads everything
# and keeps its rows of the global batch, so the global batches do not depend on the number of
# hosts (multi-process equivalence tests; resuming on another host count).
HOST_SPLITS = ("shard", "slice")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """One stream of a step: which Mixture, its global batch size, lengths and over-length policy."""
  mixture: str
  batch_size: int  # global, over all hosts
  lengths: Mapping[str, int]  # task feature -> fixed length ("audio" samples, "tokens")
  over_length: str
  # The stream's feature converter, called as converter(over_length=, seed=, name=); None: the
  # stream's own (feature_converters.CONVERTERS). A task with its own example format (e.g. the
  # fine-tuning tasks of evaluation/xtreme_s_data.py) brings one: its MODEL_FEATURES and
  # get_model_feature_lengths give the batch's spec, its describe() enters the fingerprint.
  converter: Optional[Callable[..., seqio.FeatureConverter]] = None
  # Length buckets: shorter shapes [(batch_size, lengths), ...] before the main one (batch_size,
  # lengths). An item goes to the first shape it fits; the main shape takes the rest under the
  # over-length policy. Each step's batch of the stream has one bucket's shape (module docstring).
  buckets: Tuple[Tuple[int, Mapping[str, int]], ...] = ()

  def shapes(self) -> Tuple[Tuple[int, Mapping[str, int]], ...]:
    """Every (batch_size, lengths) the stream yields, the main shape last."""
    return tuple(self.buckets) + ((self.batch_size, self.lengths),)

  def model_lengths(self) -> Dict[str, int]:
    out = {}
    for key, n in self.lengths.items():
      out[key] = n
      out[f"{key}_mask"] = n
    return out


def _stream_seed(seed: int, stream: str) -> int:
  # Streams get unrelated seeds so that the same seed does not correlate e.g. speech and paired order.
  digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


_STALL_MARKER = "mslam_jax: no item within the lengths in the stream "


def _tasks_of(name: str) -> list:
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError:
    return []
  return [provider] if isinstance(provider, seqio.Task) else list(provider.tasks)


def default_shard_info() -> seqio.ShardInfo:
  import jax  # pylint: disable=g-import-not-at-top
  return seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())


def _rates(provider) -> Dict[str, float]:
  if isinstance(provider, seqio.Task):
    return {provider.name: 1.0}
  total = sum(provider.get_rate(t) for t in provider.tasks)
  return {t.name: provider.get_rate(t) / total for t in provider.tasks}


def _converter_spec(converter: seqio.FeatureConverter, batch_size: int, lengths: Mapping[str, int]
                    ) -> Dict[str, Any]:
  """{key: jax.ShapeDtypeStruct} of one stream that `converter` makes, batched."""
  import jax  # pylint: disable=g-import-not-at-top  (the data pipeline runs without JAX)
  model_lengths = converter.get_model_feature_lengths(dict(lengths, lang=0))
  return {k: jax.ShapeDtypeStruct((batch_size,) + ((n,) if converter.MODEL_FEATURES[k].rank else ()),
                                  converter.MODEL_FEATURES[k].dtype.as_numpy_dtype)
          for k, n in sorted(model_lengths.items())}


class StepIterator:
  """Iterator over training steps; see the module docstring for the batch layout and resume."""

  def __init__(self, streams: Mapping[str, StreamConfig], split: str = "train", seed: int = 0,
               shuffle: bool = True, repeat: bool = True,
               shard_info: Optional[seqio.ShardInfo] = None,
               setup: Optional[Callable[[], Any]] = None, prefetch: int = 2,
               strict_resume: bool = True, log_every: int = 1000, host_split: str = "shard",
               num_threads: int = 0, max_consecutive_drops: int = 2_000,
               checkpoint_pipeline: bool = True, corpus_dir: Optional[str] = None,
               bucket_sample_items: int = 2048):
    unknown = set(streams) - set(STREAMS)
    if unknown:
      raise ValueError(f"unknown streams {sorted(unknown)}; streams are {STREAMS}")
    if not streams:
      raise ValueError("no stream has a positive batch size (make_step_iterator.*_batch_size)")
    self.streams = {s: streams[s] for s in STREAMS if s in streams}
    self._shard_info = None
    if shard_info is not None:
      self._set_shard_info(shard_info)
    if host_split not in HOST_SPLITS:
      raise ValueError(f"make_step_iterator.host_split={host_split!r} is not one of {HOST_SPLITS}")
    self.host_split = host_split
    self.num_threads = num_threads
    self.max_consecutive_drops = max_consecutive_drops
    self.checkpoint_pipeline = checkpoint_pipeline
    self.corpus_dir = corpus_dir
    self._corpus_fingerprint = None
    self._pending_pipeline = None
    self.split = split
    self.seed = int(seed)
    self.shuffle = shuffle
    self.repeat = repeat
    self.prefetch = prefetch
    self.bucket_sample_items = bucket_sample_items
    self.strict_resume = strict_resume
    self._setup = setup
    self._setup_done = setup is None
    self._position = 0
    self._iterator = None
    self.log_every = log_every
    self._logged_counts = {}
    for stream, config in self.streams.items():
      self._check_buckets(stream, config)
    self._bucket_probabilities = {}  # stream -> per-shape step probabilities, from the data
    self.converters = {
        s: (c.converter or feature_converters.CONVERTERS[s])(over_length=c.over_length,
                                                             seed=_stream_seed(self.seed, s),
                                                             name=f"{c.mixture}@{split}")
        for s, c in self.streams.items()}

  def _set_shard_info(self, shard_info: seqio.ShardInfo) -> None:
    for stream, config in self.streams.items():
      for batch_size, _ in config.shapes():
        if batch_size % shard_info.num_shards:
          raise ValueError(
              f"make_step_iterator.{stream}_batch_size (or a {stream}_buckets size) = {batch_size} (global) "
              f"is not divisible by the number of hosts ({shard_info.num_shards})")
    self._shard_info = shard_info

  @staticmethod
  def _check_buckets(stream: str, config: StreamConfig) -> None:
    binding = f"make_step_iterator.{stream}_buckets"
    if config.buckets and config.converter is not None:
      raise ValueError(f"{binding}: length buckets need the stream's own feature converter")
    for batch_size, lengths in config.buckets:
      if batch_size <= 0 or set(lengths) != set(config.lengths) or any(
          not 0 < lengths[k] <= config.lengths[k] for k in lengths):
        raise ValueError(
            f"{binding}: the bucket {batch_size} x {dict(lengths)} needs a positive batch size and "
            f"positive lengths of {sorted(config.lengths)} no longer than the stream's {dict(config.lengths)}")

  @property
  def shard_info(self) -> seqio.ShardInfo:
    """This host's shard; resolved from JAX on first use, so that building the iterator before
    jax.distributed.initialize() does not fix a wrong process index."""
    if self._shard_info is None:
      self._set_shard_info(default_shard_info())
    return self._shard_info

  # -- shapes, without reading data -----------------------------------------------------------
  def local_batch_size(self, stream: str, batch_size: Optional[int] = None) -> int:
    """This host's rows of `stream`'s main shape, or of a global `batch_size` (a bucket's)."""
    batch_size = self.streams[stream].batch_size if batch_size is None else batch_size
    return batch_size // self.shard_info.num_shards

  def _spec(self, global_shapes: bool):
    sizes = {s: c.batch_size if global_shapes else self.local_batch_size(s) for s, c in self.streams.items()}
    spec = contract.batch_spec({s: (sizes[s], c.lengths) for s, c in self.streams.items() if c.converter is None})
    for stream, config in self.streams.items():
      if config.converter is not None:  # a task's own converter: the model features it declares
        spec[stream] = _converter_spec(self.converters[stream], sizes[stream], config.lengths)
    return {s: spec[s] for s in self.streams if s in spec}

  @property
  def element_spec(self) -> Dict[str, Dict[str, Any]]:
    """{stream: {key: jax.ShapeDtypeStruct}} of the batches this host yields."""
    return self._spec(global_shapes=False)

  @property
  def global_element_spec(self) -> Dict[str, Dict[str, Any]]:
    """The same over all hosts (global batch sizes), e.g. for jax.eval_shape of model.init."""
    return self._spec(global_shapes=True)

  def dummy_batch(self, global_shapes: bool = False) -> Dict[str, Dict[str, np.ndarray]]:
    """Zeros of the batch's shapes with all-valid masks (for init and compilation)."""
    return contract.zeros_batch(self._spec(global_shapes))

  # -- the tf.data pipeline -------------------------------------------------------------------
  def ensure_setup(self) -> None:
    if not self._setup_done:
      self._setup()
      self._setup_done = True

  def _provider(self, stream: str):
    """The stream's Mixture, minus Tasks too small to give every host one item of the split."""
    self.ensure_setup()
    name = self.streams[stream].mixture
    try:
      provider = seqio.get_mixture_or_task(name)
    except ValueError as e:
      raise ValueError(f"{e} Register the corpus first (e.g. make_step_iterator.setup = "
                       f"@register_builtin_corpus) or fix make_step_iterator.{stream}_mixture") from None
    if isinstance(provider, seqio.Task):
      return provider
    num_shards = self._read_shard_info().num_shards if self._read_shard_info() else 1
    keep, dropped = [], []
    for task in provider.tasks:
      if self.split not in task.splits:
        continue
      n = task.num_input_examples(self.split)
      (keep if n is None or n >= num_shards else dropped).append(task)
    if dropped:
      logging.warning("%s: %d task(s) with fewer %s examples than hosts (%d) left out: %s", name,
                      len(dropped), self.split, num_shards, [t.name for t in dropped])
    if not keep:
      raise ValueError(f"mixture {name} has no task with a {self.split!r} split for {num_shards} host(s)")
    if len(keep) == len(provider.tasks):
      return provider
    return seqio.Mixture(f"{name}_{self.split}_shardable", [(t, provider.get_rate(t)) for t in keep])

  def _read_shard_info(self) -> Optional[seqio.ShardInfo]:
    """The shard_info the Tasks read with: this host's under "shard", none (all data) under "slice"."""
    return self.shard_info if self.host_split == "shard" else None

  def _source(self, stream: str, shard_info: Optional[seqio.ShardInfo], repeat: bool) -> tf.data.Dataset:
    """The stream's Task items (variable lengths), in the seeded order of `shard_info`'s shard."""
    provider = self._provider(stream)
    kwargs = dict(sequence_length=None, split=self.split, shuffle=self.shuffle,
                  seed=_stream_seed(self.seed, stream), shard_info=shard_info,
                  num_epochs=None if repeat else 1, trim_output_features=False,
                  try_in_mem_cache=False)
    if isinstance(provider, seqio.Mixture):
      kwargs["log_mixing_proportions"] = False
    return provider.get_dataset(**kwargs)

  def _batched(self, stream: str, ds: tf.data.Dataset, batch_size: int, skip_items: int) -> tf.data.Dataset:
    """Converted items -> this host's rows of global batches of `batch_size`."""
    b = self.local_batch_size(stream, batch_size)
    if self.host_split == "shard":
      return ds.skip(skip_items // self.shard_info.num_shards).batch(b, drop_remainder=True)
    # "slice": every host makes the global batch and keeps its rows.
    start = self.shard_info.index * b
    ds = ds.skip(skip_items).batch(batch_size, drop_remainder=True)
    return ds.map(lambda batch: {k: v[start:start + b] for k, v in batch.items()})

  def _stream_dataset(self, stream: str, skip_batches: int) -> tf.data.Dataset:
    config = self.streams[stream]
    if config.buckets:
      return self._bucketed_dataset(stream).skip(skip_batches)
    ds = self._source(stream, self._read_shard_info(), self.repeat)
    ds = self._converted_with_progress_guard(stream, ds, dict(config.lengths, lang=0))
    return self._batched(stream, ds, config.batch_size, skip_batches * config.batch_size)

  # -- length buckets ---------------------------------------------------------------------------
  @staticmethod
  def _bucket_index(shapes, ex) -> tf.Tensor:
    """The first of `shapes` whose lengths `ex` fits; the last (main) one when none does."""
    index = tf.constant(len(shapes) - 1, tf.int32)
    for i in reversed(range(len(shapes) - 1)):
      fits = tf.reduce_all([tf.shape(ex[key])[0] <= n for key, n in shapes[i][1].items()])
      index = tf.where(fits, tf.constant(i, tf.int32), index)
    return index

  def bucket_probabilities(self, stream: str) -> np.ndarray:
    """The probability that a step's batch of `stream` has each shape (`StreamConfig.shapes()`).

    Chosen so that every bucket's items are drawn at the rate the data holds them: p_k ∝ share_k /
    batch_k, with each share measured on the first `bucket_sample_items` items of the stream's
    unsharded order, the same on every host (all hosts must pick the same shape at each step).
    """
    if stream in self._bucket_probabilities:
      return self._bucket_probabilities[stream]
    config = self.streams[stream]
    shapes = config.shapes()
    counts = np.zeros(len(shapes))
    over = 0
    start = time.time()

    def index_of(ex):
      too_long = tf.reduce_any([tf.shape(ex[key])[0] > n for key, n in config.lengths.items()])
      return self._bucket_index(shapes, ex), too_long
    sample = self._source(stream, None, repeat=False).take(self.bucket_sample_items)
    for index, too_long in sample.map(index_of).as_numpy_iterator():
      if too_long and config.over_length == "drop":
        over += 1  # the converter drops it
      else:
        counts[index] += 1
    if not counts.sum():
      raise ValueError(f"the {stream} stream ({config.mixture}, split {self.split!r}) has no item within "
                       f"{dict(config.lengths)} among its first {self.bucket_sample_items}; raise the lengths")
    shares = counts / counts.sum()
    weights = np.array([share / batch for share, (batch, _) in zip(shares, shapes)])
    probabilities = weights / weights.sum()
    rows = sum(p * batch for p, (batch, _) in zip(probabilities, shapes))
    logging.info("%s length buckets from %d items in %.1f s (%d over length): %s; %.1f items a step on "
                 "average", stream, counts.sum() + over, time.time() - start, over,
                 "; ".join(f"{batch} x {dict(lengths)}: {share:.1%} of the items, {p:.1%} of the steps"
                           for (batch, lengths), share, p in zip(shapes, shares, probabilities)), rows)
    self._bucket_probabilities[stream] = probabilities
    return probabilities

  def _bucketed_dataset(self, stream: str) -> tf.data.Dataset:
    """One batch per step, of the shape a seeded draw picks for that step (the same draw on every
    host); each shape's batches come from a read of the stream that keeps that shape's items."""
    config = self.streams[stream]
    shapes = config.shapes()
    probabilities = self.bucket_probabilities(stream)
    per_shape = []
    for i, (batch_size, lengths) in enumerate(shapes):
      ds = self._source(stream, self._read_shard_info(), self.repeat)
      if probabilities[i] == 0:  # no item of the sample fits it: never drawn, never read
        ds = ds.take(0)
      ds = ds.filter(lambda ex, i=i: tf.equal(self._bucket_index(shapes, ex), i))
      if i == len(shapes) - 1:
        ds = self._converted_with_progress_guard(stream, ds, dict(lengths, lang=0))
      else:
        ds = self.converters[stream](ds, dict(lengths, lang=0))
      per_shape.append(self._batched(stream, ds, batch_size, 0))
    logits = tf.constant(np.log(np.maximum(probabilities, 1e-30))[None], tf.float32)
    seed = _stream_seed(self.seed, f"{stream}/buckets")
    choices = tf.data.Dataset.counter().map(
        lambda step: tf.cast(tf.random.stateless_categorical(logits, 1, seed=tf.stack(
            [tf.constant(seed, tf.int64), step]))[0, 0], tf.int64))
    return tf.data.Dataset.choose_from_datasets(per_shape, choices, stop_on_empty_dataset=True)

  def _converted_with_progress_guard(self, stream: str, ds: tf.data.Dataset, lengths) -> tf.data.Dataset:
    """The stream's feature converter, stopped with an error when it drops `max_consecutive_drops`
    items in a row (e.g. every item is longer than the length under "drop"): a repeating dataset
    would otherwise spin forever without yielding a batch."""
    limit = self.max_consecutive_drops
    if not limit or self.streams[stream].over_length != "drop":
      return self.converters[stream](ds, lengths)
    read = tf.Variable(0, dtype=tf.int64, trainable=False)
    passed = tf.Variable(0, dtype=tf.int64, trainable=False)
    marker = f"{_STALL_MARKER}{stream}"

    def count_read(ex):
      n = read.assign_add(1)
      check = tf.debugging.assert_less(n - passed, tf.constant(limit, tf.int64), message=marker)
      with tf.control_dependencies([check]):
        return {k: tf.identity(v) for k, v in ex.items()}

    def count_passed(ex):
      with tf.control_dependencies([passed.assign(read)]):
        return {k: tf.identity(v) for k, v in ex.items()}

    return self.converters[stream](ds.map(count_read), lengths).map(count_passed)

  def _stall_error(self, error: Exception) -> Exception:
    """A ValueError naming the stream, its files and the lengths that drop every item."""
    stream = next((s for s in self.streams if f"{_STALL_MARKER}{s}" in str(error)), None)
    if stream is None:
      return error
    config = self.streams[stream]
    files = []
    for task in _tasks_of(config.mixture):
      try:
        files.extend(task.source.list_shards(self.split))
      except Exception:  # pylint: disable=broad-except  (a source without files: name the task)
        files.append(task.name)
    return ValueError(
        f"the {stream} stream ({config.mixture}, split {self.split!r}) dropped {self.max_consecutive_drops} "
        f"items in a row as over length {dict(config.lengths)} (make_step_iterator.{stream}_over_length="
        f"'drop'), so it cannot fill a batch; raise the lengths (e.g. {stream.upper()}_SAMPLES) or choose "
        f"another over-length policy. Files: {', '.join(files[:4])}{' ...' if len(files) > 4 else ''}")

  def dataset(self, skip_batches: int = 0) -> tf.data.Dataset:
    """The zipped tf.data pipeline, starting after `skip_batches` steps."""
    ds = tf.data.Dataset.zip({s: self._stream_dataset(s, skip_batches) for s in self.streams})
    options = tf.data.Options()
    options.deterministic = True  # the exact-resume guarantee rests on this
    # The drop counters are process statistics, not part of the position: a checkpoint of the
    # iterator leaves them out.
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    if self.num_threads:
      options.threading.private_threadpool_size = self.num_threads
    ds = ds.with_options(options)
    return ds.prefetch(self.prefetch) if self.prefetch else ds

  # -- iteration --------------------------------------------------------------------------------
  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, Dict[str, np.ndarray]]:
    if self._iterator is None:
      self._iterator = self._start()
    try:
      batch = tf.nest.map_structure(lambda t: t._numpy(), next(self._iterator))  # pylint: disable=protected-access
    except tf.errors.InvalidArgumentError as e:
      error = self._stall_error(e)
      if error is e:
        raise
      raise error from None
    except StopIteration:
      if self.repeat:
        raise RuntimeError(
            f"the {self.split} data ended after {self._position} batches although it repeats: a Task of "
            f"{[c.mixture for c in self.streams.values()]} yields no items on this host "
            f"(counters: {self.counters()})") from None
      raise
    self._position += 1
    if self.log_every and self._position % self.log_every == 0:
      counts = self.counters()
      if counts != self._logged_counts:
        logging.info("Data after %d batches: items skipped or altered %s", self._position, counts)
        self._logged_counts = counts
    return batch

  def _start(self):
    """The tf.data iterator at the current position: restored from the pipeline checkpoint that
    set_state received (cost independent of the position), else by skipping what was consumed."""
    pipeline, self._pending_pipeline = self._pending_pipeline, None
    if pipeline is not None:
      iterator = iter(self.dataset())
      start = time.time()
      with tempfile.TemporaryDirectory() as directory:
        with tarfile.open(fileobj=io.BytesIO(pipeline)) as tar:
          tar.extractall(directory, filter="data")
        tf.train.Checkpoint(iterator=iterator).read(os.path.join(directory, "iterator")).assert_consumed()
      logging.info("Data iterator restored at batch %d from its checkpoint in %.1f s", self._position,
                   time.time() - start)
      return iterator
    if self._position:
      logging.info("Data iterator: skipping %d batches to resume where the run left off", self._position)
    return iter(self.dataset(skip_batches=self._position))

  def _pipeline_checkpoint(self) -> Optional[bytes]:
    """The tf.data iterator's own state (positions in every file, shuffle buffer and mixture
    sampler) as bytes; None before the first batch."""
    if self._iterator is None:
      return self._pending_pipeline
    with tempfile.TemporaryDirectory() as directory:
      tf.train.Checkpoint(iterator=self._iterator).write(os.path.join(directory, "iterator"))
      packed = io.BytesIO()
      with tarfile.open(fileobj=packed, mode="w") as tar:
        for name in sorted(os.listdir(directory)):
          tar.add(os.path.join(directory, name), arcname=name)
    return packed.getvalue()

  @property
  def position(self) -> int:
    """Batches yielded since the start of the run (survives set_state)."""
    return self._position

  def counters(self) -> Dict[str, int]:
    """Items cropped/truncated/dropped so far in this process (includes items skipped on resume)."""
    return preprocessors.drop_counts()

  # -- state ------------------------------------------------------------------------------------
  def config_dict(self) -> Dict[str, Any]:
    """What determines the batch sequence (besides the data): the fingerprint's input."""
    streams = {}
    for stream, config in self.streams.items():
      rates = _rates(seqio.get_mixture_or_task(config.mixture)) if self._setup_done else None
      streams[stream] = {
          "mixture": config.mixture, "batch_size": config.batch_size, "lengths": dict(config.lengths),
          "over_length": config.over_length,
          "rates": {k: round(v, 12) for k, v in sorted(rates.items())} if rates is not None else None}
      if config.buckets:  # (only then: the fingerprints of unbucketed runs stay as they were)
        streams[stream]["buckets"] = [[batch, dict(lengths)] for batch, lengths in config.buckets]
      if config.converter is not None:
        describe = getattr(self.converters[stream], "describe", None)
        streams[stream]["converter"] = describe() if describe else type(self.converters[stream]).__name__
    # Under "slice" the global batches are the same on any number of hosts: not part of the config.
    num_shards = self.shard_info.num_shards if self.host_split == "shard" else None
    out = {"split": self.split, "seed": self.seed, "shuffle": self.shuffle, "repeat": self.repeat,
           "host_split": self.host_split, "num_shards": num_shards, "streams": streams}
    if self.corpus_dir:
      # The corpus by content (manifest and vocabulary): a run resumed on, or evaluated with, another
      # build of it is caught.
      if self._corpus_fingerprint is None:
        from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
        self._corpus_fingerprint = builtin_corpus.corpus_fingerprint(self.corpus_dir)
      out["corpus"] = self._corpus_fingerprint
    return out

  def fingerprint(self, config: Optional[Mapping[str, Any]] = None) -> str:
    self.ensure_setup()
    text = json.dumps(self.config_dict() if config is None else config, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def get_state(self, position: Optional[int] = None) -> Dict[str, Any]:
    """JSON-able position; the same on every host (each host resumes its own shard).

    `position` defaults to the batches yielded so far; a trainer that pulls batches ahead of the
    step it checkpoints passes the number of batches its train state has consumed.
    """
    position = self._position if position is None else int(position)
    if not 0 <= position <= self._position:
      raise ValueError(f"position {position} is not in [0, {self._position}] (batches yielded)")
    state = {"format": STATE_FORMAT, "version": 1, "position": position,
             "fingerprint": self.fingerprint(), "config": self.config_dict()}
    if self.checkpoint_pipeline and position == self._position:
      pipeline = self._pipeline_checkpoint()
      if pipeline is not None:
        state[PIPELINE_KEY] = pipeline
    return state

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues after `state["position"]` batches; the next batch equals the uninterrupted run's."""
    if state.get("format") != STATE_FORMAT:
      raise ValueError(f"not a step-iterator state: format={state.get('format')!r}")
    self.ensure_setup()  # the mixture rates are part of the config
    mine = self.config_dict()
    if "corpus" not in state.get("config", {"corpus": None}):
      mine.pop("corpus", None)  # a state of an earlier release, which did not record the corpus
    if state["fingerprint"] != self.fingerprint(mine):
      old, new = state.get("config", {}), mine
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      message = (f"data config changed since the state was saved (fields {changed}); the batches after "
                 f"resume will differ from an uninterrupted run")
      if self.strict_resume:
        raise ValueError(message + ". Restore the old config, or set "
                         "make_step_iterator.strict_resume = False to go on from the same position.")
      logging.warning(message)
    self._position = int(state["position"])
    self._iterator = None  # rebuilt on the next __next__
    pipeline = state.get(PIPELINE_KEY)
    self._pending_pipeline = pipeline if (pipeline and self.checkpoint_pipeline
                                          and state["fingerprint"] == self.fingerprint(mine)) else None
    logging.info("Data iterator resumes after %d batches (%s).", self._position,
                 "from its pipeline checkpoint" if self._pending_pipeline else "skipping them on first read")

  def save(self, directory: str) -> str:
    tf.io.gfile.makedirs(directory)
    path = os.path.join(directory, STATE_FILE)
    state = self.get_state()
    if PIPELINE_KEY in state:
      state[PIPELINE_KEY] = base64.b64encode(state[PIPELINE_KEY]).decode("ascii")
    with tf.io.gfile.GFile(path, "w") as f:
      json.dump(state, f, indent=1)
    return path

  def restore(self, directory: str) -> None:
    with tf.io.gfile.GFile(os.path.join(directory, STATE_FILE)) as f:
      state = json.load(f)
    if PIPELINE_KEY in state:
      state[PIPELINE_KEY] = base64.b64decode(state[PIPELINE_KEY])
    self.set_state(state)


@gin.configurable
def make_step_iterator(
    speech_batch_size: int = gin.REQUIRED,
    text_batch_size: int = gin.REQUIRED,
    paired_batch_size: int = gin.REQUIRED,
    speech_samples: int = gin.REQUIRED,
    text_length: int = gin.REQUIRED,
    paired_samples: int = gin.REQUIRED,
    paired_text_length: int = gin.REQUIRED,
    speech_mixture: str = "builtin_speech",
    text_mixture: str = "builtin_text",
    paired_mixture: str = "builtin_paired",
    speech_over_length: str = "crop",
    text_over_length: str = "truncate",
    paired_over_length: str = "drop",
    split: str = "train",
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    shard_info: Optional[seqio.ShardInfo] = None,
    setup: Optional[Callable[[], Any]] = None,
    prefetch: int = 2,
    strict_resume: bool = True,
    log_every: int = 1000,
    host_split: str = "shard",
    num_threads: int = 0,
    max_consecutive_drops: int = 2_000,
    checkpoint_pipeline: bool = True,
    corpus_dir: Optional[str] = None,
    speech_buckets: Sequence[Sequence[int]] = (),
    paired_buckets: Sequence[Sequence[int]] = (),
    bucket_sample_items: int = 2048,
    text_phones_length: int = 0,
    paired_phones_length: int = 0,
) -> StepIterator:
  """Builds the step iterator (gin: `train.iterator_fn = @make_step_iterator`).

  Args:
    speech_batch_size, text_batch_size, paired_batch_size: global sub-batch sizes (Bs, Bt, Bp);
      0 leaves a stream out (e.g. a speech-only run).
    speech_samples, text_length, paired_samples, paired_text_length: S, L, Sp, Lp.
    speech_mixture, text_mixture, paired_mixture: registered SeqIO Mixture (or Task) names.
    speech_over_length, text_over_length, paired_over_length: see feature_converters.
    split, seed, shuffle, repeat: what to read; `repeat=False` ends after one pass (evaluation).
    shard_info: this host's shard; default from jax.process_index()/process_count().
    setup: called once before the Mixtures are looked up (gin: `@register_builtin_corpus`).
    prefetch: batches tf.data prepares ahead.
    strict_resume: set_state refuses a state saved under another data config.
    log_every: log the skip/crop counters every this many batches (0: never).
    host_split: "shard" (each host reads its shard) or "slice" (see the module docstring).
    num_threads: size of tf.data's private thread pool (0: TensorFlow's default, one per core);
      small values leave the cores to the JAX step on a CPU-only machine.
    max_consecutive_drops: a stream under "drop" that drops this many items in a row stops with an
      error naming it (every item over length would otherwise hang the run); 0: never.
    checkpoint_pipeline: get_state() carries the tf.data iterator's own checkpoint, so that a
      resume costs the same at any position (see the module docstring); False: resume by skipping.
    corpus_dir: the corpus the mixtures read (data/builtin.gin binds CORPUS_DIR): its manifest and
      vocabulary become part of the data fingerprint.
    speech_buckets: length buckets of the speech stream below its main shape, as (samples,
      batch_size) pairs: a step's speech batch is one bucket's (see the module docstring).
    paired_buckets: the same for the paired stream, as (samples, text_length, batch_size) triples,
      e.g. [(32000, 64, 96)] beside 48 pairs of 4 s and 96 characters: pairs up to 2 s and 64
      characters come 96 at a time, the rest 48 at a time.
    bucket_sample_items: items read (the same on every host) to measure the share of each bucket.
    text_phones_length: P > 0: the text stream carries `phones`/`phones_mask` [Bt, P] too, the
      text's eSpeak phones (its Tasks must be registered with phones, e.g.
      `register_builtin_corpus.phones = True`; gin_configs/experiments/phone_injection.gin).
    paired_phones_length: the same for the paired stream (its transcripts' phones; no length buckets).

  Nothing is read until the first `next()`, so `element_spec` costs nothing.
  """
  for name, value in (("speech_samples", speech_samples), ("text_length", text_length),
                      ("paired_samples", paired_samples), ("paired_text_length", paired_text_length)):
    if value <= 0:
      raise ValueError(f"make_step_iterator.{name} must be positive, got {value}")
  def buckets(stream, given, keys):
    out = []
    for bucket in given:
      if len(bucket) != len(keys) + 1:
        raise ValueError(f"make_step_iterator.{stream}_buckets: each bucket is ({', '.join(keys)}, "
                         f"batch_size), got {tuple(bucket)}")
      out.append((int(bucket[-1]), {k: int(n) for k, n in zip(keys, bucket)}))
    return tuple(out)

  streams = {}
  if speech_batch_size:
    streams["speech"] = StreamConfig(speech_mixture, speech_batch_size, {"audio": speech_samples},
                                     speech_over_length,
                                     buckets=buckets("speech", speech_buckets, ("audio",)))
  for name, value in (("text_phones_length", text_phones_length), ("paired_phones_length", paired_phones_length)):
    if value < 0:
      raise ValueError(f"make_step_iterator.{name} must be >= 0, got {value}")
  if paired_phones_length and paired_buckets:
    raise ValueError("make_step_iterator.paired_phones_length does not work with paired_buckets yet: set one")
  # A stream with phones: its lengths name them, and its converter pads them (None: the stream's own).
  phones = lambda length: {"phones": length} if length else {}
  if text_batch_size:
    streams["text"] = StreamConfig(text_mixture, text_batch_size, {"tokens": text_length, **phones(text_phones_length)},
                                   text_over_length,
                                   converter=feature_converters.TextPhonesFeatureConverter if text_phones_length else None)
  if paired_batch_size:
    streams["paired"] = StreamConfig(paired_mixture, paired_batch_size,
                                     {"audio": paired_samples, "tokens": paired_text_length,
                                      **phones(paired_phones_length)}, paired_over_length,
                                     buckets=buckets("paired", paired_buckets, ("audio", "tokens")),
                                     converter=feature_converters.PairedPhonesFeatureConverter
                                     if paired_phones_length else None)
  for stream, config in streams.items():
    if config.batch_size < 0:
      raise ValueError(f"make_step_iterator.{stream}_batch_size must be >= 0, got {config.batch_size}")
  return StepIterator(streams, split=split, seed=seed, shuffle=shuffle, repeat=repeat,
                      shard_info=shard_info, setup=setup, prefetch=prefetch, strict_resume=strict_resume,
                      log_every=log_every, host_split=host_split, num_threads=num_threads,
                      max_consecutive_drops=max_consecutive_drops,
                      checkpoint_pipeline=checkpoint_pipeline, corpus_dir=corpus_dir,
                      bucket_sample_items=bucket_sample_items)


BUILTIN_GIN = "data/builtin.gin"


def builtin_step_iterator(corpus_dir: str, gin_bindings: Sequence[str] = (),
                          shard_info: Optional[seqio.ShardInfo] = None) -> StepIterator:
  """The step iterator of data/builtin.gin over `corpus_dir` (for `mslam data show-batch`).

  Parses the gin file into the global gin config (plus `gin_bindings`, e.g. "SPEECH_BATCH = 2").
  """
  from mslam_jax import storage  # pylint: disable=g-import-not-at-top
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  config.import_configurables()  # the gin file also sizes the model's vocabulary (MSLAMEncoder)
  config.parse_gin([BUILTIN_GIN], [f"CORPUS_DIR = {storage.absolute(corpus_dir)!r}", *gin_bindings])
  return make_step_iterator(shard_info=shard_info)


# -- per-batch helpers for the trainer and the CLI -----------------------------------------------
def _lang_code(lang_id: int) -> str:
  try:
    from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
    return languages.codes()[lang_id]
  except (ImportError, IndexError):
    return f"#{lang_id}"


def describe_batch(batch: Mapping[str, Mapping[str, Any]]) -> str:
  """A human-readable summary: keys, shapes, dtypes, fill of each mask, languages, audio seconds."""
  lines = []
  for stream, features in batch.items():
    lines.append(f"{stream}:")
    for key, value in sorted(features.items()):
      value = np.asarray(value)
      extra = ""
      if key.endswith("_mask"):
        extra = f"  valid {value.mean():.1%}"
      elif key == "audio":
        extra = f"  range [{value.min():.3f}, {value.max():.3f}]"
      lines.append(f"  {key:<12} {str(value.dtype):<8} {list(value.shape)}{extra}")
    if "lang" in features:
      counts = collections.Counter(_lang_code(int(i)) for i in np.asarray(features["lang"]).ravel())
      langs = ", ".join(f"{code}×{n}" for code, n in counts.most_common())
      lines.append(f"  languages    {len(counts)}: {langs}")
  lines.append(f"audio: {audio_seconds(batch):.2f} s")
  return "\n".join(lines)
