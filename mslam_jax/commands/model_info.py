"""`mslam model-info`: parameter counts of a gin-configured model, by component.

  mslam model-info --gin_file=models/mslam_600m.gin [--gin_file=experiments/mslam_ctc.gin] [--json]
"""
import argparse
import json
import logging

from mslam_jax import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--json", action="store_true", help="print a JSON object (total_params, components)")
  parser.add_argument("--depth", type=int, default=2, help="levels of the parameter tree to break down")


def run(args: argparse.Namespace) -> int:
  from mslam_jax.models import model_info  # pylint: disable=g-import-not-at-top
  config.import_configurables()
  config.parse_gin(args.gin_file, getattr(args, "gin_bindings", []), args.gin_search_path)
  info = model_info.model_info(config.build_model(), depth=args.depth)
  logging.info("model-info: %s parameters", f"{info['total_params']:,}")
  print(json.dumps(info, indent=2) if args.json else model_info.format_table(info))
  return 0
