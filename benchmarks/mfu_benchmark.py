"""Model FLOPs utilisation of the mSLAM-CTC train step (mslam_600m / mslam_2b, bf16).

Runs `Trainer.train_step` of gin_configs/models/mslam_{600m,2b}.gin + experiments/mslam_ctc.gin
(three sub-batches: speech, text, paired) in bfloat16 compute (MSLAMEncoder.dtype) on whatever
devices JAX sees, and prints the step time, tokens per second (speech frames after the frontend
plus characters), the model FLOPs of one step, and MFU = FLOPs / (step time x devices x peak).
On a CPU it runs the tiny config in float32 instead (no peak: MFU not applicable), which keeps
the script and its FLOP count tested.

Model FLOPs per step, counted analytically from the config (matmuls and convolutions, 2 per
multiply-add; norms, activations, softmax and the optimizer are left out, as MFU conventions do):
for a Conformer block over B rows of length L (model dim D, FFN F, relative positions
R = left + right + 1, depthwise kernel K)

  block(B, L) = 8BLDF                    two macaron FFNs (2 matmuls each)
              + 8BLD^2                   q, k, v, output projections
              + 4BL^2D                   scores and the weighted sum
              + 2BLRD                    queries against the relative-key table ("gather")
              + 6BLD^2 + 2BLDK           pointwise convs (D->2D, D->D) and the depthwise conv

and, with T speech frames (after the frontend) per clip, N speech-only and M shared blocks:

  speech  (Bs clips): frontend + projection + quantizer + N blocks(Bs, Ts) + M blocks(Bs, Ts)
                      + codebook head + contrastive projections and similarities
  text    (Bt rows):  M blocks(Bt, Lt) + text head
  paired  (Bp pairs): frontend + projection + quantizer + 2 N blocks(Bp, Tp) (masked for TLM,
                      unmasked for CTC) + M blocks(Bp, Tp + Lp) (TLM) + M blocks(Bp, Tp)
                      + codebook, text and CTC heads
  frontend: the log-mel filterbank matmul (2 x frames x 256 x 80) and, for "conv2d", its two
            3x3 stride-2 convolutions; quantizer: Gumbel logits and codevector selection, or
            BEST-RQ's projection and codebook similarities.

Training counts 3x the forward FLOPs of every trainable matmul (forward, input and weight
gradients) and 1x for the parameter-free log-mel and the frozen BEST-RQ quantizer; the first
frontend convolution gets no input gradient (2x). The count is checked against XLA's
`compiled.cost_analysis()["flops"]`, which also counts elementwise work (norms, activations,
softmax, Adam) and so comes out somewhat higher; the script prints both and their ratio. XLA's
count of a rolled `scan` counts its body once, so the check is meaningful where the layers are
unrolled (on CPU the Conformer scan is unrolled; elsewhere pass --gin=SCAN_LAYERS=False).

  python benchmarks/mfu_benchmark.py --model 600m [--speech-batch 16 ...]
  python benchmarks/mfu_benchmark.py --model 2b
  python benchmarks/mfu_benchmark.py            # on CPU: the tiny config
  python benchmarks/mfu_benchmark.py --model 600m --profile /tmp/prof   # + the top ops of 3 steps

It needs JAX, Flax, Optax, gin-config and etils only (the model imports no data pipeline), so on a
bare accelerator image `PYTHONPATH=.` from a checkout is enough besides gin-config.
"""
import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_summary  # pylint: disable=g-import-not-at-top,wrong-import-position

PROFILED_STEPS = 3

# bf16 dense peak FLOP/s per device, matched against jax.devices()[0].device_kind.
PEAK_BF16_FLOPS = {
    "H100": 989e12,   # SXM
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,  # v5p reports "TPU v5"
}

MODEL_GIN = {
    "600m": ["models/mslam_600m.gin", "experiments/mslam_ctc.gin"],
    "2b": ["models/mslam_2b.gin", "experiments/mslam_ctc.gin"],
    "tiny": ["models/tiny.gin", "experiments/mslam_ctc.gin"],
}
SAMPLE_RATE = 16_000
FFT_BINS = 256   # Kaldi's 512-point FFT without the Nyquist bin
FRAME, SHIFT = 400, 160


def peak_flops(device_kind: str) -> float | None:
  for name, peak in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in device_kind.lower():
      return peak
  return None


@dataclasses.dataclass(frozen=True)
class Shapes:
  speech_batch: int
  speech_samples: int
  text_batch: int
  text_length: int
  paired_batch: int
  paired_samples: int
  paired_length: int


