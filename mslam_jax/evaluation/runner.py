"""One checkpoint's evaluation: the evaluators run on its context and its report is written.

`mslam eval` (sweep.py) calls it for each checkpoint of a sweep and the trainer for its periodic
evaluation, so both give the same figures under the same keys in the same metrics.json.
"""
from typing import Any, Sequence

from mslam_jax.evaluation import base
from mslam_jax.evaluation import report


def evaluate_checkpoint(evaluators: Sequence[Any], ctx: base.EvalContext, source: str = "",
                        extra_metrics: dict[str, float] | None = None) -> base.EvalResult:
  """Runs the evaluators on one checkpoint and, when `ctx.out_dir` is set, writes its report there.

  The one evaluation step of the project: `mslam eval` calls it for each checkpoint of a sweep and
  the trainer for its periodic evaluation, so both give the same figures under the same keys.
  A failed evaluator is named in the metrics (`eval_failed/<name>`) and in metrics.json, which then
  does not count as evaluated.
  """
  result = base.run_evaluators(evaluators, ctx)
  result.metrics.update({f"{base.FAILED_PREFIX}{name}": 1.0 for name in result.failed})
  result.metrics.update(extra_metrics or {})
  if ctx.out_dir:
    report.write_checkpoint_report(ctx.out_dir, ctx.step, result.metrics, source, result.evaluators,
                                   result.failed)
  return result
