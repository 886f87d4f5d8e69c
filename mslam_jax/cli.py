"""The `mslam` command: one entry point that dispatches to the module owning each sub-command.

Each sub-command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their command runs, so `mslam data languages` does not pay for JAX or TF.
"""
import argparse
import importlib
import signal
import sys

from mslam_jax import compilation_cache

# command -> (module, one-line help)
COMMANDS = {
    "data": ("mslam_jax.data.commands", "build and inspect corpora: languages, build-builtin, show-batch"),
    "model-info": ("mslam_jax.models.model_info", "parameter counts of a gin-configured model"),
    "train": ("mslam_jax.train", "gin-configured pre-training"),
    "compile": ("mslam_jax.aot", "ahead-of-time compile of the train step for a mesh; memory report"),
    "demo": ("mslam_jax.demo", "build a small corpus, pre-train a tiny model, evaluate, report"),
    "eval": ("mslam_jax.eval", "evaluation sweep over a run's checkpoints (latest, all or one); reports"),
    "retrieve": ("mslam_jax.evaluation.retrieve_command", "speech<->text retrieval of your audio files and texts"),
    "langid": ("mslam_jax.evaluation.langid_command", "spoken language ID of audio files (linear probe)"),
    "finetune": ("mslam_jax.evaluation.finetune_command", "CTC fine-tuning of a checkpoint (frozen/top-k/all)"),
    "align": ("mslam_jax.evaluation.align_command", "CTC forced alignment: word/char timestamps, TextGrid, PNG"),
    "convert": ("mslam_jax.interop.commands", "weights from/to transformers' Wav2Vec2BertModel (w2v-BERT 2.0)"),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="mslam", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name, (module_name, help_text) in COMMANDS.items():
    command_parser = sub.add_parser(name, help=help_text, description=help_text)
    command_parser.set_defaults(_module=module_name)
    # Only the chosen command's module is imported (below); the others show their help text.
    if name in sys.argv[1:2]:
      importlib.import_module(module_name).add_arguments(command_parser)
  return parser


def main(argv=None) -> int:
  # `mslam data languages | head` should end quietly, as any Unix filter does.
  signal.signal(signal.SIGPIPE, signal.SIG_DFL)
  argv = sys.argv[1:] if argv is None else list(argv)
  saved, sys.argv = sys.argv, [sys.argv[0]] + argv
  try:
    parser = build_parser()
  finally:
    sys.argv = saved
  # `--gin.NAME=VALUE` flags are not known to argparse; they pass through in `args.gin_bindings`.
  args, unknown = parser.parse_known_args(argv)
  gin_flags = [flag for flag in unknown if flag.startswith("--gin.")]
  others = [flag for flag in unknown if not flag.startswith("--gin.")]
  if others:
    parser.error(f"unrecognized arguments: {' '.join(others)}")
  args.gin_bindings = [flag[len("--gin."):] for flag in gin_flags]
  # Every command: compiled programs are reused across processes (it imports no JAX itself).
  compilation_cache.enable()
  module = importlib.import_module(args._module)
  return int(module.run(args) or 0)


if __name__ == "__main__":
  sys.exit(main())
