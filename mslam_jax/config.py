"""Gin plumbing shared by every entry point: flags, config lookup, and the operative-config log."""
import argparse
import logging
import os
from typing import Sequence

import gin



def package_gin_dir() -> str:
  """The directory of the gin configs shipped with the package (gin_configs/ in the repository)."""
  import mslam_jax.gin_configs as configs  # pylint: disable=g-import-not-at-top
  return os.path.dirname(configs.__file__)


def add_gin_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--gin_file", action="append", default=[],
      help="gin file(s), as a path or relative to the package's gin_configs/ (e.g. models/tiny.gin)")
  parser.add_argument(
      "--gin_search_path", action="append", default=[], help="extra directories to resolve gin files and includes")
  # --gin.NAME=VALUE bindings are collected by mslam_jax.cli into args.gin_bindings.


def resolve_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
  """Finds a gin file given as a path, or relative to a search path or the packaged configs."""
  if os.path.exists(name):
    return name
  for directory in list(search_paths) + [package_gin_dir()]:
    candidate = os.path.join(directory, name)
    if os.path.exists(candidate):
      return candidate
  raise FileNotFoundError(
      f"gin file {name!r} not found as a path nor under {list(search_paths) + [package_gin_dir()]}")


def _drop_package_resource_reader() -> None:
  """Includes resolve through the search paths above; gin's reader that treats an include's
  directory as a Python package only logs a spurious 'Path not found' error for each one."""
  from gin import resource_reader  # pylint: disable=g-import-not-at-top
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [r for r in readers if r[0] is not resource_reader.system_path_reader]


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and NAME=VALUE bindings; includes resolve against the packaged configs."""
  _drop_package_resource_reader()
  for directory in list(search_paths) + [package_gin_dir()]:
    gin.add_config_file_search_path(directory)
  files = [resolve_gin_file(f, search_paths) for f in gin_files]
  gin.parse_config_files_and_bindings(files, list(bindings), finalize_config=False)


def log_operative_config(model_dir: str | None = None) -> str:
  """Logs the operative config (call after the configurables ran) and writes it to model_dir."""
  text = gin.operative_config_str()
  logging.info("Operative gin config:\n%s", text)
  if model_dir:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
      f.write(text)
  return text
