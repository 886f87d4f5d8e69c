"""step_benchmark.py end to end at a toy batch: both sides run, at the precision asked for."""
import json

import pytest

from tests import benchmark_scripts

step_benchmark = benchmark_scripts.load("step_benchmark")


@pytest.mark.slow  # two worker processes, each compiling or building its model (~40 s)
def test_bf16_runs_both_sides_with_bfloat16_matmul_operands(capsys):
  args = ["--size", "tiny", "--batch", "2", "--seconds", "1", "--steps", "1", "--warmup", "0",
          "--rounds", "1", "--microbatches", "0", "--bf16", "--json", "--cache"]  # the suite's cache
  assert step_benchmark.main(args) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["matmul_operands"] == "bfloat16"
  assert result["ours"]["step_s"] > 0 and result["ours"]["loss"] > 0
  if step_benchmark.peer_available():
    for side in ("peer_features_outside", "peer_features_inside", "peer_float32_features_outside",
                 "peer_float32_features_inside"):
      assert result[side]["step_s"] > 0, side


def test_bf16_binds_our_matmul_precision_only_when_asked():
  parser_args = type("Args", (), {"bf16": True})
  assert step_benchmark._precision_bindings(parser_args) == ["matmul_precision.precision = 'bfloat16'"]  # pylint: disable=protected-access
  parser_args.bf16 = False
  assert not step_benchmark._precision_bindings(parser_args)  # pylint: disable=protected-access
