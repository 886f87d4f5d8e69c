"""`mslam convert`: weights in and out of transformers' Wav2Vec2BertModel (w2v-BERT 2.0).

  mslam convert from-hf --hf-dir DIR --out RUN_DIR [--shared-layers N] [--gin_file=...] [--gin.X=Y]
      A local HF directory (config.json, model.safetensors) -> RUN_DIR/checkpoints/0 (Orbax) and
      RUN_DIR/operative_config.gin: a run directory that `mslam finetune --model_dir`, `mslam eval`
      and runs/finetune_from_w2vbert2.gin start from. The size file (default
      models/w2vbert2_600m.gin) gives what HF does not have (text embedding, quantizer, heads); the
      HF config gives the architecture; the top N layers become the shared stack.
  mslam convert to-hf --model_dir RUN_OR_STEP_DIR --out DIR [--step N]
      The speech encoder of a checkpoint -> config.json, model.safetensors, preprocessor_config.json
      that transformers' Wav2Vec2BertModel / SeamlessM4TFeatureExtractor load.

Exit codes: 0 done, 2 unsupported or missing input (the message says which setting or file).
"""
import argparse
import json

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
  from_hf = sub.add_parser("from-hf", help="HF Wav2Vec2BertModel directory -> Orbax checkpoint (run directory)")
  config.add_gin_arguments(from_hf)
  from_hf.add_argument("--hf-dir", "--hf_dir", dest="hf_dir", required=True,
                       help="local transformers model directory (config.json + model.safetensors)")
  from_hf.add_argument("--out", required=True, help="run directory to create (must not hold a checkpoint 0)")
  from_hf.add_argument("--shared-layers", "--shared_layers", dest="shared_layers", type=int, default=None,
                       help="how many of the top HF layers form the shared stack (default: the size file's "
                            "MSLAMEncoder.num_shared_layers); the rest are speech-only")
  from_hf.add_argument("--seed", type=int, default=0, help="initialization of the parameters HF does not have")
  to_hf = sub.add_parser("to-hf", help="checkpoint's speech encoder -> HF Wav2Vec2BertModel directory")
  config.add_gin_arguments(to_hf)
  common.add_flag(to_hf, "--model_dir", old=("--checkpoint",), required=True,
                  help="a run directory (latest step) or one checkpoint's directory")
  to_hf.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory (default: latest)")
  to_hf.add_argument("--out", required=True, help="output directory for config.json + model.safetensors")


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.interop import hf_w2vbert  # pylint: disable=g-import-not-at-top
  bindings = list(getattr(args, "gin_bindings", []))
  if args.direction == "from-hf":
    info = hf_w2vbert.from_hf(args.hf_dir, args.out, gin_files=args.gin_file or [hf_w2vbert.DEFAULT_SIZE_GIN],
                              bindings=bindings, num_shared_layers=args.shared_layers,
                              search_paths=args.gin_search_path, seed=args.seed)
  else:
    info = hf_w2vbert.to_hf(args.model_dir, args.out, step=args.step, gin_files=args.gin_file,
                            bindings=bindings, search_paths=args.gin_search_path)
  print(json.dumps(info, indent=1))
  return 0
