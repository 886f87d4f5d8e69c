"""Train-step speed: the project's `Trainer.train_step` against transformers' Wav2Vec2BertModel.

Both train the same shape (w2v-BERT 2.0's architecture, gin_configs/models/w2vbert2_600m.gin,
shrunk) on the same batch of random audio, dropout 0, BEST-RQ masked prediction over 1,024
targets:

  ours   Trainer.train_step: log-mel frontend (on device, inside the step), BEST-RQ quantizer,
         span masking, Conformer stacks, codebook head, cross-entropy, Adam (clipped), in one jit.
  peer   torch: Wav2Vec2BertModel (relative_key positions, layer-norm depthwise conv, same sizes)
         + a linear head with cross-entropy against BEST-RQ targets (a frozen random projection
         and codebook, computed in the step), AdamW, gradient clipping. Its 160-dim features
         come from SeamlessM4TFeatureExtractor, timed once outside the step ("features outside",
         precomputed) and once inside it ("features inside").

Sizes: tiny = hidden 144, 4 Conformer layers (2 speech-only + 2 shared; all run on speech),
4 heads, FFN 576; small = hidden 256, 8 layers (4 + 4), 4 heads, FFN 1024. Both: depthwise kernel
5 (causal, layer norm), relative keys clipped at 64 left / 8 right, 16 clips x 4 s, Adam.

Each side runs `--warmup` untimed steps, then `--steps` timed ones; the medians are printed with
audio seconds per second and the ratio peer time / ours (> 1: ours is faster). The peer needs the
`hf` extra (torch, transformers); without it only ours runs.

Ours runs twice: the batch in one pass, and as `--microbatches` exact micro-batches
(Trainer.num_microbatches: the same gradient, summed in a scan that is unrolled on a CPU, where the
micro-batches' independent passes keep both cores busy). 0 skips the second.

`--bf16` gives both sides' matmuls bfloat16 operands with float32 accumulation: ours by
`matmul_precision.precision = "bfloat16"` (mslam_jax/layers/matmul.py; its weight matmuls), the
peer's by torch.autocast("cpu", bfloat16); the peer also runs in float32, as it does by default.
On a CPU with AMX-BF16 both sides' matmuls run several times faster.

`--joint` times the demo's three-stream step instead (models/tiny.gin,
experiments/mslam_ctc_xmodal.gin, runs/pretrain.gin, runs/demo.gin: speech, text and paired
sub-batches) and reports its compile time; there is no peer for it.

  python benchmarks/step_benchmark.py --size tiny
  python benchmarks/step_benchmark.py --size small
  python benchmarks/step_benchmark.py --size tiny --bf16
  python benchmarks/step_benchmark.py --joint
  python benchmarks/step_benchmark.py --size tiny --profile /tmp/prof   # + the top ops of 3 steps

The persistent compilation cache is off here (compile times are measured); `--cache` turns it on.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_summary  # pylint: disable=g-import-not-at-top,wrong-import-position

SAMPLE_RATE = 16_000
PROFILED_STEPS = 3

SIZES = {
    "tiny": dict(EMBED_DIM=144, MLP_DIM=576, NUM_HEADS=4, NUM_SPEECH_LAYERS=2, NUM_SHARED_LAYERS=2),
    "small": dict(EMBED_DIM=256, MLP_DIM=1024, NUM_HEADS=4, NUM_SPEECH_LAYERS=4, NUM_SHARED_LAYERS=4),
}
COMMON_BINDINGS = {
    "CONV_KERNEL": 5, "LEFT_MAX_POSITION": 64, "RIGHT_MAX_POSITION": 8, "CODEBOOK_SIZE": 1024,
    "DROPOUT_RATE": 0.0, "REMAT_POLICY": "'none'",
}
MODEL_GIN = ["models/w2vbert2_600m.gin", "experiments/mslam_ctc.gin"]
BEST_RQ_BINDINGS = ["MSLAMModel.quantizer = 'best_rq'", "ObjectiveWeights.speech_contrastive = 0.0",
                    "ObjectiveWeights.diversity = 0.0"]
JOINT_GIN = ["models/tiny.gin", "experiments/mslam_ctc_xmodal.gin", "runs/pretrain.gin", "runs/demo.gin"]
# No corpus: the vocabulary takes the demo corpus' size (120 characters, rounded to 128).
JOINT_BINDINGS = ["MODEL_DIR = '/tmp/unused'", "CORPUS_DIR = '/tmp/unused'", "corpus_vocab_size.corpus_dir = None",
                  "VOCAB_SIZE = 128"]


def random_audio(batch: int, seconds: float, seed: int = 0) -> np.ndarray:
  rs = np.random.RandomState(seed)
  return (0.1 * rs.randn(batch, int(seconds * SAMPLE_RATE))).clip(-1, 1).astype(np.float32)


def _timed(step, warmup: int, steps: int) -> list[float]:
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def _profiled(step, profile_dir: str | None) -> None:
  """A jax.profiler trace of PROFILED_STEPS more steps in `profile_dir` (nothing when it is None)."""
  if profile_dir:
    profile_summary.profiled(step, profile_dir, PROFILED_STEPS)


def _print_profile(profile_dir: str | None) -> None:
  if profile_dir:
    print(profile_summary.format_summary(profile_summary.summarize(profile_dir, PROFILED_STEPS)))


# -- ours --------------------------------------------------------------------------------------

def build_trainer(gin_files, bindings, batch):
  """Parses gin and builds (trainer, state, sharded batch, compile seconds) for `batch`."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mslam_jax import config, optimizers, partitioning  # pylint: disable=g-import-not-at-top
  from mslam_jax import garbage_collector  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top

  garbage_collector.tune()  # as every `mslam` command does once its imports are done
  gin.clear_config()
  config.parse_gin(gin_files, bindings)
  trainer = trainer_lib.Trainer(mslam.MSLAMModel(), optimizers.make_optimizer(), partitioning.make_mesh(),
                                batch)
  state = trainer.init_state()
  sharded = trainer.shard_batch(batch)
  start = time.perf_counter()
  trainer.lower_train_step().compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(state)
  return trainer, state, sharded, compile_s


