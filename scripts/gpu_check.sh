#!/usr/bin/env bash
# Measure this package on one GPU, offline, in under 8 minutes, and write the JSON results.
#
#   scripts/gpu_check.sh            run every step (repository root as working directory)
#   scripts/gpu_check.sh --dry-run  print the steps and their time limits, run nothing
#   scripts/gpu_check.sh --quant    instead, the formats a T4 can run besides those: 7B in 4-bit
#                                   NF4 and in int8 (LLM.int8), 13B in int8, each against the
#                                   pipeline and with the graph path, also under 8 minutes: the
#                                   figures the plan's choice of format waits for
#   scripts/gpu_check.sh --smoke    run every step of both checks on the tiny model with few
#                                   tokens: checks the script itself on any machine, CPU included
#   scripts/gpu_check.sh --serve    instead, serving (under 10 minutes): the tiny model on
#                                   `transformers serve` on the GPU, with and without continuous
#                                   batching, and, if vLLM imports, Llama-2-7b-chat's architecture
#                                   with random weights on vLLM with the flags the plan derives
#                                   (scripts/serve_bench.py: cold start, prompt ids equal to
#                                   encode_dialog's, tok/s at 1/4/8 requests at once)
#   scripts/gpu_check.sh --suite    run the whole test suite (every notebook included) on this
#                                   machine's GPU instead, in under 5 minutes: the GPU branch of
#                                   each notebook executes. Needs pytest, nbval, ipykernel and
#                                   ipywidgets (see docs/benchmarks.md for carrying wheels).
#
# Steps (each under its own time limit, so one failure does not sink the rest):
#   env        versions, GPU name and memory
#   7b-fp16    Llama-2-7B architecture, random weights, float16 (the T4 format): the package's
#              default path vs a plain transformers text-generation pipeline (10 repetitions),
#              plus the fast path "graph" (static KV cache, decode step as a CUDA graph); copy
#              bandwidth and the bandwidth limit
#   7b-static  the same model with a static KV cache + torch.compile (compiling takes a while)
#   13b-nf4    Llama-2-13B architecture in 4-bit NF4 with float16 compute, default vs pipeline
#              (10 repetitions) and the "graph" path, if bitsandbytes imports
# The summary gives, for each path: tok/s, the paired ratio to the pipeline, the fraction of the
# bandwidth limit, warm-up seconds, peak memory and whether greedy output matches the default.
#
# Needs torch, transformers and accelerate (bitsandbytes optional); no network, no token: random
# weights are built on the GPU from the architectures in llama2_colab/data/catalog.json.
# Results go to a folder per check inside $OUT if set, else inside bench-results/ (check/,
# quant/, smoke/ or suite/, so one check never overwrites another's): one JSON and one log per
# step, plus summary.txt. The exit status is 1 if any step failed or timed out.
set -u

MODE="run"
case "${1:-}" in
  --dry-run) MODE="dry" ;;
  --smoke) MODE="smoke" ;;
  --suite) MODE="suite" ;;
  --quant) MODE="quant" ;;
  --serve) MODE="serve" ;;
  "") ;;
  *) echo "usage: $0 [--dry-run|--smoke|--suite|--quant|--serve]" >&2; exit 2 ;;
esac

