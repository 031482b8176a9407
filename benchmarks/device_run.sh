#!/usr/bin/env bash
# The whole GPU run as one command, from the repository root of a machine with an NVIDIA GPU
# (no network needed):
#
#     bash benchmarks/device_run.sh              # at most about 8 minutes (--budget SECONDS, default 480)
#     bash benchmarks/device_run.sh --sim        # the same steps on tiny shapes in Numba's CUDA simulator
#                                                # (no GPU; tests/test_device_run.py runs it)
#
# In order, each step within what is left of the budget; a step that fails is logged and the next
# one still runs:
#   1. calibration, within CALIBRATE_LIMIT seconds (under a minute on a GPU): the primitives a
#      persistent step is built from (grid sync, flag and tagged-word exchange at 8, 32 and 132
#      blocks, an L2 round trip, a 128-float register array's FMA rate), with this checkout's
#      kernels before it is installed                                            -> <stem>-calibrate.json
#   2. environment: GPU, driver, compute capability, package versions, where NVVM was found  -> <stem>-env.txt
#   3. offline install: pip install --no-deps --no-build-isolation --no-index -e . ; if that fails
#      (and always in the simulator, whose environment must stay as it is), a folder of links to the
#      checkout's gpurnn/ and kernels/ goes on PYTHONPATH; then gpurnn.cuda_status() and the
#      toolchain that compiles the kernels                                       -> <stem>-env.txt
#   4. the cuda test cases on the device: -k cuda over the backend, random-shape, kernel, persistent
#      half-precision and tensor-core tests, with pytest-xdist when present (never the simulator or compile
#      tests: CI runs those)
#                                                                                -> <stem>-tests.log
#   5. the benchmark against torch.nn (cuDNN): launch overhead first, then rows cheapest first,
#      JSON and markdown rewritten after every row, rows that would overrun skipped and listed; the
#      JSON names the calibration file                                           -> <stem>-bench.json, .md
#      then, with a quarter of its budget (when that is 30 s or more), gpurnn's float16 layers on the
#      quick shapes against torch.nn under float16 autocast        -> <stem>-bench-float16.json, .md
#   6. when time remains, ncu on one step_forward of a mid-size LSTM, then on the three launches of
#      its persistent training step (persistent_forward, persistent_backward, accumulate)
#                                                                                -> <stem>-ncu.txt
# Everything printed also goes to <stem>-run.log. Files land in $OUT, or without it in
# benchmarks/results/ (a temporary folder with --sim); <stem> is <date>-<gpu>: the UTC date and the
# GPU as nvidia-smi names it ("simulator" with --sim). Exit status 0 when every step succeeded,
# else 1 with the failed steps named last.

set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

