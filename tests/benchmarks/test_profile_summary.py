"""benchmarks/profile_summary.py: which rows of a Perfetto trace count, and how they add up."""
import gzip
import json

import pytest

from tests import benchmark_scripts


def _load():
  return benchmark_scripts.load("profile_summary")


def _write_trace(directory, events):
  run = directory / "plugins" / "profile" / "2026_12_04_00_00_00"
  run.mkdir(parents=True)
  with gzip.open(run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)


def _process(pid, name):
  return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}


def _op(pid, name, dur, **args):
  return {"ph": "X", "pid": pid, "tid": 1, "ts": 0, "dur": dur, "name": name, "args": args}


def test_a_device_trace_counts_the_device_rows_only(tmp_path):
  ps = _load()
  _write_trace(tmp_path, [
      _process(1, "/host:CPU"), _process(2, "/device:GPU:0"),
      _op(1, "$python step", 5000.0), _op(1, "ThunkExecutor::Execute", 4000.0, hlo_op="x"),
      _op(2, "nvjet_sm90_tst_128x160", 3000.0), _op(2, "nvjet_sm90_tst_128x160", 1000.0),
      _op(2, "input_scatter_fusion_4", 1500.0), _op(2, "loop_multiply_fusion", 500.0)])
  s = ps.summarize(str(tmp_path), steps=2)
  assert s["scope"] == "device"
  assert s["ms_per_step"] == 3.0  # 6,000 us of device time over 2 steps
  top = s["ops"][0]
  assert (top["name"], top["ms_per_step"], top["calls_per_step"]) == ("nvjet_sm90_tst_128x160", 2.0, 1.0)
  assert s["kinds"] == {"matmul": 2.0, "other fusion": 1.0}  # the scatter is a fusion too
  assert "input_scatter_fusion_4" in ps.format_summary(s)


def test_a_cpu_trace_counts_xla_ops_on_every_thread(tmp_path):
  ps = _load()
  _write_trace(tmp_path, [
      _process(1, "/host:CPU"),
      _op(1, "$python step", 9000.0), _op(1, "PjitFunction(_train_step)", 8000.0),
      _op(1, "ynn_fusion.364", 600.0, hlo_op="ynn_fusion.364"),
      _op(1, "reduce.12", 200.0, hlo_op="reduce.12"), _op(1, "copy.3", 200.0, hlo_op="copy.3")])
  s = ps.summarize(str(tmp_path), steps=1)
  assert s["scope"] == "XLA ops, all threads"
  assert [row["name"] for row in s["ops"]] == ["ynn_fusion.364", "reduce.12", "copy.3"]
  assert s["kinds"] == {"matmul": 0.6, "reduction": 0.2, "copy/transpose": 0.2}


def test_dtype_conversions_are_not_convolutions():
  profile_summary = _load()
  assert profile_summary.kind_of("convolution.10") == profile_summary.kind_of("conv_general_dilated") == "convolution"
  assert profile_summary.kind_of("add_convert_fusion.13") == "dtype conversion"
  assert profile_summary.kind_of("copy_convert_fusion.2") == "copy/transpose"


def test_a_directory_without_a_trace_says_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="create_perfetto_trace=True"):
    _load().summarize(str(tmp_path))
