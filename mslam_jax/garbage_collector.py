"""Python's cyclic garbage collector, set for a process that traces large JAX programs.

Tracing and lowering a train step allocate millions of Python objects (tracers, equations, MLIR
operations). At CPython's defaults the collector runs every 700 net allocations, and each full
collection walks every object the process holds: with TensorFlow, SeqIO, JAX and flax imported,
about half a million containers, 0.25 to 0.5 s a walk. Tracing and lowering the demo's joint train
step took 5.8 s of CPU time at the defaults, 4.4 s with the collector off and 4.7 s with `tune()`
(benchmarks/README.md, fifty-fourth pass); XLA's own compile is untouched.

`tune()` raises the first generation's threshold, so that most of tracing's temporaries are freed
by reference counting before a collection ever walks them, and freezes what is alive (`gc.freeze`:
later collections skip it; the imported modules live as long as the process anyway). Cycles are
still collected. Every `mslam` command calls it as it starts, which spares the imports their
collections (TensorFlow, SeqIO, JAX and flax: 5.4 s -> 4.9 s of CPU, the last collection and
freeze included), and again once its module is imported, to freeze what the imports made. The
test suite does the same; the step and MFU benchmarks call it once their imports are done.
MSLAM_JAX_GC=default (or off, 0, false, as MSLAM_JAX_MALLOC reads them) keeps CPython's settings.
"""
import gc
import os

ENV_VAR = "MSLAM_JAX_GC"
FIRST_GENERATION_THRESHOLD = 100_000
# What MSLAM_JAX_MALLOC accepts too (cpu_host.allocator_environment).
KEEP_DEFAULTS = ("default", "off", "0", "false")


def tune() -> bool:
  """Raises generation 0's threshold, collects, freezes what survives; False where MSLAM_JAX_GC says not to."""
  if os.environ.get(ENV_VAR, "").strip().lower() in KEEP_DEFAULTS:
    return False
  threshold0, threshold1, threshold2 = gc.get_threshold()
  gc.set_threshold(max(threshold0, FIRST_GENERATION_THRESHOLD), threshold1, threshold2)
  gc.collect()  # garbage is freed, not frozen (a process may call it again: the test suite does)
  gc.freeze()
  return True