@dataclasses.dataclass(frozen=True)
class Arch:
  embed_dim: int
  mlp_dim: int
  num_speech_layers: int
  num_shared_layers: int
  relative_positions: int   # R (0 without relative keys)
  conv_kernel: int
  frontend_mode: str
  num_mel_bins: int
  conv_channels: int
  stack_stride: int
  vocab_size: int
  quantizer: str
  codebook_entries: int     # G * V
  codevector_dim: int
  best_rq_dim: int          # G * entry_dim
  contrastive: bool
  contrastive_dim: int
  tlm: bool
  ctc: bool


def arch_from_gin() -> Arch:
  """Reads the sizes of the gin-configured model (parse the gin files first)."""
  from mslam_jax.layers import conformer, frontend  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top
  model = mslam.MSLAMModel()
  enc, net, q = model.encoder, model.network, model.network.quantizer
  stack, fe = conformer.ConformerStack(), frontend.SpeechFrontend()
  relative = stack.position_type == "relative_key"
  best_rq = model.quantizer_name == "best_rq"
  return Arch(
      embed_dim=enc.embed_dim, mlp_dim=stack.mlp_dim, num_speech_layers=enc.num_speech_layers,
      num_shared_layers=enc.num_shared_layers,
      relative_positions=stack.left_max_position + stack.right_max_position + 1 if relative else 0,
      conv_kernel=stack.conv_kernel_size, frontend_mode=fe.mode, num_mel_bins=fe.num_mel_bins,
      conv_channels=fe.conv_channels, stack_stride=fe.stack_stride, vocab_size=enc.vocab_size,
      quantizer=model.quantizer_name, codebook_entries=q.num_groups * q.num_entries,
      codevector_dim=0 if best_rq else q.codevector_dim, best_rq_dim=q.num_groups * q.entry_dim if best_rq else 0,
      contrastive=model.weights.speech_contrastive > 0, contrastive_dim=net.contrastive_dim,
      tlm=model.weights.tlm > 0, ctc=model.weights.ctc > 0)


def mel_frames(samples: int) -> int:
  return 0 if samples < FRAME else 1 + (samples - FRAME) // SHIFT


