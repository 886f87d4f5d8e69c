"""Speed and agreement of the JAX log-mel featurizer against kaldi-native-fbank on the same audio.

  python benchmarks/featurizer_benchmark.py [--batch 32] [--seconds 10] [--repeats 5]

Ours: `log_mel_fbank` jitted over the whole batch, timed after a warm-up call (compile excluded),
inputs already on the device, until the result is ready. kaldi-native-fbank: one OnlineFbank per
clip on one host thread (C++), timed for the feature computation alone and with the Python loop
that reads its frames out. Both take the same float32 audio (synthetic speech-like clips: a
harmonic source with gliding pitch, a syllable-rate envelope and a -30 dB noise floor). Prints the
median times, the ratio (kaldi-native-fbank time / ours: > 1 means ours is faster), the max abs
difference of the log-mel features, and each one's max abs difference from the same recipe in
float64 numpy (the residual between the two is float32 rounding, in bins ~80 dB below a frame's
loudest).
"""
import argparse
import json
import logging
import os
import statistics
import time

import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import numpy as np

from mslam_jax.layers import logmel

SAMPLE_RATE = 16000


def speech_like_batch(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
  """f32[batch, seconds * 16000] in [-1, 1): voiced harmonics, envelope, noise floor."""
  rs = np.random.RandomState(seed)
  t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
  clips = []
  for _ in range(batch):
    f0 = rs.uniform(90, 220) + 50 * np.sin(2 * np.pi * rs.uniform(0.3, 1.0) * t + rs.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rs.uniform(3, 6) * t) ** 2
    clips.append(0.1 * envelope * voiced / 3 + 0.003 * rs.randn(len(t)))
  return np.clip(np.stack(clips), -1.0, 32767 / 32768).astype(np.float32)


def kaldi_native_fbank(audio: np.ndarray, read_frames: bool) -> list[np.ndarray]:
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.mel_opts.num_bins = 80
  out = []
  for clip in audio:
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(SAMPLE_RATE, clip * 32768.0)
    fbank.input_finished()
    if read_frames:
      out.append(np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)]))
  return out


def float64_fbank(audio: np.ndarray) -> np.ndarray:
  """The same Kaldi recipe in float64 numpy: the yardstick for both float32 implementations."""
  x = audio.astype(np.float64) * 32768.0
  count = logmel.num_frames(x.shape[1])
  frames = np.lib.stride_tricks.sliding_window_view(x, 400, axis=1)[:, ::160][:, :count]
  frames = frames - frames.mean(-1, keepdims=True)
  frames = np.concatenate([frames[..., :1] * 0.03, frames[..., 1:] - 0.97 * frames[..., :-1]], -1)
  frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi / 399 * np.arange(400))) ** 0.85
  power = np.abs(np.fft.rfft(frames, 512))[..., :256] ** 2
  return np.log(np.maximum(power @ logmel.mel_filterbank().astype(np.float64), logmel.FLOAT32_EPS))


def median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO, format="%(message)s")

  audio = speech_like_batch(args.batch, args.seconds)
  audio_dev = jnp.asarray(audio)
  mask_dev = jnp.ones(audio.shape, jnp.int32)
  fbank = jax.jit(logmel.log_mel_fbank)
  start = time.perf_counter()
  feats, feats_mask = jax.block_until_ready(fbank(audio_dev, mask_dev))
  compile_s = time.perf_counter() - start

  ours_s = median_seconds(lambda: jax.block_until_ready(fbank(audio_dev, mask_dev)), args.repeats)
  kaldi_compute_s = median_seconds(lambda: kaldi_native_fbank(audio, False), args.repeats)
  kaldi_total_s = median_seconds(lambda: kaldi_native_fbank(audio, True), args.repeats)

  expected = np.stack(kaldi_native_fbank(audio, True))
  feats = np.asarray(feats)
  assert feats.shape == expected.shape and np.all(np.asarray(feats_mask) == 1)
  max_abs_diff = float(np.abs(feats - expected).max())
  yardstick = float64_fbank(audio)
  result = {
      "device": str(jax.devices()[0].device_kind), "host_cpus": os.cpu_count(),
      "batch": args.batch, "seconds_per_clip": args.seconds, "frames": list(feats.shape[:2]),
      "ours_s": ours_s, "ours_compile_s": compile_s,
      "kaldi_native_fbank_compute_s": kaldi_compute_s, "kaldi_native_fbank_total_s": kaldi_total_s,
      "ratio_vs_compute": kaldi_compute_s / ours_s, "ratio_vs_total": kaldi_total_s / ours_s,
      "max_abs_diff": max_abs_diff,
      "mean_abs_diff": float(np.abs(feats - expected).mean()),
      "ours_vs_float64_max_abs_diff": float(np.abs(feats - yardstick).max()),
      "kaldi_native_fbank_vs_float64_max_abs_diff": float(np.abs(expected - yardstick).max()),
  }
  if args.json:
    print(json.dumps(result))
    return
  audio_s = args.batch * args.seconds
  print(f"{args.batch} clips x {args.seconds:g} s ({audio_s:g} s of audio), device "
        f"{result['device']}, {result['host_cpus']} host CPUs")
  print(f"  ours (jit, batched):               {ours_s * 1e3:8.1f} ms  "
        f"({audio_s / ours_s:8.0f}x real time; compile {compile_s:.2f} s)")
  print(f"  kaldi-native-fbank (compute):      {kaldi_compute_s * 1e3:8.1f} ms  "
        f"({audio_s / kaldi_compute_s:8.0f}x real time)")
  print(f"  kaldi-native-fbank (+ read frames): {kaldi_total_s * 1e3:7.1f} ms")
  print(f"  speed ratio kaldi-native-fbank / ours: {result['ratio_vs_compute']:.2f} (compute), "
        f"{result['ratio_vs_total']:.2f} (with frame read-out)")
  print(f"  log-mel max abs diff: {max_abs_diff:.2e} (mean {result['mean_abs_diff']:.2e}); "
        f"against float64 numpy: ours {result['ours_vs_float64_max_abs_diff']:.2e}, "
        f"kaldi-native-fbank {result['kaldi_native_fbank_vs_float64_max_abs_diff']:.2e}")


if __name__ == "__main__":
  main()
