"""Eval sweep faults: a failing evaluator and a damaged metrics.json never mark a checkpoint as
evaluated; the next sweep evaluates it again, and `mslam eval` says which evaluator failed."""
import json
import os

import gin
import numpy as np
import pytest

from mslam_jax import cli
from mslam_jax import config
from mslam_jax.evaluation import report
from mslam_jax.evaluation import sweep
from tests.evaluation import synthetic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  corpus = synthetic.write_corpus(str(tmp_path_factory.mktemp("corpus")), per_split={"train": 4, "test": 3})
  model_dir = str(tmp_path_factory.mktemp("run"))
  synthetic.write_run(model_dir, corpus)
  return model_dir, corpus


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


class _Flaky:
  """Fails while `broken` is set; counts the checkpoints it is asked to evaluate."""
  name = "flaky"

  def __init__(self):
    self.broken, self.calls = True, []

  def evaluate(self, ctx):
    self.calls.append(ctx.step)
    if self.broken:
      raise RuntimeError("the evaluator's data is gone")
    return {"flaky_figure": float(np.sum(ctx.params["frontend"]["kernel"]))}


class _Steady:
  name = "steady"

  def __init__(self):
    self.calls = []

  def evaluate(self, ctx):
    self.calls.append(ctx.step)
    return {"steady_figure": 1.0}


def _sweep(model_dir, out, evaluators):
  config.parse_run_config(model_dir)
  return sweep.evaluate_checkpoints(model_dir=model_dir, model=config.build_model(), checkpoints="all",
                                    output_dir=out, evaluators=evaluators)


def test_a_failing_evaluator_leaves_the_checkpoint_to_the_next_sweep(run_dir, tmp_path):
  model_dir, _ = run_dir
  out = str(tmp_path / "eval")
  flaky, steady = _Flaky(), _Steady()
  first = _sweep(model_dir, out, [flaky, steady])
  assert flaky.calls == [2, 4] and steady.calls == [2, 4]
  assert sweep.failed_evaluators(first) == {2: ["flaky"], 4: ["flaky"]}
  saved = json.load(open(os.path.join(out, "step_4", "metrics.json")))
  assert saved["failed_evaluators"] == ["flaky"] and saved["metrics"]["steady_figure"] == 1.0
  assert "Not final" in open(os.path.join(out, "step_4", "report.md")).read()

  # Still failing: evaluated again (not "already evaluated; skipping").
  _sweep(model_dir, out, [flaky, steady])
  assert flaky.calls == [2, 4, 2, 4] and steady.calls == [2, 4, 2, 4]

  # Fixed: evaluated once more, complete, and from then on skipped.
  flaky.broken = False
  third = _sweep(model_dir, out, [flaky, steady])
  assert sweep.failed_evaluators(third) == {}
  assert third[4]["flaky_figure"] != third[2]["flaky_figure"]
  assert json.load(open(os.path.join(out, "step_4", "metrics.json")))["failed_evaluators"] == []
  _sweep(model_dir, out, [flaky, steady])
  assert flaky.calls == [2, 4] * 3

  # A sweep asking for an evaluator the report lacks evaluates again.
  other = _Steady()
  other.name = "another"
  _sweep(model_dir, out, [flaky, steady, other])
  assert other.calls == [2, 4]


def test_mslam_eval_exits_2_naming_the_failed_evaluator(run_dir, tmp_path, capsys):
  model_dir, _ = run_dir
  out = str(tmp_path / "eval")
  # The corpus does not exist: both corpus-reading evaluators fail, the sweep finishes.
  rc = cli.main(["eval", "--model_dir", model_dir, "--out", out, "--corpus_dir", str(tmp_path / "nonexistent"),
                 "--gin.build_evaluators.names=['retrieval', 'langid']"])
  assert rc == 2
  err = capsys.readouterr().err
  assert "step 4: evaluator(s) langid, retrieval failed" in err
  saved = json.load(open(os.path.join(out, "step_4", "metrics.json")))
  assert saved["failed_evaluators"] == ["langid", "retrieval"]
  # The same checkpoint with its real corpus: evaluated again (not skipped), exit 0.
  gin.clear_config()
  rc = cli.main(["eval", "--model_dir", model_dir, "--out", out, "--gin.build_evaluators.names=['retrieval', 'langid']"])
  assert rc == 0
  assert json.load(open(os.path.join(out, "step_4", "metrics.json")))["failed_evaluators"] == []


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_an_object", "metrics_missing"])
def test_a_damaged_metrics_json_is_evaluated_again(run_dir, tmp_path, damage, caplog):
  model_dir, _ = run_dir
  out = str(tmp_path / "eval")
  steady = _Steady()
  _sweep(model_dir, out, [steady])
  path = os.path.join(out, "step_4", "metrics.json")
  text = open(path).read()
  damaged = {"truncated": text[:len(text) // 2], "empty": "", "not_an_object": "[1, 2]",
             "metrics_missing": json.dumps({"step": 4})}[damage]
  with open(path, "w") as f:
    f.write(damaged)
  results = _sweep(model_dir, out, [steady])  # no exception: the sweep goes on
  assert steady.calls == [2, 4, 4]  # step 2 skipped, step 4 evaluated again
  assert results[4]["steady_figure"] == 1.0
  assert any("unreadable" in r.getMessage() and "metrics.json" in r.getMessage() for r in caplog.records)
  assert json.load(open(path))["metrics"]["steady_figure"] == 1.0


def test_metrics_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  out = str(tmp_path)
  report.write_checkpoint_report(out, 7, {"ctc_cer": 0.5}, evaluators=["ctc"])
  before = open(os.path.join(out, "metrics.json")).read()

  def crash(fd):
    raise OSError("disk full")

  # A crash while the new file is written leaves the old one intact and no temporary file behind.
  monkeypatch.setattr(os, "fsync", crash)
  with pytest.raises(OSError, match="disk full"):
    report.write_checkpoint_report(out, 7, {"ctc_cer": 0.25}, evaluators=["ctc"])
  assert open(os.path.join(out, "metrics.json")).read() == before
  assert sorted(os.listdir(out)) == ["metrics.json", "report.md"]
  assert report.read_checkpoint_metrics(out, ["ctc"]) == {"ctc_cer": 0.5}
