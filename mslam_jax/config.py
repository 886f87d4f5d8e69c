"""gin, owned in one place: flags, config lookup, parsing (one-line errors), a run's operative config
read back under its own scope, REQUIRED macros, and the model built from the config (one way).
"""
import argparse
import importlib
import logging
import os
import re
from typing import Any, Sequence

import gin

OPERATIVE_CONFIG = "operative_config.gin"  # as checkpoints.OPERATIVE_CONFIG (not imported: it starts JAX)

# Modules whose configurables an operative config may name; each registers them on import.
CONFIGURABLE_MODULES = ("mslam_jax.models.mslam", "mslam_jax.train", "mslam_jax.trainer", "mslam_jax.optimizers",
                        "mslam_jax.partitioning", "mslam_jax.data.pipeline", "mslam_jax.tasks.builtin",
                        "mslam_jax.models.translation", "mslam_jax.models.decoder", "mslam_jax.tasks.translation",
                        "mslam_jax.data.corpora.tasks")


class ConfigError(ValueError):
  """A gin file or binding that cannot be parsed or applied; the message names it."""


class MissingRequiredMacroError(ConfigError):
  """A REQUIRED macro of a run config is still unset."""


def package_gin_dir() -> str:
  """The directory of the gin configs shipped with the package (gin_configs/ in the repository)."""
  try:
    import mslam_jax.gin_configs as configs  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed (a bare accelerator image)
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin_configs")
    if os.path.isdir(checkout):
      return checkout
    raise
  return os.path.dirname(configs.__file__)


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--gin_file", action="append", default=[],
      help="gin file(s), as a path or relative to the package's gin_configs/ (e.g. models/tiny.gin)")
  parser.add_argument(
      "--gin_search_path", action="append", default=[], help="extra directories to resolve gin files and includes")
  # --gin.NAME=VALUE bindings are collected by mslam_jax.cli into args.gin_bindings.


def _exists(path: str) -> bool:
  if "://" not in path:
    return os.path.exists(path)
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path).exists()


def _register_uri_reader() -> None:
  """gin reads local files itself; files and includes on gs:// (any etils.epath scheme) go through epath."""
  if getattr(_register_uri_reader, "done", False):
    return
  from etils import epath  # pylint: disable=g-import-not-at-top
  gin.config.register_file_reader(lambda path: epath.Path(path).open("r"),
                                  lambda path: "://" in path and epath.Path(path).exists())
  _register_uri_reader.done = True


def resolve_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
  """Finds a gin file given as a path (local or a URI such as gs://), or relative to a search path
  or the packaged configs."""
  if _exists(name):
    return name
  if "://" in name:
    raise FileNotFoundError(f"gin file {name!r} not found")
  for directory in list(search_paths) + [package_gin_dir()]:
    candidate = os.path.join(directory, name)
    if _exists(candidate):
      return candidate
  raise FileNotFoundError(
      f"gin file {name!r} not found as a path nor under {list(search_paths) + [package_gin_dir()]}")


def _drop_package_resource_reader() -> None:
  """Includes resolve through the search paths above; gin's reader that treats an include's
  directory as a Python package only logs a spurious 'Path not found' error for each one."""
  from gin import resource_reader  # pylint: disable=g-import-not-at-top
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [r for r in readers if r[0] is not resource_reader.system_path_reader]


