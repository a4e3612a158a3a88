#!/usr/bin/env bash
# bench/gpu/run.sh - the GPU check of mnist_ray: one prepared, unattended run of at most 5 minutes.
#
# HOW TO RUN: from the repository root, on a CUDA machine whose python3 (3.12) has torch (>= 2.11),
# numpy, pandas, pyarrow, matplotlib and pytest but no Ray and no network, with the wheel bundle of
# ../shared/tools/ray-wheels.sh carried in .whl/ (build it here once: bash ../shared/tools/ray-wheels.sh .whl;
# .whl/ is git-ignored, so name it in the device tool's carry list):
#
#     bash bench/gpu/run.sh                  # every step below, in this order, within GPU_BUDGET_S
#     bash bench/gpu/run.sh best recipes     # only the named steps (install, env and summary always run)
#
# Device tool: run(command="bash bench/gpu/run.sh", carry=[".whl"], timeout_s=360)
#
# Steps in priority order; one that no longer fits the budget is skipped (best is the first to go):
#   install  pip --target /tmp/site from .whl/ (skipped if ray already imports), then .whl/check_remote.py
#   env      nvidia-smi, and GPU/driver/torch/Ray versions           -> gpu_summary.json "env"
#   tests    pytest tests/test_gpu.py: the gpu-marked tests and the CPU ones
#   fast     jobs/train.py start to exit, to >= 99.0% test accuracy  -> gpu_jobs.json "fast"
#   default  jobs/train.py --preset gpu (the GPU default)            -> gpu_jobs.json "default"
#   startup  fresh-process costs: import torch / CUDA / ray / mnist_ray, ray.init -> gpu_summary.json "startup"
#   ab       plain loop, same GPU: each GPU switch off/on, batch sizes -> gpu_speed.json "ab"
#   infer    Ray Data inference on the GPU vs a plain loop           -> gpu_inference.json
#   profile  torch.profiler: a Ray Train epoch against a plain loop's    -> gpu_profile.txt
#   compile  torch.compile (default, reduce-overhead) of the step    -> gpu_speed.json "compile"
#   best     jobs/train.py, the best recipe (goal: >= 99.70% in <= 2 min) -> gpu_jobs.json "best"
#   recipes  candidate recipes trained in full, plain loop            -> gpu_speed.json "recipes"
#   summary  each goal met or not (Ray/plain ratio: default's steady images/s over ab's "preset")
# Output in ${OUT:-bench/results}: gpu_summary.json gpu_jobs.json gpu_speed.json gpu_inference.json
# gpu_profile.txt run.log nvidia-smi.csv (7 files; the device tool brings back at most 8). Scratch: $GPU_BENCH_WORK.
# Knobs: GPU_BUDGET_S (default 285: the whole script, install included), PYTHON (python3),
# GPU_TESTS_K (a pytest -k expression: only those tests),
# GPU_BENCH_DRY_RUN=1 (CPU smoke of every step at tiny sizes; needs an environment with Ray).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
REPO=$PWD
T0=$(date +%s)
BUDGET=${GPU_BUDGET_S:-285}
RESERVE=15 # kept for the summary
PY=${PYTHON:-python3}
DRY=()
[ "${GPU_BENCH_DRY_RUN:-0}" = 1 ] && DRY=(--dry-run)
GPU_BENCH_OUT=$(realpath -m "${OUT:-bench/results}")
GPU_BENCH_WORK=${GPU_BENCH_WORK:-/tmp/mnist_ray_gpu}
export GPU_BENCH_OUT GPU_BENCH_WORK PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_V2_ENABLED=1
export RAY_ADDRESS=local # every step starts its own Ray: never join a head another user started here
mkdir -p "$GPU_BENCH_OUT" "$GPU_BENCH_WORK"
STEPS=$GPU_BENCH_WORK/steps.tsv
ALL="tests fast default startup ab infer profile compile best recipes"
WANT=" ${*:-$ALL} "

left() { echo $((BUDGET - ($(date +%s) - T0))); }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