case "$MODE" in run) NAME=check ;; *) NAME="$MODE" ;; esac
ROOT="$(cd "$(dirname "$0")/.." && pwd)" || exit 1
OUT_DIR="${OUT:-$ROOT/bench-results}/$NAME"  # bench-results/ is git-ignored
case "$OUT_DIR" in /*) ;; *) OUT_DIR="$PWD/$OUT_DIR" ;; esac  # a relative OUT: from here
cd "$ROOT" || exit 1
PY="${PYTHON:-$(command -v python || command -v python3)}"
if [ "$MODE" != "dry" ]; then
  mkdir -p "$OUT_DIR" || { echo "gpu_check.sh: cannot make $OUT_DIR for the results" >&2; exit 1; }
fi
FAILED=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ "$MODE" = "smoke" ]; then
  M7="tiny"; M13="tiny"; DT=(); Q=(--quantization nf4)
  WORK=(--prompt-tokens 64 --new-tokens 8 --warmup 0); MANY=(--repeats 2); FEW=(--repeats 2)
  LIMITS=(60 120 240 120); QLIMITS=(120 120 120); SLIMITS=(240 300 300)
else
  M7="meta-llama/Llama-2-7b-chat-hf"; M13="meta-llama/Llama-2-13b-chat-hf"
  DT=(--dtype float16); Q=(--quantization nf4)
  WORK=(--prompt-tokens 512 --new-tokens 64 --warmup 0); MANY=(--repeats 10); FEW=(--repeats 5)
  # Seconds per step, 470 s in all (under 8 minutes with the summary). Estimated from the H200
  # run of 2026-11-27 (7B fp16: 1.8 s per 64-token call, building 7B ~15 s, compiling 45 s;
  # 13B NF4: 3.7 s per call): 7b-fp16 ~70 s, 7b-static ~100 s, 13b-nf4 ~150 s, with room for a
  # slower card. A step past its limit is recorded as timed out and the others still run.
  LIMITS=(30 120 150 170)
  # --quant: 7B NF4 and int8 build in ~15 s each and decode at roughly 13B NF4's speed or
  # slower (LLM.int8 splits out outliers on every call); 13B int8 is the slowest. 5 repetitions.
  QLIMITS=(140 150 170)
  # --serve: the tiny model starts in ~10 s and answers 1+4+8 short requests in seconds; vLLM
  # builds 7B's dummy weights, profiles memory and captures CUDA graphs first (1-3 minutes).
  SLIMITS=(100 120 270)
fi
MT="tiny"; M7V="meta-llama/Llama-2-7b-chat-hf"  # served: the tiny model; vLLM: 7B's shapes

run_step() {  # name, limit, command...: run it with a time limit; record a failure as JSON
  local name="$1" limit="$2"; shift 2
  if [ "$MODE" = "dry" ]; then
    printf '%-10s %4ss  %s\n' "$name" "$limit" "$(echo "$*" | tr '\n' ' ' | cut -c1-150)"
    return 0
  fi
  echo "== $name (limit ${limit}s): $(echo "$*" | tr '\n' ' ' | cut -c1-150)"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT_DIR/$name.json" 2>"$OUT_DIR/$name.log"
  local rc=$?
  if [ $rc -ne 0 ]; then
    local why="exit status $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${limit}s"
    FAILED=1
    tail -n 5 "$OUT_DIR/$name.log" >&2
    "$PY" - "$OUT_DIR/$name.json" "$name" "$why" <<'EOF'
import json, sys
path, step, why = sys.argv[1:]
json.dump({"step": step, "error": why}, open(path, "w"))
EOF
  fi
  echo "   $name: done in $((SECONDS - start)) s (rc=$rc)"
}

BENCH=("$PY" -m llama2_colab bench --json)

if [ "$MODE" = "suite" ]; then
  # The whole suite, notebooks included, on the GPU: 290 s at most, a line of JSON per outcome.
  echo "== suite (limit 290s): $PY -m pytest"
  start=$SECONDS
  timeout --kill-after=10 290 "$PY" -m pytest -q -p no:cacheprovider -rfE \
    >"$OUT_DIR/suite.log" 2>&1
  rc=$?
  "$PY" - "$OUT_DIR" "$rc" "$((SECONDS - start))" <<'EOF' | tee "$OUT_DIR/suite.json"
import json, pathlib, re, sys
out, rc, seconds = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
log = (out / "suite.log").read_text(errors="replace")
counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", log)}
failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.M)
print(json.dumps({"step": "suite", "exit_status": rc, "seconds": seconds, **counts,
                  "failed_tests": failed}, indent=2))
EOF
  exit "$rc"
fi

run_step env "${LIMITS[0]}" "$PY" -c '
import json, platform, torch, transformers
gpu = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    gpu = {"name": p.name, "compute_capability": [p.major, p.minor],
           "total_memory_bytes": p.total_memory}
try:
    import bitsandbytes
    bnb = bitsandbytes.__version__
except Exception as err:
    bnb = f"unavailable: {type(err).__name__}"
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "transformers": transformers.__version__, "bitsandbytes": bnb,
                  "cuda": torch.version.cuda, "gpu": gpu}, indent=2))'

have_bnb() { [ "$MODE" = "dry" ] || "$PY" -c "import bitsandbytes" >/dev/null 2>&1; }

bnb_step() {  # name, limit, bench args...: a bitsandbytes step, or a record of why it was skipped
  local name="$1" limit="$2"; shift 2
  if have_bnb; then
    run_step "$name" "$limit" "${BENCH[@]}" "$@"
  else
    echo "== $name: skipped, bitsandbytes does not import"
    echo "{\"step\": \"$name\", \"error\": \"skipped: bitsandbytes does not import\"}" \
      >"$OUT_DIR/$name.json"
  fi
}

serve_step() {  # name, limit, serve_bench args...: the vLLM step only where vLLM imports
  local name="$1" limit="$2"; shift 2
  if [ "$MODE" = "dry" ] || [ "$name" != "serve-vllm" ] || "$PY" -c "import vllm" >/dev/null 2>&1
  then
    run_step "$name" "$limit" "$PY" scripts/serve_bench.py "$@"
  else
    echo "== $name: skipped, vllm does not import (pip install vllm on a GPU machine)"
    echo "{\"step\": \"$name\", \"error\": \"skipped: vllm does not import\"}" \
      >"$OUT_DIR/$name.json"
  fi
}

if [ "$MODE" = "serve" ] || [ "$MODE" = "smoke" ] || [ "$MODE" = "dry" ]; then
  serve_step serve-tf "${SLIMITS[0]}" --model "$MT"
  serve_step serve-tf-cb "${SLIMITS[1]}" --model "$MT" --continuous-batching
  serve_step serve-vllm "${SLIMITS[2]}" --engine vllm --random-weights --model "$M7V"
  if [ "$MODE" = "serve" ]; then
    "$PY" - "$OUT_DIR" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
env = json.loads((out / "env.json").read_text() or "{}") if (out / "env.json").exists() else {}
print(f"\nMachine: {(env.get('gpu') or {}).get('name', 'no GPU')}; torch {env.get('torch')}, "
      f"transformers {env.get('transformers')}")
for step in ("serve-tf", "serve-tf-cb", "serve-vllm"):  # scripts/serve_bench.py's JSON
    sv = json.loads((out / f"{step}.json").read_text() or "{}")
    if "error" in sv:
        print(f"{step:<12} {sv['error']}")
        continue
    single = sv["single"]
    at_once = ", ".join(f"{c['requests']}: {c['tokens_per_s']}" for c in sv["concurrent"])
    print(f"{step:<12} {sv['model']} ready in {sv['cold_start_s']} s; prompt ids match: "
          f"{sv['prompt_ids_match']}; one request {single['http_tokens_per_s']} tok/s over HTTP"
          + (f" vs {single['local_tokens_per_s']} local" if "local_tokens_per_s" in single else "")
          + f"; at once (requests: tok/s) {at_once}")
EOF
    exit "$FAILED"
  fi
fi

STEPS=()
if [ "$MODE" != "quant" ]; then
  STEPS+=(7b-fp16 7b-static 13b-nf4)
  run_step 7b-fp16 "${LIMITS[1]}" "${BENCH[@]}" --model "$M7" --random-weights "${DT[@]}" \
    --fast graph "${WORK[@]}" "${MANY[@]}"

  run_step 7b-static "${LIMITS[2]}" "${BENCH[@]}" --model "$M7" --random-weights "${DT[@]}" \
    --fast static --no-bandwidth "${WORK[@]}" "${FEW[@]}"

  bnb_step 13b-nf4 "${LIMITS[3]}" --model "$M13" --random-weights "${DT[@]}" \
    "${Q[@]}" --fast graph "${WORK[@]}" "${MANY[@]}"
fi
if [ "$MODE" = "quant" ] || [ "$MODE" = "smoke" ] || [ "$MODE" = "dry" ]; then
  STEPS+=(7b-nf4 7b-int8 13b-int8)
  bnb_step 7b-nf4 "${QLIMITS[0]}" --model "$M7" --random-weights "${DT[@]}" \
    --quantization nf4 --fast graph "${WORK[@]}" "${FEW[@]}"
  bnb_step 7b-int8 "${QLIMITS[1]}" --model "$M7" --random-weights "${DT[@]}" \
    --quantization int8 --fast graph "${WORK[@]}" "${FEW[@]}"
  bnb_step 13b-int8 "${QLIMITS[2]}" --model "$M13" --random-weights "${DT[@]}" \
    --quantization int8 --fast graph "${WORK[@]}" "${FEW[@]}"
fi

[ "$MODE" = "dry" ] && exit 0

"$PY" - "$OUT_DIR" "${STEPS[@]}" <<'EOF' | tee "$OUT_DIR/summary.txt"
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
env = json.loads((out / "env.json").read_text() or "{}") if (out / "env.json").exists() else {}
gpu = (env.get("gpu") or {}).get("name", "no GPU")
print(f"\nMachine: {gpu}; torch {env.get('torch')}, transformers {env.get('transformers')}, "
      f"bitsandbytes {env.get('bitsandbytes')}")
print(f"{'step / path':<22} {'tok/s':>7} {'x pipeline [IQR]':>19} {'of limit':>8} {'warm-up':>8} "
      f"{'peak GiB':>8}  same output")
limits = {}
for step in sys.argv[2:]:
    path = out / f"{step}.json"
    try:
        r = json.loads(path.read_text())
    except Exception as err:
        print(f"{step:<22} no result ({type(err).__name__})")
        continue
    if "error" in r:
        print(f"{step:<22} {r['error']}")
        continue
    # 7b-static skips the bandwidth copy: it runs the same model and work as 7b-fp16.
    limit = r.get("bandwidth_limit_tokens_per_s") or limits.get(r['model'])
    limits[r['model']] = limit
    print(f"{step}: {r['model'].split('/')[-1]} {r['dtype']}"
          f"{' ' + r['quantization'] if r.get('quantization') else ''}, "
          f"{r['prompt_tokens']}-token prompt, {r['new_tokens']} new, {r['repeats']} repetitions; "
          f"default/pipeline ratio of medians {r['ratio']:.3f}"
          + (f"; limit {limit:.0f} tok/s" if limit else "")
          + (f" (copy {r['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s)"
             if "copy_bandwidth_bytes_per_s" in r else ""))

    def row(name, tps, paired, iqr, warm, peak, same):
        of = f"{100 * tps / limit:.0f}%" if limit else "n/a"
        ratio = f"{paired:.3f} [{iqr[0]:.2f}-{iqr[1]:.2f}]" if paired is not None else "1"
        print(f"  {name:<20} {tps:>7.1f} {ratio:>19} {of:>8} {warm:>7.1f}s "
              f"{peak / 2**30:>8.2f}  {same}")

    row("default (package)", r['tokens_per_s'], r['paired_ratio_median'], r['paired_ratio_iqr'],
        r['warmup_s'], r['peak_memory_bytes'], "(reference)")
    row("pipeline", r['baseline_tokens_per_s'], None, None, r['baseline_warmup_s'],
        r['baseline_peak_memory_bytes'], r['same_output_as_baseline'])
    for name, fp in r.get("fast_paths", {}).items():
        if "error" in fp:
            print(f"  {name:<20} failed: {fp['error'][:200]}")
            continue
        graph = ""
        if "cuda_graph" in fp:
            graph = f"; CUDA graph {fp.get('cuda_graph')}" + (
                f" ({fp.get('graph_error')})" if fp.get('graph_error') else "")
        row(name, fp['tokens_per_s'], fp['paired_ratio_to_pipeline'],
            fp['paired_ratio_to_pipeline_iqr'], fp['warmup_s'], fp['peak_memory_bytes'],
            f"{fp['same_output_as_default']} ({fp['ratio_to_default']:.2f}x default){graph}")
print(f"\nJSON results in {out}/")
EOF
exit "$FAILED"