SIM=0
BUDGET=480
while [ $# -gt 0 ]; do
    case "$1" in
        --sim) SIM=1 ;;
        --budget) BUDGET=${2:-}; shift ;;
        --budget=*) BUDGET=${1#*=} ;;
        -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "device_run.sh: unknown option '$1'; expected --sim or --budget SECONDS" >&2; exit 2 ;;
    esac
    shift
done
if ! [[ $BUDGET =~ ^[0-9]+$ ]]; then
    echo "device_run.sh: --budget takes whole seconds, got '$BUDGET'" >&2
    exit 2
fi

PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1   # no cwd on sys.path: the installed gpurnn, not the bare checkout
export NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=0   # small grids are what small shapes need
[ -d /usr/local/cuda ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
unset NUMBA_ENABLE_CUDASIM
SIMENV=()
[ "$SIM" = 1 ] && SIMENV=(env NUMBA_ENABLE_CUDASIM=1)
NCU_RESERVE=60                               # seconds kept for step 6
[ "$SIM" = 1 ] && NCU_RESERVE=20
CALIBRATE_LIMIT=90                           # seconds at most for step 1 (and at most a quarter of what is left)

if [ "$SIM" = 1 ]; then
    GPU=simulator
else
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    GPU=${GPU:-unknown-gpu}
fi
SLUG=$(printf '%s' "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-*//; s/-*$//' | tr 'A-Z' 'a-z')
DIR=${OUT:-$ROOT/benchmarks/results}
[ "$SIM" = 1 ] && [ -z "${OUT:-}" ] && DIR=$(mktemp -d)     # no simulator figures in benchmarks/results
mkdir -p "$DIR" || exit 2
NAME=$(date -u +%Y-%m-%d)-$SLUG
STEM=$DIR/$NAME

left() { echo $((BUDGET - SECONDS)); }

step_calibrate() {
    local limit=$(($(left) / 4)) sim=()
    [ "$limit" -gt "$CALIBRATE_LIMIT" ] && limit=$CALIBRATE_LIMIT
    [ "$limit" -lt 20 ] && limit=20
    [ "$SIM" = 1 ] && sim=(--sim)
    echo "== 1. calibration ($(left) s left, $limit s for it)"
    timeout -k 5 "$limit" "$PY" benchmarks/calibrate.py "${sim[@]}" --out "$STEM-calibrate.json"
    local rc=$?
    [ "$rc" = 124 ] && echo "calibration stopped after $limit s; the JSON keeps the figures measured before"
    echo "calibration figures: $STEM-calibrate.json"
    return "$rc"
}

step_env() {
    echo "== 2. environment ($(left) s left)"
    "$PY" benchmarks/device_env.py 2>&1 | tee "$STEM-env.txt"
}

link_checkout() {
    # gpurnn/ as installed, without installing: kernels/ becomes gpurnn/kernels by a link.
    local src
    src=$(mktemp -d)/src || return 1
    mkdir -p "$src/gpurnn" && ln -s "$ROOT"/gpurnn/* "$src/gpurnn/" && ln -s "$ROOT/kernels" "$src/gpurnn/kernels" || return 1
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    echo "install: fallback, $src on PYTHONPATH (links to the checkout's gpurnn/* and kernels/)" | tee -a "$STEM-env.txt"
}

step_install() {
    echo "== 3. install ($(left) s left)"
    if [ "$SIM" = 1 ]; then
        echo "install: skipped in the simulator, whose environment stays as it is; the fallback runs instead" | tee -a "$STEM-env.txt"
        link_checkout || return 1
    else
        local log rc
        log=$("$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1)
        rc=$?
        if [ "$rc" = 0 ]; then
            echo "install: pip install -e . (editable, offline)" | tee -a "$STEM-env.txt"
        else
            printf 'install: pip install failed (exit %s):\n%s\n' "$rc" "$(tail -n 15 <<<"$log")" | tee -a "$STEM-env.txt"
            link_checkout || return 1
        fi
    fi
    "${SIMENV[@]}" "$PY" benchmarks/device_env.py --gpurnn 2>&1 | tee -a "$STEM-env.txt"
}

step_tests() {
    echo "== 4. cuda tests ($(left) s left)"
    local files=(tests/test_backends.py tests/test_random_shapes.py tests/test_cuda_kernels.py
                 tests/test_cuda_persistent.py tests/test_cuda_graphs.py tests/test_layers_api.py
                 tests/test_torch_bridge.py tests/test_half_cuda.py tests/test_torch_half.py tests/test_mma.py)
    local select="cuda and not simulat" workers=()      # the simulator's own tests skip on a GPU
    if [ "$SIM" = 1 ]; then
        # the plumbing: one case a cell, dtype and algo, and a half forward a cell, algo and format
        select="cuda and (launch_config or T1B1I1H1L1 or (half and lengths-rev))"
    elif "$PY" -c "import xdist" 2>/dev/null; then
        workers=(-n 8)
    fi
    local limit=$(($(left) - 150))                      # the benchmark and ncu get the rest
    [ "$limit" -gt 240 ] && limit=240
    [ "$limit" -lt 30 ] && limit=30
    timeout -k 10 "$limit" "${SIMENV[@]}" "$PY" -m pytest -p no:cacheprovider -v -rfEs "${workers[@]}" \
        -k "$select" "${files[@]}" 2>&1 | tee "$STEM-tests.log"
    local rc=${PIPESTATUS[0]}
    TESTS=$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$STEM-tests.log" | tail -n 1 |
            tr -d '=' | sed 's/^ *//; s/ *$//')
    TESTS=${TESTS:-no summary}
    [ "$rc" = 124 ] && TESTS="stopped after $limit s: $TESTS"
    if [ "$rc" = 0 ] && ! [[ $TESTS =~ [0-9]+\ passed ]] || [[ $TESTS =~ [0-9]+\ skipped ]]; then
        echo "cuda test cases were skipped or none ran: a kernel that did not run has not passed"
        return 1
    fi
    return "$rc"
}

step_bench() {
    local budget=$(($(left) - NCU_RESERVE))
    echo "== 5. benchmark ($(left) s left, $budget s for it)"
    if [ "$budget" -lt 10 ]; then
        echo "no time left for the benchmark"
        return 1
    fi
    local sim=() half=$((budget / 4)) rc=0
    [ "$SIM" = 1 ] && sim=(--sim)
    [ "$half" -lt 30 ] && half=0
    timeout -k 10 $((budget - half + 60)) "$PY" benchmarks/bench_gpu.py "${sim[@]}" --budget $((budget - half)) \
        --out "$DIR" --name "$NAME-bench" --tests "$TESTS" --calibration "$NAME-calibrate.json" || rc=1
    # then float16 layers against cuDNN's float16 path (torch.nn under autocast), on the quick shapes
    if [ "$half" -gt 0 ]; then
        echo "== 5b. float16 benchmark ($(left) s left, $half s for it)"
        timeout -k 10 $((half + 60)) "$PY" benchmarks/bench_gpu.py "${sim[@]}" --quick --dtype float16 \
            --budget "$half" --out "$DIR" --name "$NAME-bench-float16" --tests "$TESTS" || rc=1
    fi
    return "$rc"
}

NCU_METRICS="sm__warps_active.avg.pct_of_peak_sustained_active
sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active
sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active
sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active
lts__t_sectors.avg.pct_of_peak_sustained_elapsed
lts__t_bytes.sum.per_second
dram__throughput.avg.pct_of_peak_sustained_elapsed
dram__bytes.sum.per_second
gpu__time_duration.sum"

step_ncu() {
    echo "== 6. ncu ($(left) s left)"
    local report="$STEM-ncu.txt" target=(benchmarks/bench_gpu.py --ncu-target)
    if [ "$SIM" = 1 ]; then
        {
            echo "simulator: no ncu; the program it would profile runs alone"
            "$PY" "${target[@]}" --sim
        } >"$report" 2>&1
        local rc=$?
        cat "$report"
        return "$rc"
    fi
    if ! command -v ncu >/dev/null; then
        echo "ncu not found: not profiled" | tee "$report"
        return 0
    fi
    local limit=$(($(left) - 5))
    if [ "$limit" -lt 30 ]; then
        echo "$limit s left: too little for ncu, not profiled" | tee "$report"
        return 0
    fi
    # Ask only for the metrics this ncu knows on this GPU: one unknown name fails the whole run.
    local known metrics=""
    known=$(timeout 30 ncu --query-metrics 2>/dev/null)
    for m in $NCU_METRICS; do
        grep -qw -- "${m%%.*}" <<<"$known" && metrics="$metrics${metrics:+,}$m"
    done
    local args=(--clock-control none --kernel-name "regex:step_forward|persistent_|accumulate" --launch-count 4
                --section SpeedOfLight --section Occupancy --section LaunchStats
                --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis)
    {
        echo "ncu: one step_forward of a float32 LSTM, B=64 I=H=256, then its persistent training step at T=16"
        echo "extra metrics: ${metrics:-none known}"
        timeout -k 5 "$limit" ncu "${args[@]}" ${metrics:+--metrics "$metrics"} "$PY" "${target[@]}"
    } >"$report" 2>&1
    local rc=$?
    cat "$report"
    return "$rc"
}

main() {
    echo "device_run.sh: $GPU, budget $BUDGET s, results in $DIR as $NAME-*"
    local failed=()
    TESTS="not run"
    step_calibrate || failed+=("calibration")
    step_env || failed+=("environment")
    step_install || failed+=("install or cuda_status")
    step_tests || failed+=("cuda tests")
    step_bench || failed+=("benchmark")
    step_ncu || failed+=("ncu")
    echo "== done in $SECONDS s; tests: $TESTS"
    ls -l "$STEM"-* 2>/dev/null
    if [ ${#failed[@]} -gt 0 ]; then
        local list
        printf -v list '%s, ' "${failed[@]}"
        echo "failed: ${list%, }"
        return 1
    fi
    echo "every step succeeded"
}

main 2>&1 | tee "$STEM-run.log"
exit "${PIPESTATUS[0]}"
