#!/usr/bin/env bash
# One check of the whole GPU path, on one GPU, in at most ~7 minutes (`make gpu-check`):
#
#   bash bench/gpu_check.sh            # on a GPU machine, from the repository root
#   OUT=some/folder bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --cpu      # the same steps at toy sizes on the CPU (checks the script itself)
#
# Steps, in order (what issue 27 needs first), each under its own time limit (`timeout`). The limits
# of all but the optional last two sum to the whole budget, GPU_CHECK_BUDGET seconds (default 400),
# so no step is cut short by the ones before it and the check ends within 7 minutes, report
# included; a step that would start with under 10 s left is skipped. GPU_CHECK_ONLY="bench train ..."
# runs only the steps named, e.g. to rerun a few within a short lease. Seconds: limit (what the H100
# runs of docs/gpu_check/ took).
#   install      20 (2)  what requirements.txt needs and this machine lacks, from the wheels in .whl/ (no
#                        network; torch is left as installed) into /tmp/site, put on PYTHONPATH
#   versions     15 (7)  nvidia-smi; python, torch, CUDA, GPU, library versions
#   bench        60 (30) bench/bench_train.py's GPU row: ViT-B/32 geometry, batch 256, N = 6, bf16 autocast,
#                        steps (a) plain, (b) project and (c) trainer (OmniNegCLIPTrainer.train(), its 4
#                        DataLoader workers started by forkserver): samples/s, share of the bf16 matmul peak
#                        measured in the same run, (b)/(a) and (c)/(b)
#   cuda-tests   50 (42) pytest -m cuda (tests that need a GPU: bf16 autocast, train.py --bf16, eval on CUDA)
#   world, init-model   15, 25 (7, 20)  the offline image world (1,024 scenes) and a random CLIP of ViT-B/32
#                        geometry (no download)
#   train        60      train.py --bf16, GPU_CHECK_STEPS steps (default 100) at batch 256, 4 DataLoader
#                        workers started by forkserver (never forked from a process that holds CUDA)
#   fsdp, deepspeed     50, 50  the same run through configs/accelerate/fsdp.yaml and deepspeed_zero2.yaml
#                        (accelerate launch --num_processes 1), 10 steps, reusing train's image embeddings
#   check-checkpoints   20  the three trained folders are plain, finite float32 CLIPs (one process)
#   eval         35      python -m eval on CUDA on the trained checkpoint (world + layerwise, 256 items)
#   bench-compile 120    optional (run in the time the others left, at least its limit, or when
#                        GPU_CHECK_ONLY names it): the bench row's steps (b) and (c), (c) with the Trainer's
#                        --torch_compile (inductor; the compilation inside its warm-up steps)
#   bench-data   45      optional, likewise: bench/bench_data.py --sections preparation,input --device cuda
#                        --dtype bf16 on 150 JPEGs: images decoded once in worker processes and embedded on the GPU
#                        (images/s), the training input path (1,000 JPEGs ran past 90 s making the fixture)
#
# A failing step records its error and the script goes on. Results: $OUT (default runs/gpu_check)
# holds three files: results.md (a table of every step and its numbers, the benchmark and eval
# tables, the tail of each failed step's output), results.json (the same, machine-readable) and
# log.txt (every step's full output). Intermediate folders go to $GPU_CHECK_WORK (default
# /tmp/omninegclip_gpu_check), not into $OUT.
set -u
cd "$(dirname "$0")/.." || exit 2

CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_check}
WORK=${GPU_CHECK_WORK:-/tmp/omninegclip_gpu_check}
# --cpu: every limit (and the budget) times GPU_CHECK_LIMIT_SCALE, default 4 (a CPU runs the toy sizes slower).
SCALE=${GPU_CHECK_LIMIT_SCALE:-$([ "$CPU" = 1 ] && echo 4 || echo 1)}
BUDGET=${GPU_CHECK_BUDGET:-$((400 * SCALE))}
STEPS=${GPU_CHECK_STEPS:-100}
SITE=${GPU_CHECK_SITE:-/tmp/site}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_NO_ADVISORY_WARNINGS=1
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

rm -rf "$WORK" && mkdir -p "$WORK/logs" "$OUT" || exit 2
LOG="$OUT/log.txt"
: > "$LOG"
: > "$WORK/steps.tsv"
START=$(date +%s)
DEADLINE=$((START + BUDGET))

# step NAME LIMIT_SECONDS COMMAND...: run under min(LIMIT x SCALE, time left), output to the terminal,
# the step's log and log.txt; record status (ok / failed rc=N / timeout / skipped) and seconds.
step() {
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    local seconds=$limit
    [ "$left" -lt "$seconds" ] && seconds=$left
    local log="$WORK/logs/$name.log"
    if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
        echo "== $name: skipped (not in GPU_CHECK_ONLY)" | tee -a "$LOG" > "$log"
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$WORK/steps.tsv"
        return 0
    fi
    if [ "$seconds" -lt 10 ]; then
        echo "== $name: skipped (budget of ${BUDGET}s spent)" | tee -a "$LOG" > "$log"
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$WORK/steps.tsv"
        return 0
    fi
    echo "== $name (limit ${seconds}s): $*" | tee -a "$LOG"
    local begin=$(date +%s)
    timeout -k 10 "$seconds" "$@" > "$log" 2>&1
    local rc=$?
    local took=$(($(date +%s) - begin))
    cat "$log" >> "$LOG"
    tail -n 5 "$log"
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status="timeout"; elif [ "$rc" -ne 0 ]; then status="failed rc=$rc"; fi
    echo "== $name: $status in ${took}s" | tee -a "$LOG"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$took" "$limit" >> "$WORK/steps.tsv"
}

