#!/usr/bin/env bash
# The GPU check, as one command for a machine with a CUDA GPU (run from the repository root,
# with dapo_cli importable: an installed package or PYTHONPATH=$PWD). It writes its logs to
# ${OUT:-gpu-check}/ and prints a short summary; each part has its own time limit.
#   1. the CLI as a user runs it: train (device auto = cuda, bf16) and eval on generated math
#   2. FSDP through templates/accelerate/fsdp.yaml on one GPU, with and without CPU offload
#   3. benchmarks/bench_gpu.py (matmul peaks, rollout vs generate, 0.5B-shaped DAPO steps)
#   4. the test suite with the GPU visible (pytest-xdist if present; -v names every result
#      as it ends, so a run cut short still says which tests failed)
#   5. (PARTS=vllm, when vLLM is installed) dapo train with rollout.engine=vllm in bf16,
#      tests/scale/test_vllm_engine.py and benchmarks/bench_vllm.py --quick on the GPU
# PARTS (default "cli fsdp bench tests"): which parts to run; WARM_STEPS (default 300):
# supervised warm-start steps; BENCH_ARGS: extra bench_gpu.py arguments (e.g. "--quick").
# On one H100 parts 1-2 took about 3 min, bench about 3-5, tests over 4 (with 14 workers).
set -u
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DAPO_HOME=${DAPO_HOME:-$(mktemp -d)}
PY=${PYTHON:-python3}
W=$(mktemp -d); T0=$(date +%s)
done_() { echo "$1: exit $2 after $(( $(date +%s) - T0 )) s"; }
ARGS=(--data "$W/data.jsonl" --db-path "$W/dapo.db" --set train.on_gen_cap=continue
      --set warm_start.steps=${WARM_STEPS:-300})
PARTS=" ${PARTS:-cli fsdp bench tests} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
$PY -m dapo_cli gen-data --num-samples 400 --task-types math --output "$W/data.jsonl" \
    > "$OUT/gen-data.log" 2>&1 || { echo "gen-data failed: see $OUT/gen-data.log"; exit 1; }
if want cli; then
  {
    timeout 300 $PY -m dapo_cli train "${ARGS[@]}" --steps 4 --output-dir "$W/run" &&
    $PY -m dapo_cli eval --model "$W/run/dapo_final" --data "$W/data.jsonl" \
        --db-path "$W/dapo.db" --k 4 --limit 32
  } > "$OUT/cli.log" 2>&1
  done_ "cli (train, eval)" $?
  grep -E "model:|mixed|step +[0-9]|avg@|Error" "$OUT/cli.log"
fi
if want fsdp; then
  for offload in false true; do
    timeout 300 $PY -m accelerate.commands.launch --config_file templates/accelerate/fsdp.yaml \
        --num_processes 1 --fsdp_offload_params $offload -m dapo_cli train "${ARGS[@]}" \
        --steps 3 --output-dir "$W/fsdp_$offload" > "$OUT/fsdp_$offload.log" 2>&1
    done_ "fsdp (offload $offload)" $?
    grep -E "FSDP|step +[0-9]|Error" "$OUT/fsdp_$offload.log"
  done
fi
if want bench; then
  timeout 600 $PY -m benchmarks.bench_gpu --output "$OUT/bench_gpu.json" ${BENCH_ARGS:-} \
      --profile "$OUT/profile_generation.txt" > "$OUT/bench_gpu.log" 2>&1
  done_ "bench_gpu" $?; tail -14 "$OUT/bench_gpu.log"
fi
if want vllm; then
  {
    timeout 600 $PY -m dapo_cli train "${ARGS[@]}" --steps 4 --output-dir "$W/vllm" \
        --set rollout.engine=vllm &&
    timeout 600 $PY -m pytest -v -p no:cacheprovider tests/scale/test_vllm_engine.py &&
    timeout 600 $PY -m benchmarks.bench_vllm --quick
  } > "$OUT/vllm.log" 2>&1
  done_ "vllm (train, tests, bench --quick)" $?
  grep -E "rollout:|step +[0-9]|passed|failed|tiny-1m:|Error" "$OUT/vllm.log"
fi
want tests || exit 0
XDIST=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
timeout 900 $PY -m pytest $XDIST -v -p no:cacheprovider -rf > "$OUT/pytest.log" 2>&1
done_ "pytest" $?; grep -E "FAILED|ERROR|passed|failed" "$OUT/pytest.log" | tail -30