step() { # step NAME ESTIMATE_S MAX_S COMMAND...: run COMMAND if about ESTIMATE_S still fit, killed after MAX_S
  local name=$1 est=$2 max=$3
  shift 3
  [[ $WANT == *" $name "* ]] || return 0
  local room=$(($(left) - RESERVE))
  if ((room < est)); then
    echo "== $name: SKIPPED, ${room}s of the budget left and it needs about ${est}s"
    printf '%s\tskipped: out of time\t0\n' "$name" >>"$STEPS"
    return 0
  fi
  local limit=$((room < max ? room : max)) start
  start=$(date +%s.%N)
  echo "== $name: start (limit ${limit}s; $(left)s of the ${BUDGET}s budget left)"
  LIMIT=$limit timeout -k 5 "$limit" "$@"
  local rc=$?
  local status=ok
  ((rc != 0)) && status="exit $rc"
  ((rc == 124 || rc == 137)) && status="timeout after ${limit}s"
  echo "== $name: exit $rc after $(since "$start")s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(since "$start")" >>"$STEPS"
  FAILED=$((FAILED + (rc != 0)))
}

install() { # the Ray wheel bundle into /tmp/site, as ../shared/tools/ray-wheels.sh's header says
  [ -d /tmp/site/ray ] && export PYTHONPATH=$REPO:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  if "$PY" -c 'import ray' 2>/dev/null; then
    echo "ray already importable: $("$PY" -c 'import ray; print(ray.__version__, ray.__file__)')"
    return 0
  fi
  [ -d .whl ] || { echo "no ray and no .whl/: build the bundle (bash ../shared/tools/ray-wheels.sh .whl) and carry .whl"; return 1; }
  timeout 150 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
  export PYTHONPATH=$REPO:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  timeout 90 "$PY" .whl/check_remote.py || echo "check_remote reported problems (above); going on: the tests show what works"
}

main() {
  FAILED=0
  : >"$STEPS"
  echo "bench/gpu/run.sh $* | $(date -u +%FT%TZ) | budget ${BUDGET}s | out $GPU_BENCH_OUT | ${DRY[*]:-GPU run}"
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  local start
  start=$(date +%s.%N)
  local status=ok
  install || status="failed: every step needs Ray"
  printf 'install\t%s\t%s\n' "$status" "$(since "$start")" >>"$STEPS"
  local smi=""
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,nounits -lms 500 \
      >"$GPU_BENCH_OUT/nvidia-smi.csv" 2>/dev/null &
    smi=$!
  fi
  timeout 60 "$PY" -m bench.gpu.summary env

  step tests 40 150 "$PY" -m pytest -q tests/test_gpu.py -p no:randomly -p no:cacheprovider --durations=0 \
    ${GPU_TESTS_K:+-k "$GPU_TESTS_K"}
  step fast 20 60 sh -c "$PY -m bench.gpu.jobs fast ${DRY[*]} --timeout \$((LIMIT - 8))"
  step default 45 100 sh -c "$PY -m bench.gpu.jobs default ${DRY[*]} --timeout \$((LIMIT - 8))"
  step startup 15 45 "$PY" -m bench.gpu.summary startup
  step ab 20 70 sh -c "$PY -m bench.gpu.speed ab ${DRY[*]} --budget-s \$((LIMIT - 8))"
  step infer 40 100 "$PY" -m bench.gpu.infer "${DRY[@]}"
  step profile 50 100 sh -c "$PY -m bench.gpu.profile ${DRY[*]} --timeout \$((LIMIT - 15))"
  step compile 45 100 sh -c "$PY -m bench.gpu.speed compile ${DRY[*]} --budget-s \$((LIMIT - 40))"
  step best 80 150 sh -c "$PY -m bench.gpu.jobs best ${DRY[*]} --timeout \$((LIMIT - 8))"
  step recipes 30 600 sh -c "$PY -m bench.gpu.speed recipes ${DRY[*]} --budget-s \$((LIMIT - 30))"

  timeout 30 "$PY" -m bench.gpu.summary goals
  [ -n "$smi" ] && kill "$smi" 2>/dev/null
  echo "== done in $(($(date +%s) - T0))s; $FAILED step(s) failed; results in $GPU_BENCH_OUT:"
  ls -l "$GPU_BENCH_OUT"
  return $((FAILED > 0))
}

mkdir -p "$GPU_BENCH_OUT" && : >"$GPU_BENCH_OUT/run.log"
main "$@" 2>&1 | tee -a "$GPU_BENCH_OUT/run.log"
exit "${PIPESTATUS[0]}"