# optional_step NAME LIMIT_SECONDS COMMAND...: a step beyond the budgeted ones, run only in the time
# they left (at least its whole limit) or when GPU_CHECK_ONLY names it.
optional_step() {
    local name=$1 limit=$(($2 * SCALE))
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt "$limit" ] && [[ " ${GPU_CHECK_ONLY:-} " != *" $name "* ]]; then
        echo "== $name: skipped (optional: needs ${limit}s, ${left}s left; GPU_CHECK_ONLY=$name runs it)" \
            | tee -a "$LOG" > "$WORK/logs/$name.log"
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$WORK/steps.tsv"
        return 0
    fi
    step "$@"
}

if [ "$CPU" = 1 ]; then
    DEVICE=cpu; PRECISION=""; PREP_IMAGES=40; BATCH=8; STEPS=${GPU_CHECK_STEPS:-3}; SHORT=2; SCENES=64; MODEL_SIZE=small
    # The CPU's check of the loader flags: 2 workers started by forkserver, as on the GPU.
    LOADER="--dataloader_num_workers 2 --dataloader_persistent_workers true --dataloader_multiprocessing_context forkserver"
    BENCH=(--device cpu --quick --geometries default-small --batch-sizes 8 --front-blocks 2 --steps 2 --warmup 1 --no-eval)
    LAUNCH=(--cpu)
else
    # 4 data-loader workers, kept across epochs: collating 256 rows takes ~2 ms of CPU a step, off the main
    # process. Started by forkserver: the main process holds CUDA by then, and a forked child of it must not
    # touch CUDA (spawn would re-import everything per worker; forkserver imports once, then forks).
    DEVICE=cuda; PRECISION="--bf16"; PREP_IMAGES=150; BATCH=256; SHORT=10; SCENES=1024; MODEL_SIZE=vit-b-32
    LOADER="--dataloader_num_workers 4 --dataloader_persistent_workers true --dataloader_multiprocessing_context forkserver"
    BENCH=(--device cuda --dtype bf16 --geometries ViT-B/32 --batch-sizes 256 --front-blocks 6 --steps 10 --warmup 3 --no-eval)
    LAUNCH=()
fi

# Common train.py flags: cached image embeddings (frozen image tower), front 6 text blocks, bf16 autocast.
train_flags() {  # OUTPUT_DIR STEPS
    echo --model_name_or_path "$WORK/init" --dataset_name "$WORK/world" --output_dir "$1" \
        --per_device_train_batch_size "$BATCH" --per_device_eval_batch_size "$BATCH" --max_steps "$2" \
        --front_blocks 6 --learning_rate 1e-4 --warmup_steps 10 --logging_steps 25 --eval_strategy no \
        --save_strategy no --report_to none --disable_tqdm true --seed 0 $LOADER $PRECISION \
        --image_embedding_cache_dir "$WORK/embedding-cache"
}

step install 20 "$PY" -m bench.gpu_check install .whl "$SITE"
if [ "$CPU" = 0 ]; then
    step versions 15 bash -c "nvidia-smi; $PY -m bench.gpu_check versions"
else
    step versions 15 "$PY" -m bench.gpu_check versions
fi
step bench 60 "$PY" -m bench.bench_train "${BENCH[@]}" --out "$WORK/bench"
if [ "$CPU" = 0 ]; then
    step cuda-tests 50 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_image_prep.py
fi
step world 15 "$PY" data_builder.py shapes --out "$WORK/world" --num_train "$SCENES" --num_validation 64 \
    --num_test 256 --no_progress
step init-model 25 "$PY" -m bench.gpu_check init-model "$WORK/init" "$WORK/world" "$MODEL_SIZE"
# shellcheck disable=SC2046  # train_flags is a word list
step train 60 "$PY" train.py $(train_flags "$WORK/train" "$STEPS")
step fsdp 50 "$PY" -m accelerate.commands.launch ${LAUNCH[@]+"${LAUNCH[@]}"} --config_file configs/accelerate/fsdp.yaml \
    --num_processes 1 train.py $(train_flags "$WORK/fsdp" "$SHORT")
CHECKED=("$WORK/train" "$WORK/fsdp")
if [ "$CPU" = 0 ]; then
    step deepspeed 50 env DS_ACCELERATOR=cuda "$PY" -m accelerate.commands.launch \
        --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 1 train.py $(train_flags "$WORK/deepspeed" "$SHORT")
    CHECKED+=("$WORK/deepspeed")
fi
step check-checkpoints 20 "$PY" -m bench.gpu_check check-checkpoint "${CHECKED[@]}"
step eval 35 "$PY" -m eval "$WORK/train" --model_names trained --tasks world,layerwise --world "$WORK/world" \
    --device "$DEVICE" --max_items 256 --out "$WORK/eval" --no_progress
# Step (c) with --torch_compile (inductor): its compilation falls in the warm-up steps.
optional_step bench-compile 120 "$PY" -m bench.bench_train "${BENCH[@]}" --kinds project,trainer \
    --torch-compile inductor --out "$WORK/bench-compile"
# Preparation as train.py does it (issue 13): images decoded once by worker processes, embedded on the device.
optional_step bench-data 45 "$PY" -m bench.bench_data --sections preparation,input --images "$PREP_IMAGES" --device "$DEVICE" \
    ${PRECISION:+--dtype bf16} --out "$WORK/bench-data"

"$PY" -m bench.gpu_check report "$WORK" "$OUT" 2>&1 | tee -a "$LOG"
echo "gpu check took $(($(date +%s) - START))s; results in $OUT (results.md, results.json, log.txt)" | tee -a "$LOG"
