"""What the command modules share: one flag vocabulary, logging, JSON output.

Flags mean the same in every command:
  --model_dir   a run directory (pre-training, `mslam convert from-hf`, or `mslam finetune --out`)
  --step        a checkpoint step of it (default: latest; `mslam eval` also takes `all`)
  --corpus_dir  a corpus directory (default: the run's CORPUS_DIR)
  --out         where the command writes
Spellings of earlier releases (`--checkpoint`, `--output_dir`, `--corpus`) are accepted with a
warning for one release.
"""
import argparse
import json
import logging
import sys
from typing import Any


class _DeprecatedAlias(argparse.Action):
  """Stores the value; warns when the flag was given by one of its old spellings."""

  def __init__(self, option_strings, dest, old=(), **kwargs):
    self._old = tuple(old)
    super().__init__(option_strings, dest, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    if option_string in self._old:
      new = next(o for o in self.option_strings if o not in self._old)
      print(f"mslam: {option_string} is deprecated and will be removed in the next release; "
            f"use {new}", file=sys.stderr)
    setattr(namespace, self.dest, values)


def add_flag(parser: argparse.ArgumentParser, flag: str, *, old: tuple[str, ...] = (), **kwargs) -> None:
  """`parser.add_argument(flag, **kwargs)`, also accepting the `old` spellings (with a warning)."""
  if old:
    kwargs.setdefault("dest", flag.lstrip("-").replace("-", "_"))
    parser.add_argument(flag, *old, action=_DeprecatedAlias, old=old, **kwargs)
  else:
    parser.add_argument(flag, **kwargs)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(quiet_absl: bool = True) -> None:
  logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
  # A logging.warning() before this point (an import, a deprecated flag) has already configured the
  # root logger at WARNING, which makes basicConfig a no-op and would swallow every INFO line.
  # Its stderr handler gets our format too; other handlers (pytest's log capture) are left alone.
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in root.handlers:
    if getattr(handler, "stream", None) is sys.stderr:
      handler.setFormatter(logging.Formatter(LOG_FORMAT))
  if quiet_absl:
    # Orbax logs every phase of every save at INFO through absl; keep its warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)


def print_json(payload: Any, indent: int | None = 1) -> None:
  print(json.dumps(payload, ensure_ascii=False, indent=indent))
