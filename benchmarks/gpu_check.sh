#!/usr/bin/env bash
# The GPU rows that wait for a device, in one short run (about 9 minutes on one H100), then their tables.
#
#   benchmarks/gpu_check.sh WHEELS_DIR [--target DIR] [--out DIR]   # on the GPU machine
#   benchmarks/gpu_check.sh --tiny [--out DIR]                       # the same steps at tiny sizes, on the CPU
#
# The GPU machine has torch and transformers but not genbatch's other dependencies: the wheels in WHEELS_DIR
# (ray, diffusers, pydantic, python-json-logger, torchsde, torchao built for its torch, ...) are installed
# with --no-deps into --target (default /tmp/genbatch-deps), which goes on PYTHONPATH; the preinstalled
# torch stays. --tiny installs nothing.
#
# The steps, each under a time limit of its own (SIGTERM: gpu_throughput.py prints and keeps the rows it
# finished, so a slow step costs its own rows only):
#   1. SD1.5-sized, 512 px, 50 steps, batch 16, 32 rows, compile on, genbatch: quantize none (goal >= 4.0 images/s)
#      and fp8 (goal >= 4.7), with fp8's drift from the unquantized images;
#   2. the compile cache: first-image time of a warm actor against a cold one (goal <= 40%), tiny model;
#   3. FLUX.1-dev-sized, 1024 px, 28 steps, batch 1, 3 rows, plain diffusers runner on a pipeline built on the GPU
#      (--in-memory: no 34 GB folder to write), compile off and on (goal >= 0.25 images/s compiled);
#   4. the same with fp8, compiled (goal >= 0.33 images/s), drift against step 3's images.
# Every table is appended to OUT/results.md (default $OUT, else ./gpu-check-out) and printed at the end.
set -uo pipefail

tiny=0
wheels=""
target=/tmp/genbatch-deps
out="${OUT:-$PWD/gpu-check-out}"
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny=1 ;;
        --target) target="$2"; shift ;;
        --out) out="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) wheels="$1" ;;
    esac
    shift
done
repo="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
results="$out/results.md"
log="$out/gpu_check.log"
: > "$results"
python="${PYTHON:-python}"
[ -x "$repo/.venv/bin/python" ] && [ "$tiny" = 1 ] && python="${PYTHON:-$repo/.venv/bin/python}"

# Each step's wall-clock limit in seconds (GPU; --tiny gives every step more, the CPU compiles slowly).
if [ "$tiny" = 1 ]; then
    sd_limit=300; cache_limit=900; flux_limit=900; fp8_limit=600
else
    sd_limit=210; cache_limit=90; flux_limit=130; fp8_limit=100  # 530 s, plus ~30 s of installs
fi

started=$(date +%s)
note() { echo "[gpu_check +$(( $(date +%s) - started ))s] $*" | tee -a "$log" >&2; }

if [ "$tiny" = 0 ]; then
    if [ -z "$wheels" ] || [ ! -d "$wheels" ]; then
        echo "gpu_check.sh: give the folder of wheels to install (or --tiny for the CPU check)" >&2
        exit 2
    fi
    note "installing $(ls "$wheels"/*.whl | wc -l) wheels into $target"
    "$python" -m pip install --quiet --no-index --no-deps --target "$target" "$wheels"/*.whl >> "$log" 2>&1 \
        || { echo "gpu_check.sh: installing the wheels failed; see $log" >&2; tail -20 "$log" >&2; exit 2; }
    export PYTHONPATH="$repo:$target${PYTHONPATH:+:$PYTHONPATH}"
    "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
        || exit 2
else
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
models="$out/models"  # the random models, built once per machine

bench() {  # bench LIMIT ARGS...: one gpu_throughput.py call, its table appended to results.md
    local limit="$1"; shift
    note "gpu_throughput.py $*"
    # --foreground: the TERM goes to gpu_throughput.py alone, which stops its Ray job cleanly and prints the
    # rows it finished (a TERM to the whole process group would kill Ray's own processes under it).
    timeout --foreground -s TERM -k 90 "$limit" "$python" "$repo/benchmarks/gpu_throughput.py" --results "$results" \
        "$@" >> "$log" 2>&1
    local rc=$?
    [ $rc = 0 ] || note "exit $rc (124/143: stopped at its time limit; the rows it finished are kept)"
}

if [ "$tiny" = 1 ]; then
    # The same steps at tiny sizes: 64 px, 2 steps; int8 stands in for fp8, which needs an Ada/Hopper GPU. The SD
    # step runs uncompiled: compiling the UNet inside a Ray actor takes over 10 minutes on a busy 2-core machine
    # (compile_cache.py and the FLUX step still compile).
    bench "$sd_limit" --smoke --batch-sizes 2 --compile off --quantize none int8 --runners genbatch \
        --threads 2 --model-dir "$models/sd"
    note "compile_cache.py --device cpu"
    timeout --foreground -s TERM "$cache_limit" "$python" "$repo/benchmarks/compile_cache.py" --device cpu --rounds 1 \
        > "$out/compile_cache.txt" 2>> "$log" || note "compile_cache.py: exit $?"
    bench "$flux_limit" --smoke --model flux-dev-sized --in-memory --runners plain --batch-sizes 1 --rows 3 \
        --compile both --quantize none --threads 2 --model-dir "$models/flux"
    bench "$fp8_limit" --smoke --model flux-dev-sized --in-memory --runners plain --batch-sizes 1 --rows 3 \
        --compile on --quantize int8 --threads 2 --model-dir "$models/flux"
else
    bench "$sd_limit" --batch-sizes 16 --compile on --quantize none fp8 --runners genbatch --rows 32 \
        --model-dir "$models/sd"
    note "compile_cache.py --device cuda"
    timeout --foreground -s TERM "$cache_limit" "$python" "$repo/benchmarks/compile_cache.py" --device cuda --rounds 1 \
        > "$out/compile_cache.txt" 2>> "$log" || note "compile_cache.py: exit $?"
    bench "$flux_limit" --model flux-dev-sized --in-memory --runners plain --batch-sizes 1 --rows 3 \
        --compile both --quantize none --model-dir "$models/flux"
    bench "$fp8_limit" --model flux-dev-sized --in-memory --runners plain --batch-sizes 1 --rows 3 \
        --compile on --quantize fp8 --model-dir "$models/flux"
fi

note "done"
echo
echo "## gpu_check.sh: $( [ "$tiny" = 1 ] && echo "tiny sizes on the CPU (checks the script only)" || echo "GPU rows" )"
cat "$results"
echo
echo "### compile cache (benchmarks/compile_cache.py)"
cat "$out/compile_cache.txt" 2>/dev/null || echo "(no output; see $log)"
echo
echo "step log:"
grep '^\[gpu_check' "$log"
