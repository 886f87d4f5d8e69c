"""Input pipeline: the three-stream step iterator against a plain tf.data read of the same shards.

Ours: data/builtin.gin's step iterator (per-language SeqIO Tasks, temperature-sampled Mixtures,
feature converters, zip). Peer: one tf.data pipeline per stream over all of its train shards
(interleave, parse, decode/tokenize, pad, batch, zip) with no per-language Tasks or sampling: what
the input costs without the mixing machinery. Both yield the same shapes; the ratio is ours/peer
in steps per second after warm-up. Start-up (registration, graph building, first batch) is
reported too, since it grows with the number of Tasks.

  python benchmarks/input_pipeline_benchmark.py --corpus DIR [--steps 100 --json]
  (without --corpus a small built-in corpus is built in a temporary directory first)
"""
import argparse
import glob
import json
import os
import tempfile
import time

import numpy as np


def _peer_dataset(corpus: str, it, vocab):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import preprocessors  # pylint: disable=g-import-not-at-top
  streams = {}
  for stream, config in it.streams.items():
    files = sorted(glob.glob(os.path.join(corpus, stream, "*", "train.tfrecord-*")))
    spec = preprocessors.training_feature_description(stream)

    def convert(pb, stream=stream, config=config, spec=spec):
      ex = tf.io.parse_single_example(pb, spec)
      out = {"lang": tf.constant(0, tf.int32)}
      for key, n in config.lengths.items():
        x = (preprocessors.decode_audio(ex["audio_pcm16"]) if key == "audio"
             else tf.cast(vocab.encode_tf(ex["text"]), tf.int32))[:n]
        out[key] = tf.pad(x, [[0, n - tf.shape(x)[0]]])
        out[key + "_mask"] = tf.cast(tf.range(n) < tf.shape(x)[0], tf.int32)
      return out
    ds = tf.data.Dataset.from_tensor_slices(files).repeat().interleave(
        tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.shuffle(256, seed=0).map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    streams[stream] = ds.batch(it.local_batch_size(stream), drop_remainder=True)
  return tf.data.Dataset.zip(streams).prefetch(2)


def _rate(iterator, steps: int) -> float:
  for _ in range(3):  # warm-up
    next(iterator)
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", help="built-in corpus directory (default: build a small one)")
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()

  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()  # before SeqIO loads it: quiet, as in a command
  import seqio  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top

  corpus = args.corpus
  build_seconds = None
  if not corpus:
    from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
    corpus = tempfile.mkdtemp(prefix="mslam_bench_corpus_")
    start = time.perf_counter()
    builtin_corpus.build_builtin_corpus(corpus)
    build_seconds = time.perf_counter() - start

  start = time.perf_counter()
  it = pipeline.builtin_step_iterator(corpus, shard_info=seqio.ShardInfo(0, 1))
  first = next(it)
  startup = time.perf_counter() - start
  num_tasks = sum(len(seqio.get_mixture_or_task(c.mixture).tasks) for c in it.streams.values())
  ours = _rate(it, args.steps)
  seconds_per_step = pipeline.audio_seconds(first)

  vocab = vocabularies.vocabulary_for_corpus(corpus)
  start = time.perf_counter()
  peer_iter = _peer_dataset(corpus, it, vocab).as_numpy_iterator()
  next(peer_iter)
  peer_startup = time.perf_counter() - start
  peer = _rate(peer_iter, args.steps)

  result = {
      "corpus": corpus, "corpus_build_s": build_seconds, "tasks": num_tasks,
      "batch": {s: list(v["audio" if "audio" in v else "tokens"].shape) for s, v in first.items()},
      "startup_s": round(startup, 2), "peer_startup_s": round(peer_startup, 2),
      "steps_per_s": round(ours, 2), "peer_steps_per_s": round(peer, 2),
      "ratio_ours_over_peer": round(ours / peer, 3),
      "audio_s_per_s": round(ours * seconds_per_step, 1),
  }
  if args.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f"{key:>22}: {value}")
  np.testing.assert_equal(set(first), set(it.element_spec))


if __name__ == "__main__":
  main()
