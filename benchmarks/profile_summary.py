"""Where a jax.profiler trace spends its time: the top ops by total time, per profiled step.

`profiled(step, directory)` traces a few calls of a step function with a Perfetto trace beside
the XPlane one; `summarize(directory)` reads the newest `perfetto_trace.json.gz` under it and
sums the complete ("X") events by name. On an accelerator only the device's timelines count (the
kernels as they ran); on a CPU the XLA ops of every thread count (events naming an `hlo_op`), so
the figure is thread time, which may exceed the wall time of a multi-threaded step.

  python benchmarks/profile_summary.py DIR [--steps 3 --top 40]
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

# Coarse kinds of ops, first match wins (kernel names on GPUs, XLA op names on CPUs).
KINDS = (("matmul", r"gemm|nvjet|cutlass|xmma|cublas|\bdot|matmul|ynn_fusion"), ("convolution", r"conv(?!ert)"),
         ("rng", r"rng|threefry|philox|random"), ("reduction", r"reduce"),
         ("copy/transpose", r"copy|transpose|memcpy|memset|dynamic.update.slice"),
         ("dtype conversion", r"convert"), ("other fusion", r"fusion"), ("other", r""))


def kind_of(name: str) -> str:
  return next(kind for kind, pattern in KINDS if re.search(pattern, name, re.IGNORECASE))


def profiled(step, directory: str, steps: int = 3) -> None:
  """Runs `step()` `steps` times under a jax.profiler trace written to `directory`."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.profiler.start_trace(directory, create_perfetto_trace=True)
  try:
    for _ in range(steps):
      step()
  finally:
    jax.profiler.stop_trace()


def _trace_file(directory: str) -> str:
  found = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not found:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {directory}: trace with "
                            "jax.profiler.start_trace(dir, create_perfetto_trace=True)")
  return found[-1]


def summarize(directory: str, steps: int = 1) -> dict:
  """Total time by op name (ms per step), the device's rows only where the trace has a device."""
  with gzip.open(_trace_file(directory), "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  process = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in process.items() if name.startswith("/device:") and "CPU" not in name}
  totals, counts, detail = collections.Counter(), collections.Counter(), {}
  for e in events:
    if e.get("ph") != "X" or "dur" not in e:
      continue
    if (e.get("pid") not in devices) if devices else ("hlo_op" not in e.get("args", {})):
      continue
    name = e.get("name", "?")
    totals[name] += float(e["dur"])
    counts[name] += 1
    if name not in detail:
      args = e.get("args", {})
      detail[name] = str(args.get("long_name") or args.get("hlo_op") or args.get("tf_op") or "")
  total = sum(totals.values())
  rows = [{"name": name, "ms_per_step": us / 1e3 / steps, "share": us / total if total else 0.0,
           "calls_per_step": counts[name] / steps, "detail": detail[name]}
          for name, us in totals.most_common()]
  kinds = collections.Counter()
  for row in rows:
    kinds[kind_of(row["name"] + " " + row["detail"])] += row["ms_per_step"]
  return {"scope": "device" if devices else "XLA ops, all threads", "ms_per_step": total / 1e3 / steps,
          "ops": rows, "kinds": dict(kinds.most_common())}


def format_summary(summary: dict, top: int = 40) -> str:
  total = summary["ms_per_step"] or 1.0
  lines = [f"profile ({summary['scope']}): {summary['ms_per_step']:.1f} ms of op time per step",
           "  by kind: " + ", ".join(f"{kind} {ms:.1f} ms ({100 * ms / total:.0f}%)"
                                     for kind, ms in summary["kinds"].items()),
           f"  {'ms/step':>9} {'share':>6} {'calls':>6}  op"]
  for row in summary["ops"][:top]:
    detail = f"  [{row['detail'][:110]}]" if row["detail"] and row["detail"] != row["name"] else ""
    lines.append(f"  {row['ms_per_step']:9.2f} {100 * row['share']:5.1f}% {row['calls_per_step']:6.1f}  "
                 f"{row['name'][:90]}{detail}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("directory")
  parser.add_argument("--steps", type=int, default=3, help="steps the trace holds")
  parser.add_argument("--top", type=int, default=40)
  args = parser.parse_args(argv)
  print(format_summary(summarize(args.directory, args.steps), args.top))
  return 0


if __name__ == "__main__":
  sys.exit(main())
