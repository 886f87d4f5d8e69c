"""Python's cyclic garbage collector, set for a process that traces large JAX programs.

Tracing and lowering a train step allocate millions of Python objects (tracers, equations, MLIR
operations). At CPython's defaults the collector runs every 700 net allocations, and each full
collection walks every object the process holds: with TensorFlow, SeqIO, JAX and flax imported,
a few million of them. Tracing and lowering the demo's joint train step took 5.8 s of CPU time at
the defaults, 4.4 s with the collector off and 4.7 s with `tune()` (benchmarks/README.md,
fifty-fourth pass); XLA's own compile is untouched.

`tune()` freezes what exists once the imports are done (`gc.freeze`: later collections skip it;
those objects live as long as the process anyway) and raises the first generation's threshold,
so that most of tracing's temporaries are freed by reference counting before a collection ever
walks them. Cycles are still collected. Every `mslam` command calls it after importing its module,
as do the test suite and the benchmarks that time the commands' programs.
MSLAM_JAX_GC=default keeps CPython's settings.
"""
import gc
import os

ENV_VAR = "MSLAM_JAX_GC"
FIRST_GENERATION_THRESHOLD = 100_000


def tune() -> bool:
  """Freezes the objects alive now and raises generation 0's threshold; False when MSLAM_JAX_GC=default."""
  if os.environ.get(ENV_VAR, "").strip().lower() == "default":
    return False
  gc.freeze()
  threshold0, threshold1, threshold2 = gc.get_threshold()
  gc.set_threshold(max(threshold0, FIRST_GENERATION_THRESHOLD), threshold1, threshold2)
  return True
