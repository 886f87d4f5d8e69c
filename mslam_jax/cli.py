"""The `mslam` command: one entry point that dispatches to mslam_jax/commands/<command>.py.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are imported
only when their command runs, so `mslam data languages` does not pay for JAX or TF. A command's
configuration or input mistake (ValueError, FileNotFoundError, ... raised anywhere below it)
becomes one line, `mslam COMMAND: message`, and exit code 2, here and nowhere else.
"""
import argparse
import ast
import contextlib
import importlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

from mslam_jax import compilation_cache
from mslam_jax import cpu_host
from mslam_jax import garbage_collector

# command -> (module, one-line help)
COMMANDS = {
    "data": ("mslam_jax.commands.data", "build and inspect corpora: languages, build-builtin, show-batch"),
    "model-info": ("mslam_jax.commands.model_info", "parameter counts of a gin-configured model"),
    "train": ("mslam_jax.commands.train", "gin-configured pre-training"),
    "compile": ("mslam_jax.commands.compile", "ahead-of-time compile of the train step for a mesh; memory report"),
    "demo": ("mslam_jax.commands.demo", "build a small corpus, pre-train a tiny model, evaluate, report"),
    "eval": ("mslam_jax.commands.eval", "evaluation sweep over a run's checkpoints (latest, all or one); reports"),
    "retrieve": ("mslam_jax.commands.retrieve", "speech<->text retrieval of your audio files and texts"),
    "langid": ("mslam_jax.commands.langid", "spoken language ID of audio files (linear probe)"),
    "finetune": ("mslam_jax.commands.finetune", "fine-tune a checkpoint: CTC ASR, language ID or speech translation"),
    "transcribe": ("mslam_jax.commands.transcribe", "speech to text with a fine-tuned CTC head (beam, character LM)"),
    "align": ("mslam_jax.commands.align", "CTC forced alignment: word/char timestamps, TextGrid, PNG"),
    "convert": ("mslam_jax.commands.convert", "weights from/to transformers' Wav2Vec2BertModel (w2v-BERT 2.0)"),
}

# What a command's mistake raises (bad flag values, gin errors, missing files): a message, exit 2.
# ImportError: an optional dependency a command needs is not installed (e.g. safetensors).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError)
EXIT_USER_ERROR = 2


def quiet_accelerator_probe() -> None:
  """On a machine without an accelerator plugin, JAX's probe of CUDA prints a `cuInit` error
  line per process, and TensorFlow's CPU build warns about CUDA stubs: a healthy CPU run would
  look broken. Pick the CPU platform when no plugin is installed (a user's own JAX_PLATFORMS
  wins) and quiet TF's C++ logging below warnings; real errors still show."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if "JAX_PLATFORMS" in os.environ:
    return
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    plugins = [d.metadata["Name"] for d in metadata.distributions()
               if (d.metadata["Name"] or "").lower().startswith(("jax-cuda", "jax_cuda", "libtpu", "jax-rocm",
                                                                  "jax_rocm", "jax-tpu"))]
  except Exception:  # pylint: disable=broad-except
    return
  if not plugins:
    os.environ["JAX_PLATFORMS"] = "cpu"


# What TensorFlow's CPU wheel prints to stderr when it loads on a healthy CPU-only machine.
_BENIGN_TF_LINES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|failed call to cuInit|TF-TRT Warning")


@contextlib.contextmanager
def _without_benign_tf_lines():
  """Drops TensorFlow's load-time notices about oneDNN and absent CUDA drivers from what the block
  writes to stderr; any other line still reaches it. TF's C++ logging ignores TF_CPP_MIN_LOG_LEVEL,
  hence the file-descriptor redirect."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode("utf-8", errors="replace").splitlines(keepends=True):
        if not _BENIGN_TF_LINES.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
  """TensorFlow's own loader, run under `_without_benign_tf_lines`; the module keeps its own loader."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    try:
      with _without_benign_tf_lines():
        self._loader.exec_module(module)
        # tf.data runs on the host: TF keeps off the GPUs JAX uses (no memory taken there), and its
        # CUDA probe (a `cuInit` error line on a CPU-only machine) happens inside this window.
        module.config.set_visible_devices([], "GPU")
    finally:
      module.__loader__ = module.__spec__.loader = self._loader


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds `tensorflow` as the import system would and loads it quietly, whoever imports it first
  (SeqIO, TFDS, TensorBoard): a command that never reads data through TF (a stand-in run,
  `model-info`, `convert`) does not pay the ~5 s of CPU its import costs."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow":
      return None
    sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def import_tensorflow_quietly() -> None:
  """Makes the first import of TensorFlow (SeqIO's data pipeline needs it), wherever it happens,
  drop TF's load-time notices (`_BENIGN_TF_LINES`)."""
  if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
    return
  sys.meta_path.insert(0, _QuietTensorFlowFinder())


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


def entry() -> None:
  """The `mslam` console script and `python -m mslam_jax`: on a CPU-only host with tcmalloc
  installed, the command starts once more under it (`cpu_host.restart_under_allocator`), then runs."""
  cpu_host.restart_under_allocator([sys.executable, "-m", "mslam_jax"] + sys.argv[1:])
  sys.exit(main())


def main(argv=None) -> int:
  garbage_collector.tune()  # before the imports: fewer collections while they load
  quiet_accelerator_probe()
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
  cpu_host.tune_compiler()
  import_tensorflow_quietly()
  module = importlib.import_module(args._module)
  garbage_collector.tune()  # and after them, to freeze what they made
  try:
    return int(module.run(args) or 0)
  except BrokenPipeError:
    # `mslam data languages | head`: the reader has gone; end quietly, as any Unix filter does.
    # (SIGPIPE stays ignored: at its default, a library's write to a finished helper's pipe, or the
    # test session calling main() in-process, would be killed instead of seeing an error.)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0
  except (*USER_ERRORS, KeyError, RuntimeError) as e:
    if isinstance(e, KeyError) and not _is_name_lookup(e):
      raise  # a bare missing key is a bug: keep its traceback
    if isinstance(e, RuntimeError) and not _GIN_MISSING_BINDINGS.match(one_line(e)):
      raise
    logging.getLogger(__name__).debug("mslam %s failed", args.command, exc_info=True)
    print(f"mslam {args.command}: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR


def _is_name_lookup(error: KeyError) -> bool:
  """A KeyError that explains itself (an unknown evaluator, task or language the user named)
  rather than a bare missing key (`KeyError('loss')`, a bug)."""
  return " " in one_line(error).strip()


# gin's error for a configurable called without its required arguments (e.g. no --gin_file at all).
_GIN_MISSING_BINDINGS = re.compile(r"^Required bindings for `\w+` not provided in config")
# gin appends "  In call to configurable 'train' (<function ...>)" lines to an error it passes on.
_GIN_CONTEXT = re.compile(r"^\s*In call to configurable ")


def one_line(error: BaseException) -> str:
  """The error's message on one line, without gin's call-site notes (a KeyError's message comes
  quoted: it is unquoted)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip() and not _GIN_CONTEXT.match(line)]
  text = " ".join(lines)
  if isinstance(error, KeyError) and len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = str(ast.literal_eval(text))
    except (ValueError, SyntaxError):
      pass
  return text or type(error).__name__


if __name__ == "__main__":
  entry()
