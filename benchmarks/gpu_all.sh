#!/usr/bin/env bash
# The whole GPU measurement of issue 18 in one command, on the lent H200 (no network there). Prepare HERE first:
#   bash benchmarks/gpu_prepare.sh          # fills the git-ignored .whl/ (~33 MB: wheels, tokenizer, GSM8K)
# then one device call: run(command="bash benchmarks/gpu_all.sh", carry=[".whl"], timeout_s=600).
# Phases (PHASES="check step05 trl" by default, each under its own time limit so the call ends inside its 10 minutes
# and every finished phase's log comes back in $OUT; step15 in a second call if device time is left):
#   check   roll-out alone, Qwen2.5-0.5B architecture, 8 x 8 x 256, bf16: eager vs compiled tokens/s, compile time,
#           greedy rows equal to eager (limit 2 min)
#   step05  benchmarks/gpu_step.py, 0.5B: eager/compiled roll-out x plain/chunked log-probs, steps 2-3 (limit 4 min)
#   trl     benchmarks/vs_trl.py --device gpu, 0.5B: TRL defaults, TRL best (static cache, Liger), rlvr (limit 3 min)
#   step15  gpu_step.py, 1.5B: eager+plain vs compiled+chunked (limit 4 min)
# The limits are estimates from the old H200 step times (roll-out 8.5 s, step 11.8 s) plus start-up and compiling;
# a phase cut by its limit still leaves its log. A rerun of one phase: PHASES=trl bash benchmarks/gpu_all.sh
# SMOKE=1: the same phases at toy sizes on this machine's CPU and venv (no install), to test the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-all}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
PHASES=${PHASES:-check step05 trl}
started=$SECONDS
log() { echo "[gpu_all $((SECONDS - started)) s] $*" | tee -a "$OUT/summary.txt"; }

if [ "${SMOKE:-0}" = 1 ]; then
  M05=tiny M15=tiny ROLL="--prompts 2 --group 2 --max-new-tokens 8 --dtype float32 --repeats 1"
  SIZE="--prompts 2 --group 2 --new-tokens 8 --steps 2" STEP="--trainer default -- data.val_size=2" TRLDEV=cpu
else
  M05=qwen0.5b M15=qwen1.5b ROLL="--prompts 8 --group 8 --max-new-tokens 256 --dtype bfloat16 --repeats 2"
  SIZE="--new-tokens 256 --steps 3" STEP="" TRLDEV=gpu
  # Packages: the carried wheels over the image's (torch, triton, numpy, pandas, pyarrow stay the image's), then rlvr.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/rlvr . || exit 1
  export PYTHONPATH=/tmp/rlvr:/tmp/site
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
fi
python3 - <<'PY' 2>&1 | tee -a "$OUT/summary.txt" || exit 1
import torch, transformers, trl, datasets, rlvr.train
try:
    import liger_kernel; liger = "liger-kernel imports"
except Exception as error:
    liger = f"liger-kernel does not import: {error}"
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__} ({device}), transformers {transformers.__version__}, "
      f"trl {trl.__version__}, datasets {datasets.__version__}; {liger}")
PY
TOK=.whl/assets/tokenizer
DATA=.whl/assets/gsm8k

phase() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  [ "${SMOKE:-0}" = 1 ] && limit=$((limit * 5))  # a loaded CPU
  case " $PHASES " in *" $name "*) ;; *) return ;; esac
  log "$name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc"
  grep -E '^\||x$|x |speed|setting|GB|liger|best' "$OUT/$name.log" | grep -v Warning | tee -a "$OUT/summary.txt" >/dev/null
}
phase check 120 python3 benchmarks/rollout_batching.py --decode eager compiled --random-init $M05 --tokenizer $TOK $ROLL
phase step05 240 python3 benchmarks/gpu_step.py --random-init $M05 --tokenizer $TOK --data $DATA $SIZE $STEP
phase trl 180 python3 benchmarks/vs_trl.py --device $TRLDEV --random-init $M05 --tokenizer $TOK --data $DATA $SIZE \
  --settings defaults best
phase step15 240 python3 benchmarks/gpu_step.py --random-init $M15 --tokenizer $TOK --data $DATA $SIZE \
  --variants eager-plain compiled-chunked $STEP
log "done"
cat "$OUT/summary.txt"
