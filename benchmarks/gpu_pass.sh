#!/bin/bash
# One timed pass on an accelerator machine, for a lease of a few minutes: the MFU of record of
# mslam_600m (with a profile of 3 steps) and mslam_2b, and optionally the same 600m step from a
# baseline tree (an A/B on the same card) and with extra gin bindings. Jobs run one at a time,
# each in its own process (a cold compile of 60-120 s each), in the order above; one that would
# not finish inside LIMIT seconds from the start is skipped and says so.
#
#   OUT=/tmp/pass bash benchmarks/gpu_pass.sh
#   OUT=/tmp/pass BASELINE=/tmp/old_checkout VARIANTS='REMAT_POLICY="dots_saveable"' bash benchmarks/gpu_pass.sh
#   OUT=/tmp/pass M600=tiny M2B=tiny LIMIT=200 bash benchmarks/gpu_pass.sh   # a dry run on a CPU
#
# WHEELS=DIR installs the wheels there first (a bare image needs gin-config only:
# `pip download --no-deps --only-binary=:all: -d DIR gin-config`). Writes OUT/env.txt, one log
# per job, the profile's perfetto trace (when under 15 MB) and OUT/summary.txt.
set -u
: "${OUT:?set OUT to the folder for the logs}"
T0=$(date +%s)
LIMIT=${LIMIT:-540}
M600=${M600:-600m}
M2B=${M2B:-2b}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
mkdir -p "$OUT"
SITE=""
if [ -n "${WHEELS:-}" ]; then
  SITE=/tmp/gpu_pass_site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || exit 1
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
  PYTHONPATH=${SITE:+$SITE:}$ROOT python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, jax.devices())" 2>&1
  echo "host cores: $(nproc)"; } | tee "$OUT/env.txt"

job() {  # NAME MIN_SECONDS TREE ARGS...: mfu_benchmark.py from TREE with ARGS
  local name=$1 need=$2 tree=$3; shift 3
  local left=$((LIMIT - ($(date +%s) - T0)))
  if [ "$left" -lt "$need" ]; then echo "SKIP $name: $left s left" | tee -a "$OUT/summary.txt"; return; fi
  local start=$(date +%s)
  (cd "$tree" && PYTHONPATH=${SITE:+$SITE:}$tree timeout "$left" python3 benchmarks/mfu_benchmark.py "$@") \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  { echo "== $name (rc $rc, $(( $(date +%s) - start )) s)"
    grep -E "train step|batch:|compile|tokens/s|FLOPs|achieved|MFU|Error" "$OUT/$name.log" | head -12
  } | tee -a "$OUT/summary.txt"
}

job 600m 150 "$ROOT" --model "$M600" --steps 5 --profile /tmp/gpu_pass_profile --top 40
trace=$(find /tmp/gpu_pass_profile -name perfetto_trace.json.gz 2>/dev/null | head -1)
if [ -n "$trace" ] && [ "$(stat -c %s "$trace")" -lt 15000000 ]; then cp "$trace" "$OUT/600m_trace.json.gz"; fi
[ -n "${BASELINE:-}" ] && job 600m_baseline 110 "$BASELINE" --model "$M600" --steps 5
i=0
for binding in ${VARIANTS:-}; do  # gin bindings with no space inside one, one job each
  i=$((i + 1)); job "600m_variant_$i" 110 "$ROOT" --model "$M600" --steps 5 --gin "$binding"
done
job 2b 110 "$ROOT" --model "$M2B" --steps 4
echo "total $(( $(date +%s) - T0 )) s" | tee -a "$OUT/summary.txt"