def frontend_frames(arch: Arch, samples: int) -> int:
  n = mel_frames(samples)
  if arch.frontend_mode == "conv2d":
    return (((n + 1) // 2) + 1) // 2
  return math.ceil(n / arch.stack_stride)


def frontend_dim(arch: Arch) -> int:
  if arch.frontend_mode == "conv2d":
    return arch.conv_channels * (((arch.num_mel_bins + 1) // 2 + 1) // 2)
  return arch.num_mel_bins * arch.stack_stride


def block_flops(arch: Arch, rows: int, length: int) -> float:
  """Forward FLOPs of one Conformer block (see the module docstring)."""
  b, l, d, f = rows, length, arch.embed_dim, arch.mlp_dim
  return (8 * b * l * d * f + 8 * b * l * d * d + 4 * b * l * l * d + 2 * b * l * arch.relative_positions * d
          + 6 * b * l * d * d + 2 * b * l * d * arch.conv_kernel)


def _speech_input_flops(arch: Arch, rows: int, samples: int) -> tuple[float, float, float]:
  """(parameter-free, first conv, trainable) forward FLOPs of frontend + projection + quantizer."""
  n, t = mel_frames(samples), frontend_frames(arch, samples)
  fixed = 2.0 * rows * n * FFT_BINS * arch.num_mel_bins
  first = trainable = 0.0
  if arch.frontend_mode == "conv2d":
    c = arch.conv_channels
    h1, w1 = (n + 1) // 2, (arch.num_mel_bins + 1) // 2
    first = 2.0 * rows * h1 * w1 * c * 9
    w2 = (w1 + 1) // 2
    trainable += 2.0 * rows * t * w2 * c * c * 9
  trainable += 2.0 * rows * t * frontend_dim(arch) * arch.embed_dim
  if arch.quantizer == "gumbel":
    trainable += 2.0 * rows * t * frontend_dim(arch) * arch.codebook_entries
    trainable += 2.0 * rows * t * arch.codebook_entries * arch.codevector_dim
  else:  # BEST-RQ on the stacked log-mels: frozen projection and codebook similarities
    stacked = arch.num_mel_bins * (4 if arch.frontend_mode == "conv2d" else arch.stack_stride)
    fixed += 2.0 * rows * t * stacked * arch.best_rq_dim + 2.0 * rows * t * arch.best_rq_dim * arch.codebook_entries
  return fixed, first, trainable


def step_flops(arch: Arch, shapes: Shapes) -> dict[str, float]:
  """Training FLOPs of one step (3x trainable forward, see the module docstring), by stream."""
  d, n_lo, n_sh = arch.embed_dim, arch.num_speech_layers, arch.num_shared_layers
  out = {}
  if shapes.speech_batch:
    b, t = shapes.speech_batch, frontend_frames(arch, shapes.speech_samples)
    fixed, first, train = _speech_input_flops(arch, b, shapes.speech_samples)
    train += (n_lo + n_sh) * block_flops(arch, b, t)
    train += 2.0 * b * t * d * arch.codebook_entries
    if arch.contrastive:
      train += 2.0 * b * t * arch.contrastive_dim * (d + arch.codevector_dim) + 2.0 * b * t * t * arch.contrastive_dim
    out["speech"] = fixed + 2 * first + 3 * train
  if shapes.text_batch:
    b, l = shapes.text_batch, shapes.text_length
    out["text"] = 3 * (n_sh * block_flops(arch, b, l) + 2.0 * b * l * d * arch.vocab_size)
  if shapes.paired_batch and (arch.tlm or arch.ctc):
    b, t, l = shapes.paired_batch, frontend_frames(arch, shapes.paired_samples), shapes.paired_length
    fixed, first, train = _speech_input_flops(arch, b, shapes.paired_samples)
    if not arch.tlm and arch.quantizer == "gumbel":  # no quantizer without TLM
      train -= 2.0 * b * t * (frontend_dim(arch) + arch.codevector_dim) * arch.codebook_entries
    if arch.tlm:
      train += n_lo * block_flops(arch, b, t) + n_sh * block_flops(arch, b, t + l)
      train += 2.0 * b * t * d * arch.codebook_entries + 2.0 * b * l * d * arch.vocab_size
    if arch.ctc:
      train += (n_lo + n_sh) * block_flops(arch, b, t) + 2.0 * b * t * d * arch.vocab_size
    out["paired"] = fixed + 2 * first + 3 * train
  out["total"] = sum(out.values())
  return out


def step_tokens(arch: Arch, shapes: Shapes) -> int:
  """Speech frames (after the frontend) plus characters in one step's batch."""
  return (shapes.speech_batch * frontend_frames(arch, shapes.speech_samples)
          + shapes.text_batch * shapes.text_length
          + shapes.paired_batch * (frontend_frames(arch, shapes.paired_samples) + shapes.paired_length))


def random_batch(shapes: Shapes, vocab_size: int, seed: int = 0) -> dict:
  rs = np.random.RandomState(seed)
  audio = lambda b, s: (0.1 * rs.randn(b, s)).astype(np.float32)
  tokens = lambda b, l: rs.randint(5, vocab_size, size=(b, l)).astype(np.int32)
  ones = lambda *shape: np.ones(shape, np.int32)
  zeros = lambda b: np.zeros((b,), np.int32)
  s, t, p = shapes.speech_batch, shapes.text_batch, shapes.paired_batch
  return {
      "speech": {"audio": audio(s, shapes.speech_samples), "audio_mask": ones(s, shapes.speech_samples),
                 "lang": zeros(s)},
      "text": {"tokens": tokens(t, shapes.text_length), "tokens_mask": ones(t, shapes.text_length),
               "lang": zeros(t)},
      "paired": {"audio": audio(p, shapes.paired_samples), "audio_mask": ones(p, shapes.paired_samples),
                 "tokens": tokens(p, shapes.paired_length), "tokens_mask": ones(p, shapes.paired_length),
                 "lang": zeros(p)},
  }


def run(model: str, shapes: Shapes, steps: int = 5, warmup: int = 1, dtype: str | None = None,
        bindings=(), profile_dir: str | None = None) -> dict:
  """Builds, compiles and times the step; returns every figure the script prints."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mslam_jax import config, optimizers, partitioning  # pylint: disable=g-import-not-at-top
  from mslam_jax import garbage_collector  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top

  garbage_collector.tune()  # as every `mslam` command does once its imports are done
  dtype = dtype or ("float32" if model == "tiny" else "bfloat16")
  gin.clear_config()
  config.parse_gin(MODEL_GIN[model], list(bindings))
  arch = arch_from_gin()
  batch = random_batch(shapes, arch.vocab_size)
  # The compute dtype; every other encoder setting comes from gin.
  network = mslam.MSLAMModel(encoder=encoder_lib.MSLAMEncoder(dtype=getattr(jnp, dtype)))
  trainer = trainer_lib.Trainer(network, optimizers.make_optimizer(), partitioning.make_mesh(), batch)
  state = trainer.init_state()
  sharded = trainer.shard_batch(batch)
  start = time.perf_counter()
  compiled = trainer.lower_train_step().compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) * max(1, jax.device_count()) if cost else float("nan")

  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], sharded)
    jax.block_until_ready(metrics)

  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  profile = None
  if profile_dir:
    profile_summary.profiled(step, profile_dir, PROFILED_STEPS)
    try:
      profile = profile_summary.summarize(profile_dir, PROFILED_STEPS)
    except (OSError, ValueError, KeyError) as e:  # the timings stand without it
      print(f"profile summary failed ({e}); the trace is in {profile_dir}", file=sys.stderr)
  flops = step_flops(arch, shapes)
  tokens = step_tokens(arch, shapes)
  devices = jax.devices()
  peak = None if devices[0].platform == "cpu" else peak_flops(devices[0].device_kind)
  return {
      "model": model, "dtype": dtype, "device_kind": devices[0].device_kind, "num_devices": len(devices),
      "shapes": dataclasses.asdict(shapes), "compile_s": compile_s, "step_s": step_s, "times": times,
      "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
      "model_flops_per_step": flops["total"], "model_flops_by_stream": flops,
      "xla_flops_per_step": xla_flops, "xla_over_analytic": xla_flops / flops["total"],
      "achieved_flops_per_s": flops["total"] / step_s,
      "peak_flops_per_device": peak,
      "mfu": None if peak is None else flops["total"] / (step_s * len(devices) * peak),
      "profile": profile,
  }


def default_shapes(model: str, num_devices: int) -> Shapes:
  if model == "tiny":
    return Shapes(2, SAMPLE_RATE, 2, 32, 2, SAMPLE_RATE, 16)
  # Per device: what an H200's memory holds with room to spare (benchmarks/README.md's figures).
  per = 32 if model == "600m" else 16
  n = num_devices
  return Shapes(speech_batch=per * n, speech_samples=8 * SAMPLE_RATE, text_batch=per * n, text_length=256,
                paired_batch=per // 2 * n, paired_samples=8 * SAMPLE_RATE, paired_length=128)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODEL_GIN), default=None,
                      help="600m or 2b (default: 600m on accelerators, tiny on CPU)")
  parser.add_argument("--dtype", default=None, help="compute dtype (default bfloat16; float32 for tiny)")
  for name, help_text in (("speech-batch", "clips"), ("speech-seconds", "s per clip"), ("text-batch", "rows"),
                          ("text-length", "characters"), ("paired-batch", "pairs"),
                          ("paired-seconds", "s per clip"), ("paired-length", "characters")):
    parser.add_argument(f"--{name}", type=float if "seconds" in name else int, default=None, help=help_text)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding")
  parser.add_argument("--profile", help=f"trace {PROFILED_STEPS} more steps here and print the top ops")
  parser.add_argument("--top", type=int, default=40, help="ops the profile summary lists")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  from mslam_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable()
  on_cpu = jax.default_backend() == "cpu"
  model = args.model or ("tiny" if on_cpu else "600m")
  base = default_shapes(model, jax.device_count())
  pick = lambda value, default: default if value is None else value
  seconds = lambda value, default: default if value is None else int(value * SAMPLE_RATE)
  shapes = Shapes(
      pick(args.speech_batch, base.speech_batch), seconds(args.speech_seconds, base.speech_samples),
      pick(args.text_batch, base.text_batch), pick(args.text_length, base.text_length),
      pick(args.paired_batch, base.paired_batch), seconds(args.paired_seconds, base.paired_samples),
      pick(args.paired_length, base.paired_length))
  r = run(model, shapes, args.steps, args.warmup, args.dtype, args.gin, args.profile)
  if args.json:
    print(json.dumps(r))
    return 0
  print(f"mSLAM-CTC train step, model {r['model']} ({r['dtype']}), {r['num_devices']} x {r['device_kind']}")
  print(f"  batch: speech {shapes.speech_batch} x {shapes.speech_samples / SAMPLE_RATE:g} s, text "
        f"{shapes.text_batch} x {shapes.text_length}, paired {shapes.paired_batch} x "
        f"{shapes.paired_samples / SAMPLE_RATE:g} s + {shapes.paired_length} chars")
  print(f"  compile {r['compile_s']:.1f} s; step median {r['step_s'] * 1e3:.1f} ms over {len(r['times'])} steps")
  print(f"  tokens/step {r['tokens_per_step']} (frames + characters); tokens/s {r['tokens_per_s']:.0f}")
  print(f"  model FLOPs/step {r['model_flops_per_step']:.4g} (analytic); XLA cost analysis "
        f"{r['xla_flops_per_step']:.4g} (ratio {r['xla_over_analytic']:.3f})")
  print(f"  achieved {r['achieved_flops_per_s'] / 1e12:.4g} TFLOP/s")
  if r["mfu"] is None:
    print("  MFU: not applicable (no bf16 peak for this device)")
  else:
    print(f"  MFU {100 * r['mfu']:.1f} % of {r['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per device")
  if r["profile"]:
    print(profile_summary.format_summary(r["profile"], args.top))
  return 0


if __name__ == "__main__":
  sys.exit(main())