def size_bindings(size: str, extra=()) -> list[str]:
  values = dict(SIZES[size], **COMMON_BINDINGS)
  return [f"{k} = {v}" for k, v in values.items()] + BEST_RQ_BINDINGS + list(extra)


def run_ours(size: str, audio: np.ndarray, warmup: int, steps: int, extra_bindings=(),
             profile_dir: str | None = None) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  batch = {"speech": {"audio": audio, "audio_mask": np.ones(audio.shape, np.int32),
                      "lang": np.zeros(audio.shape[:1], np.int32)}}
  trainer, state, sharded, compile_s = build_trainer(MODEL_GIN, size_bindings(size, extra_bindings), batch)
  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], sharded)
    jax.block_until_ready(metrics)
    holder["metrics"] = metrics

  times = _timed(step, warmup, steps)
  _profiled(step, profile_dir)
  return {"times": times, "compile_s": compile_s, "loss": float(holder["metrics"]["loss"])}


def run_joint(warmup: int, steps: int, extra_bindings=(), profile_dir: str | None = None) -> dict:
  """The demo's three-stream step (speech, text, paired) on zero-ish random inputs."""
  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mslam_jax import config, trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  gin.clear_config()
  config.parse_gin(JOINT_GIN, JOINT_BINDINGS + list(extra_bindings))
  spec = trainer_lib.contract_batch_spec()
  rs = np.random.RandomState(0)

  def fill(s):
    if s.dtype == np.float32:
      return (0.1 * rs.randn(*s.shape)).astype(np.float32)
    return rs.randint(5, 60, size=s.shape).astype(np.int32) if len(s.shape) == 2 else np.zeros(s.shape, np.int32)

  batch = jax.tree.map(fill, spec)
  for sub in batch.values():  # every item fully valid
    for key in list(sub):
      if key.endswith("_mask"):
        sub[key] = np.ones(sub[key].shape, np.int32)
  trainer, state, sharded, compile_s = build_trainer(JOINT_GIN, JOINT_BINDINGS + list(extra_bindings), batch)
  holder = {"state": state}

  def step():
    holder["state"], metrics = trainer.train_step(holder["state"], sharded)
    jax.block_until_ready(metrics)

  times = _timed(step, warmup, steps)
  _profiled(step, profile_dir)
  seconds = trainer_lib.audio_seconds(batch)
  return {"times": times, "compile_s": compile_s, "audio_seconds": seconds}


# -- peer --------------------------------------------------------------------------------------

