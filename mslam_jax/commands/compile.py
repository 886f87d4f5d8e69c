"""`mslam compile`: ahead-of-time compile of the train step for a mesh, with XLA's memory report.

  mslam compile --gin_file=models/mslam_2b.gin --gin_file=runs/pretrain.gin \
      --mesh=data:1,fsdp:8,model:1 [--json]

The step is lowered from ShapeDtypeStructs that carry their shardings (nothing is allocated) and
compiled for the mesh on fake CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N,
set here before JAX starts), so a user learns whether a size fits per device before paying for a
pod. The figures are XLA's for one device's partition of the program: arguments (state + batch
shard), outputs, temporaries; `total` = arguments + outputs + temporaries - aliased (the donated
state is reused for the new state). CPU and accelerator compilers fuse differently, so take them as
an estimate (they leave out, e.g., TPU-specific padding).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--mesh", default="data:1,fsdp:1,model:1",
                      help="mesh sizes as data:D,fsdp:F,model:M (missing axes are 1)")
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--fast_compile", action="store_true",
                      help="skip LLVM optimizations: faster compile, memory figures within ~2%%")


MESH_AXES = ("data", "fsdp", "model")  # as mslam_jax.partitioning (not imported: it starts JAX)
_CHILD_ENV = "MSLAM_COMPILE_CHILD"
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")


def parse_mesh_spec(spec: str) -> dict[str, int]:
  """`data:2,fsdp:4,model:1` -> {"data": 2, "fsdp": 4, "model": 1} (missing axes are 1)."""
  sizes = {axis: 1 for axis in MESH_AXES}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition(":")
    if not sep or name not in sizes or not value.isdigit() or int(value) < 1:
      raise ValueError(f"bad --mesh {spec!r}: expected AXIS:SIZE pairs, AXIS in {MESH_AXES}, SIZE >= 1")
    sizes[name] = int(value)
  return sizes


def _set_fake_devices(count: int, fast_compile: bool = False) -> bool:
  """Asks XLA for `count` CPU devices; False when JAX already started with fewer."""
  if "jax" in sys.modules:
    try:
      from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
      started = bool(xla_bridge._backends)  # pylint: disable=protected-access
    except (ImportError, AttributeError):
      started = True
    if started:
      import jax  # pylint: disable=g-import-not-at-top
      return jax.device_count() >= count
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={count}")
  # The program is never run, so LLVM's optimizations can go; they shift the CPU compiler's
  # fusion slightly (mslam_600m at fsdp=8: temporaries 7.39 instead of 7.51 GB), hence opt-in.
  for flag in FAST_COMPILE_FLAGS if fast_compile else ():
    if not any(f.startswith(flag.split("=")[0]) for f in flags):
      flags.append(flag)
  os.environ["XLA_FLAGS"] = " ".join(flags)
  os.environ["JAX_PLATFORMS"] = "cpu"
  return True


def compile_report(mesh_sizes: dict) -> dict:
  """Compiles the gin-configured train step on a mesh of fake CPU devices; returns the report."""
  import jax  # pylint: disable=g-import-not-at-top
  from mslam_jax import optimizers  # pylint: disable=g-import-not-at-top
  from mslam_jax import partitioning  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  count = math.prod(mesh_sizes.values())
  mesh = partitioning.make_mesh(devices=jax.devices()[:count], **mesh_sizes)
  model = config.build_model()
  trainer = trainer_lib.Trainer(model, optimizers.make_optimizer(), mesh,
                                trainer_lib.contract_batch_spec())
  start = time.time()
  lowered = trainer.lower_train_step()
  compiled = lowered.compile()
  seconds = time.time() - start
  memory = compiled.memory_analysis()
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(trainer.abstract_state.params))
  fields = {
      "arguments": memory.argument_size_in_bytes,
      "outputs": memory.output_size_in_bytes,
      "temps": memory.temp_size_in_bytes,
      "aliased": memory.alias_size_in_bytes,
      "generated_code": memory.generated_code_size_in_bytes,
  }
  fields["total"] = fields["arguments"] + fields["outputs"] + fields["temps"] - fields["aliased"]
  return {"mesh": dict(mesh.shape), "devices": count, "params": int(params),
          "num_microbatches": trainer.num_microbatches,
          "per_device_bytes": {k: int(v) for k, v in fields.items()},
          "compile_seconds": round(seconds, 1)}


def _human(n: int) -> str:
  return f"{n / 2**30:.3f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  sizes = parse_mesh_spec(args.mesh)
  count = math.prod(sizes.values())
  if not _set_fake_devices(count, args.fast_compile):
    if os.environ.get(_CHILD_ENV):
      raise ValueError(f"could not get {count} CPU devices")
    # JAX is already running with fewer devices: start a fresh interpreter that can have them.
    argv = [sys.executable, "-m", "mslam_jax.cli", "compile", f"--mesh={args.mesh}"]
    argv += [f"--gin_file={f}" for f in args.gin_file]
    argv += [f"--gin_search_path={p}" for p in args.gin_search_path]
    argv += [f"--gin.{b}" for b in args.gin_bindings] + (["--json"] if args.json else [])
    argv += ["--fast_compile"] if args.fast_compile else []
    return subprocess.call(argv, env=dict(os.environ, **{_CHILD_ENV: "1"}))
  config.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_path)
  report = compile_report(sizes)
  if args.json:
    print(json.dumps(report))
  else:
    mesh = ",".join(f"{k}:{v}" for k, v in report["mesh"].items())
    print(f"train step on mesh {mesh} ({report['devices']} devices), "
          f"{report['params'] / 1e6:.1f}M parameters, compiled in {report['compile_seconds']} s")
    print("per-device memory (XLA memory analysis):")
    for key in ("arguments", "outputs", "temps", "aliased", "total"):
      print(f"  {key:<10} {_human(report['per_device_bytes'][key])}")
  return 0
