"""THE batch contract: what one training step receives. Every other module derives from this one
(the step iterator's element spec, the Trainer's AOT batch, `mslam compile`, the tests).

    {"speech": {"audio": f32[Bs,S], "audio_mask": i32[Bs,S], "lang": i32[Bs]},
     "text":   {"tokens": i32[Bt,L], "tokens_mask": i32[Bt,L], "lang": i32[Bt]},
     "paired": {"audio": f32[Bp,Sp], "audio_mask": i32[Bp,Sp], "tokens": i32[Bp,Lp],
                "tokens_mask": i32[Bp,Lp], "lang": i32[Bp]}}

Every stream has a fixed batch size (set in gin, global over hosts) so that each step mixes all
kinds of data, as mSLAM does. Audio is raw 16 kHz (log-mels are computed inside the jitted step);
masks are 1 on real samples/tokens; `lang` is the language id (mslam_jax.data.languages). A
stream with batch size 0 is left out of the batch.
"""
from typing import Any, Callable, Mapping

import gin
import numpy as np

from mslam_jax.data import records

SAMPLE_RATE = records.SAMPLE_RATE
STREAMS = ("speech", "text", "paired")
# The sequence fields of each stream: "audio" has SAMPLES samples, "tokens" has LENGTH tokens.
SEQUENCES = {"speech": ("audio",), "text": ("tokens",), "paired": ("audio", "tokens")}
DTYPES = {"audio": np.float32, "audio_mask": np.int32, "tokens": np.int32, "tokens_mask": np.int32,
          "lang": np.int32}


def stream_shapes(stream: str, batch_size: int, lengths: Mapping[str, int]) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{key: (shape, dtype)} of one stream: `lengths` gives each sequence field's length
  ({"audio": samples} / {"tokens": length})."""
  missing = set(SEQUENCES[stream]) - set(lengths)
  if missing:
    raise ValueError(f"the {stream} stream needs the lengths of {sorted(missing)}")
  out = {}
  for key in SEQUENCES[stream]:
    out[key] = ((batch_size, int(lengths[key])), DTYPES[key])
    out[f"{key}_mask"] = ((batch_size, int(lengths[key])), DTYPES[f"{key}_mask"])
  out["lang"] = ((batch_size,), DTYPES["lang"])
  return dict(sorted(out.items()))


def batch_spec(streams: Mapping[str, tuple[int, Mapping[str, int]]]) -> dict[str, dict[str, Any]]:
  """{stream: {key: jax.ShapeDtypeStruct}} for {stream: (batch_size, lengths)}; streams of batch
  size 0 are left out."""
  import jax  # pylint: disable=g-import-not-at-top  (the data pipeline runs without JAX)
  return {stream: {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in
                   stream_shapes(stream, batch, lengths).items()}
          for stream, (batch, lengths) in streams.items() if batch}


def zeros_batch(spec: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  """Zeros of `spec`'s shapes with all-valid masks (for init and compilation)."""
  batch = {s: {k: np.zeros(v.shape, v.dtype) for k, v in d.items()} for s, d in spec.items()}
  for d in batch.values():
    for key in d:
      if key.endswith("_mask"):
        d[key][:] = 1
  return batch


def stream_lengths(stream: str, samples: int, length: int) -> dict[str, int]:
  """{"audio": samples} / {"tokens": length} / both: a stream's sequence lengths from the two sizes."""
  return {key: samples if key == "audio" else length for key in SEQUENCES[stream]}


@gin.configurable
def contract_batch_spec(iterator_fn: Callable[..., Any] = gin.REQUIRED) -> dict:
  """The global batch as ShapeDtypeStructs, for AOT compiles without reading data: the
  `global_element_spec` of the iterator that `iterator_fn()` builds (run configs bind it to the same
  factory as train.iterator_fn, so the sizes are written once, in the data config)."""
  iterator = iterator_fn()
  spec = getattr(iterator, "global_element_spec", None)
  if spec is None:
    raise ValueError(f"contract_batch_spec.iterator_fn={iterator_fn!r} builds an iterator without "
                     "a global_element_spec; bind it to the run's iterator factory")
  return spec


def audio_seconds(batch: Mapping[str, Mapping[str, Any]]) -> float:
  """Seconds of real (unpadded) audio in a host batch, over the streams that carry audio."""
  total = 0
  for stream in batch.values():
    if isinstance(stream, Mapping) and "audio_mask" in stream:
      total += int(np.asarray(stream["audio_mask"]).sum())
  return total / SAMPLE_RATE