def peer_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    import transformers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def run_peer(size: str, audio: np.ndarray, warmup: int, steps: int, features_inside: bool,
             bf16: bool = False) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from transformers.models.wav2vec2 import modeling_wav2vec2  # pylint: disable=g-import-not-at-top

  s = SIZES[size]
  torch.manual_seed(0)
  config = transformers.Wav2Vec2BertConfig(
      hidden_size=s["EMBED_DIM"], num_hidden_layers=s["NUM_SPEECH_LAYERS"] + s["NUM_SHARED_LAYERS"],
      num_attention_heads=s["NUM_HEADS"], intermediate_size=s["MLP_DIM"],
      conv_depthwise_kernel_size=COMMON_BINDINGS["CONV_KERNEL"], position_embeddings_type="relative_key",
      left_max_position_embeddings=COMMON_BINDINGS["LEFT_MAX_POSITION"],
      right_max_position_embeddings=COMMON_BINDINGS["RIGHT_MAX_POSITION"], feature_projection_input_dim=160,
      hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0,
      conformer_conv_dropout=0.0, layerdrop=0.0, final_dropout=0.0, add_adapter=False,
      mask_time_prob=0.065, mask_time_length=10)  # masks come from the step; this creates the mask embedding
  model = transformers.Wav2Vec2BertModel(config).train()
  num_targets = COMMON_BINDINGS["CODEBOOK_SIZE"]
  head = torch.nn.Linear(s["EMBED_DIM"], num_targets)
  projection = torch.nn.init.xavier_uniform_(torch.empty(160, 16))  # BEST-RQ: frozen
  codebook = torch.nn.functional.normalize(torch.randn(num_targets, 16), dim=-1)
  params = list(model.parameters()) + list(head.parameters())
  optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
  extractor = transformers.SeamlessM4TFeatureExtractor()
  clips = list(audio)

  def features():
    out = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    return out["input_features"], out["attention_mask"]

  precomputed = features()
  def step():
    feats, mask = features() if features_inside else precomputed
    with torch.no_grad():  # BEST-RQ targets of the (unmasked) stacked log-mels
      x = torch.nn.functional.layer_norm(feats, feats.shape[-1:], eps=1e-5)
      targets = torch.argmax(torch.nn.functional.normalize(x @ projection, dim=-1) @ codebook.T, dim=-1)
    masked = modeling_wav2vec2._compute_mask_indices(  # pylint: disable=protected-access
        tuple(feats.shape[:2]), mask_prob=0.065, mask_length=10, attention_mask=mask, min_masks=1)
    masked = torch.from_numpy(masked) & mask.bool()
    # bf16: torch's CPU autocast, whose matmuls take bfloat16 operands (oneDNN, AMX where present).
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
      hidden = model(feats, attention_mask=mask, mask_time_indices=masked).last_hidden_state
      loss = torch.nn.functional.cross_entropy(head(hidden[masked]), targets[masked])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss

  times = _timed(step, warmup, steps)
  return {"times": times, "threads": torch.get_num_threads()}


# -- report ------------------------------------------------------------------------------------

def _median(times):
  return statistics.median(times)


# -- processes ---------------------------------------------------------------------------------

def _configure_cache(enabled: bool) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if enabled:
    from mslam_jax import compilation_cache  # pylint: disable=g-import-not-at-top
    compilation_cache.enable()
  else:
    jax.config.update("jax_enable_compilation_cache", False)


def _worker(side: str, args, profile: str | None = None) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--worker", side, "--size", args.size,
             "--batch", str(args.batch), "--seconds", str(args.seconds), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--microbatches", str(args.microbatches)] + [f"--gin={g}" for g in args.gin]
  if args.cache:
    command.append("--cache")
  if args.bf16:
    command.append("--bf16")
  if profile:
    command += ["--profile", profile]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  from mslam_jax import cpu_host  # pylint: disable=g-import-not-at-top
  if side.startswith("ours"):  # ours runs with the compiler settings every `mslam` command uses
    env["XLA_FLAGS"] = cpu_host.compiler_flags(env.get("XLA_FLAGS"))
  if side.startswith("ours") or args.peer_allocator:  # and its allocator (cpu_host)
    env = cpu_host.allocator_environment(env) or env
  proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{side} worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def _allocator() -> str:
  return os.path.basename(os.environ.get("LD_PRELOAD", "")) or "glibc malloc"


def _run_worker(args) -> int:
  audio = random_audio(args.batch, args.seconds)
  if args.worker.startswith("ours"):
    _configure_cache(args.cache)
    micro = [f"Trainer.num_microbatches = {args.microbatches}"] if args.worker == "ours_micro" else []
    r = run_ours(args.size, audio, args.warmup, args.steps, list(args.gin) + micro + _precision_bindings(args),
                 args.profile)
  else:
    r = run_peer(args.size, audio, args.warmup, args.steps, features_inside=args.worker.endswith("inside"),
                 bf16=args.bf16 and "float32" not in args.worker)
  r["allocator"] = _allocator()
  print(json.dumps(r))
  return 0


def _precision_bindings(args) -> list[str]:
  return ["matmul_precision.precision = 'bfloat16'"] if args.bf16 else []


