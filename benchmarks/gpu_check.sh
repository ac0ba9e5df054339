#!/usr/bin/env bash
# GPU check, in one call of under 9 minutes on a machine with a CUDA GPU:
#   1. the test suite with the GPU tests:  pytest -q -m "gpu or not slow"
#   2. python -m benchmarks --backend torch --size large
#   3. python -m benchmarks --backend cupy  --size large
#   4. the streaming and report cases on torch again with 128 and 512 MiB
#      chunks (default 32 MiB), to see whether larger chunks pay on this card
#   5. python -m benchmarks.profile --size large: the kernels that take the
#      time of the report, update and class-sums cases
# Each step has its own time limit (below), so a slow step cannot eat the
# others' time. Results (JSON, logs, nvidia-smi) go to $OUT when it is set,
# else to $TMPDIR/ncgeom-gpu-check. The exit status is 0 when every step passed.
#
# Environment:
#   PYTHON        interpreter to use (default: python3)
#   OUT           folder for the results (default: $TMPDIR/ncgeom-gpu-check)
#   WHEELS        folder of wheels to install offline first, for packages the
#                 machine lacks (e.g. array-api-compat, array-api-strict)
#   BENCH_REPEAT  timed rounds per benchmark case (default: 5)
#   BENCH_SIZE    benchmark size (default: large; "small" for a dry run)
#   PYTEST_ARGS   extra pytest arguments (e.g. "-x")
#   BUNDLE        1: pack every result file into $OUT/gpu-check.tar.gz at the
#                 end and remove the loose files (for transports that limit
#                 the number of files); default 0
#   INSTALL       1: editable offline install of ncgeom first (registers its
#                 entry points); 0: none; auto (default): 1 where nvidia-smi
#                 exists (a lent GPU machine starts bare), else 0
set -uo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python3}"
out="${OUT:-${TMPDIR:-/tmp}/ncgeom-gpu-check}"
repeat="${BENCH_REPEAT:-5}"
size="${BENCH_SIZE:-large}"
mkdir -p "$out"
# ncgeom, its plugins and the benchmarks import from the working tree.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
start=$SECONDS

step() { echo; echo "=== $* ($((SECONDS - start)) s elapsed)"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
    --format=csv 2>&1 | tee "$out/nvidia-smi.csv"
"$py" --version

if [ -n "${WHEELS:-}" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    step "offline install of the wheels in $WHEELS"
    "$py" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl || status=1
fi
# Register ncgeom and its entry points (editable, offline) on a GPU machine,
# which starts bare; elsewhere leave the environment alone unless INSTALL=1.
install="${INSTALL:-auto}"
if [ "$install" = auto ]; then
    command -v nvidia-smi >/dev/null && install=1 || install=0
fi
if [ "$install" = 1 ]; then
    "$py" -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
        >"$out/install.log" 2>&1 || echo "editable install failed (see install.log)"
fi
"$py" - <<'EOF' || status=1
import importlib
for name in ("numpy", "array_api_compat", "array_api_strict", "scipy", "torch", "cupy", "ncgeom"):
    try:
        module = importlib.import_module(name)
        print(f"{name:<18} {getattr(module, '__version__', '?')}")
    except Exception as exc:  # report every missing piece, then go on
        print(f"{name:<18} MISSING ({type(exc).__name__}: {exc})")
import torch
print("cuda available:", torch.cuda.is_available())
EOF

step "tests: pytest -q -m 'gpu or not slow' (limit 120 s)"
# shellcheck disable=SC2086
timeout -k 10 120 "$py" -m pytest -q -m "gpu or not slow" -p no:cacheprovider \
    ${PYTEST_ARGS:-} >"$out/pytest.log" 2>&1
rc=$?
tail -n 25 "$out/pytest.log"
echo "pytest exit status $rc"
[ "$rc" -eq 0 ] || status=1

# bench NAME LIMIT ARGS...: one benchmark run, its table shown, its files in $out.
bench() {
    local name="$1" limit="$2"
    shift 2
    step "benchmarks: $* (limit $limit s)"
    timeout -k 10 "$limit" "$py" -m benchmarks --size "$size" --repeat "$repeat" "$@" \
        --json "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.log"
    local rc=$?
    cat "$out/$name.txt"
    tail -n 5 "$out/$name.log"
    echo "benchmark $name exit status $rc"
    [ "$rc" -eq 0 ] || status=1
}

# The engine cases at four K and the float64 and all-metric pair cases: more time.
bench "bench-torch-$size" 150 --backend torch
bench "bench-cupy-$size" 110 --backend cupy
for mib in 128 512; do
    bench "bench-torch-$size-chunk$mib" 40 --backend torch --chunk-mib "$mib" \
        --cases report,report_classifier,update_gram,update_nogram
done

step "profile: python -m benchmarks.profile --size $size (limit 40 s)"
timeout -k 10 40 "$py" -m benchmarks.profile --size "$size" >"$out/profile-torch-$size.txt" 2>&1
rc=$?
grep "^==" "$out/profile-torch-$size.txt"  # the tables are in the file
echo "profile exit status $rc"
[ "$rc" -eq 0 ] || status=1

step "done, status $status"
if [ "${BUNDLE:-0}" = 1 ]; then
    packed="$(mktemp "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
    tar -czf "$packed" -C "$out" . && find "$out" -mindepth 1 -delete &&
        mv "$packed" "$out/gpu-check.tar.gz" && echo "results packed into $out/gpu-check.tar.gz"
fi
exit "$status"