def _parse(files: Sequence[str], bindings: Sequence[str], **kwargs) -> None:
  """gin's parse, with its errors as one-line ConfigErrors that name the binding or file."""
  _register_uri_reader()
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False, **kwargs)
  except SyntaxError as e:
    where = " ".join(str(e).split())
    hint = ""
    for binding in bindings:
      name, _, value = binding.partition("=")
      value = value.strip()
      if value and not re.match(r"""^(['"\[({@%]|-?\d|True$|False$|None$)""", value):
        hint = (f"; `{binding.strip()}`: a string value needs quotes, e.g. "
                f"--gin.{name.strip()}=\"'{value}'\"")
        break
    raise ConfigError(f"gin cannot parse the configuration ({where}){hint}") from None
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError("gin: " + " ".join(str(e).split())) from None


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and NAME=VALUE bindings; includes resolve against the packaged configs."""
  _drop_package_resource_reader()
  for directory in list(search_paths) + [package_gin_dir()]:
    gin.add_config_file_search_path(directory)
  files = [resolve_gin_file(f, search_paths) for f in gin_files]
  _parse(files, bindings)


# -- macros ----------------------------------------------------------------------------------------

def _is_required(value: Any) -> bool:
  return isinstance(value, gin.config.ConfigurableReference) and str(value) == "%gin.REQUIRED"


def bound_macros() -> dict[str, Any]:
  """Every macro of the current config -> its value (REQUIRED ones as gin's reference).

  gin has no public way to list macros; this is the one place that reads its table.
  """
  values = {}
  for (name, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == "gin.macro" and "value" in params:
      values[name] = params["value"]
  return values


def macro(name: str, default: Any = None) -> Any:
  """A macro's value, `default` when it is unbound or REQUIRED."""
  value = bound_macros().get(name, default)
  return default if _is_required(value) else value


def required_macros_unset() -> list[str]:
  """Macros still bound to %gin.REQUIRED (a run config's REQUIRED list) after all bindings."""
  return sorted(name for name, value in bound_macros().items() if _is_required(value))


def check_required_macros() -> None:
  missing = required_macros_unset()
  if missing:
    flags = " ".join(f"--gin.{name}=..." for name in missing)
    raise MissingRequiredMacroError(
        f"REQUIRED gin macro(s) not set: {', '.join(missing)}. The run config lists them in its "
        f"header; pass {flags}")


# -- a run's config read back ----------------------------------------------------------------------

def import_configurables() -> None:
  """Imports the modules an operative config names (each registers its configurables)."""
  for name in CONFIGURABLE_MODULES:
    try:
      importlib.import_module(name)
    except ImportError as e:
      logging.debug("Not importing %s: %s", name, e)


def parse_run_config(model_dir: str | None, gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
                     search_paths: Sequence[str] = ()) -> None:
  """Replaces the process' config by a run's: its operative config, then `gin_files`, then
  `bindings` (later wins).

  The files come after the run's config so that they choose, e.g., the evaluators (a
  pre-training config names none); the macros the run set (CORPUS_DIR, MODEL_DIR, ...) survive
  the files' `= %gin.REQUIRED` declarations.
  """
  import_configurables()
  _drop_package_resource_reader()
  gin.clear_config()
  for directory in list(search_paths) + [package_gin_dir()]:
    gin.add_config_file_search_path(directory)
  operative = os.path.join(model_dir, OPERATIVE_CONFIG) if model_dir else ""
  run_macros = {}
  if operative and _exists(operative):
    _parse([operative], [], skip_unknown=True)
    run_macros = {k: v for k, v in bound_macros().items() if not _is_required(v)}
  else:
    logging.warning("%s not found: the model and corpus must come from --gin_file/--gin flags",
                    operative or "no run directory")
  _parse([resolve_gin_file(f, search_paths) for f in gin_files], [], skip_unknown=True)
  now = bound_macros()
  restored = [f"{name} = {value!r}" for name, value in run_macros.items()
              if _is_required(now.get(name)) and not isinstance(value, gin.config.ConfigurableReference)]
  _parse([], restored + list(bindings), skip_unknown=True)


def build_model() -> Any:
  """The configured model: what `train.model` names (a run config binds it); for a speech
  translation fine-tuning run, its TranslationModel (all of it in gin); else MSLAMModel as the
  size file configures it. The one way every command builds the model from gin."""
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top
  import_configurables()
  try:
    reference = gin.query_parameter("train.model")
  except ValueError:
    reference = None
  if _is_required(reference) or reference is gin.REQUIRED or reference is None:
    try:
      task = gin.query_parameter("finetune_run.task")
    except ValueError:
      task = None
    if task == "translate":
      from mslam_jax.models import translation  # pylint: disable=g-import-not-at-top
      return translation.TranslationModel()
    return mslam.MSLAMModel()
  if isinstance(reference, gin.config.ConfigurableReference):
    return reference.scoped_configurable_fn() if reference.evaluate else reference.scoped_configurable_fn
  return reference


def load_run(model_dir: str, step: int | str | None = None, gin_files: Sequence[str] = (),
             bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> tuple[Any, Any, int]:
  """(model, params, step) of a run directory's checkpoint (latest when `step` is None): its
  config parsed (`parse_run_config`), the model built, the parameters restored."""
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  parse_run_config(model_dir, gin_files, bindings, search_paths)
  model = build_model()
  params, step = checkpoints.restore_params(model_dir, step)
  return model, params, step


def write_operative_config(model_dir: str, text: str | None = None) -> str:
  """Writes `text` (default: the operative config; call after the configurables ran) as model_dir's
  operative config, local or remote (gs://...: through etils.epath); returns it."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  text = gin.operative_config_str() if text is None else text
  epath.Path(model_dir).mkdir(parents=True, exist_ok=True)
  (epath.Path(model_dir) / OPERATIVE_CONFIG).write_text(text, encoding="utf-8")
  return text


def read_operative_config(model_dir: str) -> str | None:
  """model_dir's operative config (local or remote), or None when it has none."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = epath.Path(model_dir) / OPERATIVE_CONFIG
  return path.read_text(encoding="utf-8") if path.exists() else None


def log_operative_config(model_dir: str | None = None) -> str:
  """Logs the operative config (call after the configurables ran) and writes it to model_dir."""
  text = write_operative_config(model_dir) if model_dir else gin.operative_config_str()
  logging.info("Operative gin config:\n%s", text)
  return text