def _peer_sides(args) -> list[tuple[str, str]]:
  """(worker, label) of each peer run: at our precision; with --bf16 also in float32, as the peer
  runs by default."""
  sides = [("peer_features_outside", "peer, features outside its step"),
           ("peer_features_inside", "peer, features inside its step")]
  if args.bf16:
    sides = [(k, label.replace("peer,", "peer (autocast),")) for k, label in sides] + [
        ("peer_float32_features_outside", "peer (float32), features outside"),
        ("peer_float32_features_inside", "peer (float32), features inside")]
  return sides


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--joint", action="store_true", help="time the demo's three-stream step (no peer)")
  parser.add_argument("--no-peer", action="store_true")
  parser.add_argument("--cache", action="store_true", help="use the persistent compilation cache")
  parser.add_argument("--profile", help=f"trace {PROFILED_STEPS} more of our steps here and print the top ops")
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding for ours")
  parser.add_argument("--rounds", type=int, default=2, help="alternations of ours and the peer")
  parser.add_argument("--microbatches", type=int, default=2,
                      help="ours again as this many exact micro-batches (0: skip)")
  parser.add_argument("--peer-allocator", action="store_true",
                      help="run the peer under the allocator ours uses (tcmalloc, where installed) too")
  parser.add_argument("--bf16", action="store_true",
                      help="both sides' matmuls take bfloat16 operands: ours by matmul_precision, the "
                           "peer's by torch.autocast")
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    return _run_worker(args)

  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.joint:  # in this process: the compiler settings and allocator every `mslam` command uses
    from mslam_jax import cli, cpu_host  # pylint: disable=g-import-not-at-top
    cpu_host.tune_compiler()
    cli.import_tensorflow_quietly()  # the demo's gin loads the data pipeline, and TensorFlow with it
    if argv is None:  # run as a script, not called by a test
      cpu_host.restart_under_allocator([sys.executable, os.path.abspath(__file__)] + sys.argv[1:])
  import jax  # pylint: disable=g-import-not-at-top
  _configure_cache(args.cache)
  device = f"{jax.default_backend()} x{jax.device_count()} ({os.cpu_count()} host cores)"

  if args.joint:
    r = run_joint(args.warmup, args.steps, list(args.gin) + _precision_bindings(args), args.profile)
    med = _median(r["times"])
    result = {"mode": "joint", "device": device, "allocator": _allocator(), "compile_s": r["compile_s"], "step_s": med,
              "audio_s_per_s": r["audio_seconds"] / med, "times": r["times"]}
    if args.json:
      print(json.dumps(result))
    else:
      print(f"joint demo step (tiny, speech+text+paired) on {device}, {result['allocator']}")
      print(f"  compile {r['compile_s']:.1f} s   step median {med:.3f} s   "
            f"{r['audio_seconds'] / med:.1f} audio s/s")
      _print_profile(args.profile)
    return 0

  audio_seconds = args.batch * args.seconds
  result = {"mode": "step", "size": args.size, "device": device, "batch": args.batch, "seconds": args.seconds,
            "matmul_operands": "bfloat16" if args.bf16 else "float32"}
  have_peer = not args.no_peer and peer_available()
  # Each side runs in its own process (torch's and TensorFlow's OpenMP runtimes, and XLA's thread
  # pool, must not share one), alternating for `--rounds` rounds so that load from other processes
  # hits both alike; a side's figure is the median over all of its timed steps.
  sides = (["ours"] + (["ours_micro"] if args.microbatches > 1 else [])
           + ([key for key, _ in _peer_sides(args)] if have_peer else []))
  for round_index in range(args.rounds):
    for side in sides:
      r = _worker(side, args, profile=args.profile if round_index == 0 and side == "ours" else None)
      entry = result.setdefault(side, {"times": []})
      entry["times"] += r["times"]
      entry.update({k: v for k, v in r.items() if k != "times"})
  for side in sides:
    result[side]["step_s"] = _median(result[side]["times"])

  if args.json:
    print(json.dumps(result))
    return 0
  ours = [("ours", "ours (Trainer.train_step)")]
  if "ours_micro" in result:
    ours.append(("ours_micro", f"ours, {args.microbatches} micro-batches"))
  print(f"train step, size {args.size}, {args.batch} clips x {args.seconds:g} s, on {device}, "
        f"{result['matmul_operands']} matmul operands")
  for key, label in ours:
    step_s = result[key]["step_s"]
    print(f"  {label:44s} median {step_s:.3f} s  {audio_seconds / step_s:7.1f} audio s/s"
          f"   (compile {result[key]['compile_s']:.1f} s; {result[key]['allocator']})")
  _print_profile(args.profile)
  if not have_peer:
    print("  peer skipped (needs the hf extra: torch, transformers)" if not args.no_peer else "")
    return 0
  for key, label in _peer_sides(args):
    peer_s = result[key]["step_s"]
    ratios = " / ".join(f"{peer_s / result[k]['step_s']:.2f}" for k, _ in ours)
    print(f"  {label:44s} median {peer_s:.3f} s  {audio_seconds / peer_s:7.1f} audio s/s"
          f"   ratio peer/ours {ratios}   ({result[key]['allocator']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
