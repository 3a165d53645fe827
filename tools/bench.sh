#!/usr/bin/env bash
# make bench: measure nembridge against `cp` on a generated ~1 GB safetensors model, and write
# BENCHMARKS.md. A benchmark, not a test: numbers vary with the machine and its load.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(cd "$(dirname "${1:-$ROOT/.build/release/nembridge}")" && pwd)/$(basename "${1:-nembridge}")"
PY="$ROOT/.venv/bin/python"
DATA="$ROOT/bench-data"
RUNS="${BENCH_RUNS:-3}"
OUT="$ROOT/BENCHMARKS.md"

mkdir -p "$DATA"
"$ROOT/tools/install-system-deps.sh" zstd
if [[ "${BENCH_ONLY:-}" != quant-export ]]; then
    if [[ ! -f "$DATA/model/model.safetensors" ]]; then
        echo "bench: generating $DATA/model (~1 GB)"
        "$PY" "$ROOT/tools/bench/make_bench_model.py" "$DATA/model"
    fi
    SRC="$DATA/model/model.safetensors"
    BYTES=$(stat -c %s "$SRC")
    TENSORS=$("$BIN" inspect "$SRC" --json | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["tensors"]))')
fi

# prewarm: each run starts right after freshly freed memory (why: tools/bench/prewarm.sh).
source "$ROOT/tools/bench/prewarm.sh"

# time_once CLEANUP COMMAND...: one run after CLEANUP and prewarm; sets T_WALL T_MEM T_CPU.
time_once() {
    local cleanup="$1"; shift
    eval "$cleanup"
    prewarm
    /usr/bin/time -o "$DATA/time.txt" -f "%e %M %U %S" "$@" >/dev/null 2>"$DATA/stderr.txt" \
        || { cat "$DATA/stderr.txt" >&2; echo "bench: $* failed" >&2; exit 1; }
    local user sys
    read -r T_WALL T_MEM user sys <<< "$(tail -1 "$DATA/time.txt")"
    T_CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# add_row LABEL "WALLS" "CPUS" RSS_KIB: the median row appended to the results table; LAST_MEDIAN.
ROWS=()
add_row() {
    local label="$1" walls="$2" cpus="$3" rss="$4"
    local wall cpu rate per_gb
    # shellcheck disable=SC2086
    wall=$(median $walls); cpu=$(median $cpus)
    rate=$(awk -v b="$BYTES" -v s="$wall" 'BEGIN { if (s > 0) printf "%.2f", b/s/1e9; else print "-" }')
    per_gb=$(awk -v b="$BYTES" -v c="$cpu" 'BEGIN { if (b > 0) printf "%.2f", c/(b/1e9); else print "-" }')
    [[ "${NO_RATE:-0}" == 1 ]] && rate="-" && per_gb="-"
    ROWS+=("| $label | $wall | $rate | $per_gb | $((rss / 1024)) MiB |")
    LAST_MEDIAN=$wall
    echo "bench: $label: ${wall}s (${rate} GB/s, ${per_gb} CPU s/GB), peak RSS $((rss / 1024)) MiB"
}

# run LABEL CLEANUP COMMAND...: median wall seconds and max peak RSS over $RUNS runs (after one
# warm-up), appended to the results table.
run() {
    local label="$1" cleanup="$2"; shift 2
    local walls="" cpus="" rss=0
    for i in $(seq 0 "$RUNS"); do
        time_once "$cleanup" "$@"
        [[ $i -eq 0 ]] && continue   # warm-up
        walls+=" $T_WALL"; cpus+=" $T_CPU"
        (( T_MEM > rss )) && rss=$T_MEM
    done
    eval "$cleanup"
    add_row "$label" "$walls" "$cpus" "$rss"
}

# queue LABEL CLEANUP COMMAND... then run_queued: rows measured in rounds, each round running
# every queued command once in order (a warm-up round, then $RUNS), so a slow spell of the disk
# or the host falls on all the rows compared in it, not on one row's runs. MEDIANS[i] is row i's.
Q_LABELS=(); Q_CLEANUPS=(); Q_COMMANDS=()
queue() {
    Q_LABELS+=("$1"); Q_CLEANUPS+=("$2"); shift 2
    Q_COMMANDS+=("$(printf '%q ' "$@")")
}
run_queued() {
    local n=${#Q_LABELS[@]} walls=() cpus=() rss=() i k
    for (( k = 0; k < n; k++ )); do walls+=(""); cpus+=(""); rss+=(0); done
    for i in $(seq 0 "$RUNS"); do
        for (( k = 0; k < n; k++ )); do
            eval "time_once \"\${Q_CLEANUPS[$k]}\" ${Q_COMMANDS[$k]}"
            [[ $i -eq 0 ]] && continue
            walls[k]+=" $T_WALL"; cpus[k]+=" $T_CPU"
            (( T_MEM > rss[k] )) && rss[k]=$T_MEM
        done
    done
    MEDIANS=()
    for (( k = 0; k < n; k++ )); do
        eval "${Q_CLEANUPS[$k]}"
        add_row "${Q_LABELS[$k]}" "${walls[k]}" "${cpus[k]}" "${rss[k]}"
        MEDIANS+=("$LAST_MEDIAN")
    done
    Q_LABELS=(); Q_CLEANUPS=(); Q_COMMANDS=()
}

# ---- export --quantize of the Llama-3.2-1B shape (issue 15): fresh block FP8 of a bf16 import,
# and like-source of a block-FP8 import, against the plain bf16 export of the same import ----
QUANT_EXPORT_ROWS=()
quant_export_bench() {
    local model="$DATA/llama-16"
    if [[ ! -f "$model/config.json" ]]; then "$PY" "$ROOT/tools/bench/make_llama_model.py" "$model"; fi
    if [[ ! -f "$DATA/llama-16-fp8/config.json" ]]; then "$PY" "$ROOT/tools/bench/make_quantized_model.py" fp8 "$DATA/llama-16-fp8"; fi
    [[ -d "$DATA/mc-bf16" ]] || "$BIN" import --hf "$model" --out "$DATA/mc-bf16" >/dev/null
    [[ -d "$DATA/mc-fp8" ]] || "$BIN" import --hf "$DATA/llama-16-fp8" --out "$DATA/mc-fp8" >/dev/null
    ROWS=()
    BYTES=$(du -sbL "$model" | cut -f1)  # GB/s of the bf16 model bytes read
    local clean='rm -rf "$DATA/hf-q"'
    queue "\`nembridge export\` of the bf16 import (bf16 out) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-bf16' --out '$DATA/hf-q' && sync"
    queue "\`nembridge export --quantize fp8-block\` ([128, 128] out) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-bf16' --out '$DATA/hf-q' --quantize fp8-block && sync"
    queue "\`nembridge export --quantize like-source\` of the block-FP8 import (byte-identical to the source) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-fp8' --out '$DATA/hf-q' --quantize like-source && sync"
    run_queued
    local plain_s=${MEDIANS[0]} fp8_s=${MEDIANS[1]} like_s=${MEDIANS[2]}
    rm -rf "$DATA/mc-bf16" "$DATA/mc-fp8"
    QUANT_EXPORT_ROWS+=("" "| what | wall s | GB/s (bf16 read) | CPU s/GB | peak RSS |" "| --- | --- | --- | --- | --- |")
    QUANT_EXPORT_ROWS+=("${ROWS[@]}")
    QUANT_EXPORT_ROWS+=("" "Speed relative to the plain export: fp8-block $(awk -v a="$plain_s" -v b="$fp8_s" 'BEGIN { printf "%.2f", a/b }')×, like-source $(awk -v a="$plain_s" -v b="$like_s" 'BEGIN { printf "%.2f", a/b }')×.")
}
# BENCH_ONLY=quant-export: only these rows, printed (BENCHMARKS.md is not written).
if [[ "${BENCH_ONLY:-}" == quant-export ]]; then
    quant_export_bench
    printf '%s\n' "${QUANT_EXPORT_ROWS[@]}"
    exit 0
fi

clean_out='rm -rf "$DATA/out" "$DATA/out.safetensors"'
queue '`cp` + `sync` of the file (durable copy)' "$clean_out" bash -c "cp '$SRC' '$DATA/out.safetensors' && sync '$DATA/out.safetensors'"
queue '`nembridge reshard` (same layout: read, write, XXH3 per tensor, fsync)' "$clean_out" "$BIN" reshard --hf "$DATA/model" --out "$DATA/out"
queue '`nembridge reshard --max-shard-size 250MB` (5 shards + index)' "$clean_out" "$BIN" reshard --hf "$DATA/model" --out "$DATA/out" --max-shard-size 250MB
queue 'Python `safetensors` load_file + save_file + fsync' "$clean_out" "$PY" "$ROOT/tools/bench/python_rewrite.py" "$SRC" "$DATA/out.safetensors"
run_queued
NO_RATE=1 run '`nembridge inspect` (headers only, no data read)' ":" "$BIN" inspect "$DATA/model"


# ---- import / export of Llama-3.2-1B-shaped models vs a durable copy ----
CONVERT_ROWS=()
convert_bench() {
    local label="$1" layers="$2" model="$3"
    shift 3
    if [[ ! -f "$model/config.json" ]]; then
        echo "bench: generating $model"
        "$PY" "$@" "$model"
    fi
    local size
    size=$(du -sb "$model" | cut -f1)
    ROWS=()
    BYTES=$size
    local clean='rm -rf "$DATA/copy" "$DATA/mc" "$DATA/hf-out"'
    # The sources of the export rows first, then every row in rounds (see `queue`).
    rm -rf "$DATA/mc-src" "$DATA/legacy-src" "$DATA/mcz"
    "$BIN" import --hf "$model" --out "$DATA/mc-src" >/dev/null
    queue "durable copy: \`cp -r\` + \`sync\`" "$clean" bash -c "cp -r '$model' '$DATA/copy' && sync"
    queue "\`nembridge import\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' && sync"
    queue "\`nembridge export\` + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-src' --out '$DATA/hf-out' && sync"
    queue "\`nembridge verify\` HF vs Megatron (reads both)" ":" "$BIN" verify "$model" "$DATA/mc-src"
    local legacy_bytes zsize plain
    if [[ "$layers" == 16 ]]; then
        queue "\`nembridge reshard --megatron --tp 4\` + \`sync\`" "$clean" bash -c "'$BIN' reshard --megatron '$DATA/mc-src' --out '$DATA/mc' --tp 4 && sync"
        # The legacy per-rank format (--ckpt-format torch): write TP=2 PP=2 from HF, re-shard the
        # torch_dist checkpoint into legacy TP=4, and export the legacy files back to HF.
        "$BIN" import --hf "$model" --out "$DATA/legacy-src" --ckpt-format torch --tp 2 --pp 2 >/dev/null
        legacy_bytes=$(du -sb "$DATA/legacy-src" | cut -f1)
        queue "\`nembridge import --ckpt-format torch --tp 2 --pp 2\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --ckpt-format torch --tp 2 --pp 2 && sync"
        queue "\`nembridge reshard --ckpt-format torch --tp 4\` (torch_dist -> legacy) + \`sync\`" "$clean" bash -c "'$BIN' reshard '$DATA/mc-src' --out '$DATA/mc' --ckpt-format torch --tp 4 && sync"
        queue "\`nembridge export\` of the legacy TP=2 PP=2 checkpoint + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/legacy-src' --out '$DATA/hf-out' && sync"
        "$BIN" import --hf "$model" --out "$DATA/mcz" --compress zstd:3 >/dev/null
        zsize=$(du -sb "$DATA/mcz/release" | cut -f1)
        plain=$(du -sb "$DATA/mc-src/release" | cut -f1)
        # The zstd tool doing the same compression without any conversion: the floor for the
        # zstd rows, as the durable copy is for the others (zstd -d reads files it compressed).
        rm -rf "$DATA/zsrc" && mkdir -p "$DATA/zsrc"
        for f in "$model"/*.safetensors; do zstd -q -3 -T2 "$f" -o "$DATA/zsrc/$(basename "$f").zst"; done
        local zclean='rm -rf "$DATA/ztool"; mkdir -p "$DATA/ztool"'
        queue "the zstd tool: \`zstd -1 -T2\` of each shard + \`sync\`" "$zclean" bash -c "for f in '$model'/*.safetensors; do zstd -q -1 -T2 \"\$f\" -o '$DATA/ztool'/\"\$(basename \"\$f\")\".zst || exit 1; done; sync"
        queue "the zstd tool: \`zstd -3 -T2\` of each shard + \`sync\`" "$zclean" bash -c "for f in '$model'/*.safetensors; do zstd -q -3 -T2 \"\$f\" -o '$DATA/ztool'/\"\$(basename \"\$f\")\".zst || exit 1; done; sync"
        queue "the zstd tool: \`zstd -d\` of those shards + \`sync\`" "$zclean" bash -c "for f in '$DATA/zsrc'/*.zst; do zstd -q -d \"\$f\" -o '$DATA/ztool'/\"\$(basename \"\$f\" .zst)\" || exit 1; done; sync"
        queue "\`nembridge import --compress zstd:1\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --compress zstd:1 && sync"
        queue "\`nembridge import --compress zstd:3\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --compress zstd:3 && sync"
        queue "\`nembridge export\` of the zstd:3 checkpoint + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mcz' --out '$DATA/hf-out' && sync"
    fi
    run_queued
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }
    local copy_s=${MEDIANS[0]}
    RATIO_NOTE="import $(ratio "${MEDIANS[1]}" "$copy_s")×, export $(ratio "${MEDIANS[2]}" "$copy_s")× the durable copy's wall time."
    if [[ "$layers" == 16 ]]; then
        local legacy_import_s=${MEDIANS[5]}
        RESHARD_NOTE="reshard to TP=4 $(ratio "${MEDIANS[4]}" "$copy_s")× the durable copy's wall time. Legacy format: import at TP=2 PP=2 $(ratio "$legacy_import_s" "$copy_s")× (it writes $(ratio "$legacy_bytes" "$size")× the model's bytes, the last stage keeping its own copy of the tied embedding: $(awk -v a="$legacy_import_s" -v b="$copy_s" -v w="$legacy_bytes" -v m="$size" 'BEGIN { printf "%.2f", (a/b)/(w/m) }')× per byte written), torch_dist -> legacy TP=4 $(ratio "${MEDIANS[6]}" "$copy_s")×, export of legacy TP=2 PP=2 $(ratio "${MEDIANS[7]}" "$copy_s")× the durable copy's wall time."
        ZSTD_NOTE="zstd:3 checkpoint: $zsize bytes vs $plain uncompressed (ratio $(awk -v a="$plain" -v b="$zsize" 'BEGIN { printf "%.3f", a/b }')). Against the zstd tool doing the same work on the shards (no conversion): import zstd:1 $(ratio "${MEDIANS[11]}" "${MEDIANS[8]}")×, zstd:3 $(ratio "${MEDIANS[12]}" "${MEDIANS[9]}")×, export of the zstd:3 checkpoint $(ratio "${MEDIANS[13]}" "${MEDIANS[10]}")× its wall time."
    fi
    rm -rf "$DATA/mc-src" "$DATA/legacy-src" "$DATA/mcz" "$DATA/zsrc" "$DATA/ztool"
    CONVERT_ROWS+=("" "### $label: $size bytes" "" "| what | wall s | GB/s | CPU s/GB | peak RSS |" "| --- | --- | --- | --- | --- |")
    CONVERT_ROWS+=("${ROWS[@]}")
    CONVERT_ROWS+=("" "$RATIO_NOTE")
    if [[ -n "${RESHARD_NOTE:-}" ]]; then CONVERT_ROWS+=("$RESHARD_NOTE"); RESHARD_NOTE=""; fi
    if [[ -n "${ZSTD_NOTE:-}" ]]; then CONVERT_ROWS+=("" "$ZSTD_NOTE" "GB/s is of the uncompressed model bytes."); ZSTD_NOTE=""; fi
}
SAFETENSORS_ROWS=("${ROWS[@]}")
SAFETENSORS_BYTES=$BYTES
convert_bench "Llama-3.2-1B shape, 16 layers" 16 "$DATA/llama-16" "$ROOT/tools/bench/make_llama_model.py"
convert_bench "Llama-3.2-1B shape, 4 layers" 4 "$DATA/llama-4" "$ROOT/tools/bench/make_llama_model.py" 4
convert_bench "Nemotron-3-MoE shape (24 hybrid layers, 128 experts per MoE layer, ~3,300 tensors)" moe "$DATA/moe" "$ROOT/tools/bench/make_moe_model.py"
# ---- import of quantized releases (issue 15): block FP8 and NVFP4 dequantized vs a plain import ----
QUANT_ROWS=()
quant_bench() {
    local model="$DATA/llama-16" s
    for s in fp8 nvfp4; do
        if [[ ! -f "$DATA/llama-16-$s/config.json" ]]; then
            echo "bench: generating $DATA/llama-16-$s"
            "$PY" "$ROOT/tools/bench/make_quantized_model.py" "$s" "$DATA/llama-16-$s"
        fi
    done
    ROWS=()
    BYTES=$(du -sb "$model" | cut -f1)  # every row writes these bf16 bytes: GB/s of the output
    local clean='rm -rf "$DATA/mc"'
    queue "\`nembridge import\` of the bf16 model + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' && sync"
    queue "\`nembridge import\` of block FP8 [128, 128] (dequantized to bf16) + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$DATA/llama-16-fp8' --out '$DATA/mc' && sync"
    queue "\`nembridge import\` of ModelOpt NVFP4 (dequantized to bf16) + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$DATA/llama-16-nvfp4' --out '$DATA/mc' && sync"
    run_queued
    local plain_s=${MEDIANS[0]} fp8_s=${MEDIANS[1]} nvfp4_s=${MEDIANS[2]}
    QUANT_ROWS+=("" "Sources: bf16 $(du -sb "$model" | cut -f1) bytes, block FP8 $(du -sb "$DATA/llama-16-fp8" | cut -f1), NVFP4 $(du -sb "$DATA/llama-16-nvfp4" | cut -f1)." ""
                 "| what | wall s | GB/s (written) | CPU s/GB | peak RSS |" "| --- | --- | --- | --- | --- |")
    QUANT_ROWS+=("${ROWS[@]}")
    QUANT_ROWS+=("" "Speed relative to the plain import (goal ≥ 0.8×): block FP8 $(awk -v a="$plain_s" -v b="$fp8_s" 'BEGIN { printf "%.2f", a/b }')×, NVFP4 $(awk -v a="$plain_s" -v b="$nvfp4_s" 'BEGIN { printf "%.2f", a/b }')×.")
}
quant_bench
quant_export_bench
# A real run at a real model's size: Nemotron-H-8B's published shapes (16.2 GB, 4 shards), the
# sparse folder's headers with weight-like data written in (one run after the warm-up: it is large).
if [[ ! -f "$DATA/nemotron-h-8b/config.json" ]]; then
    rm -rf "$DATA/nemotron-h-8b"
    python3 "$ROOT/tools/realscale/make_sparse.py" "$DATA/nemotron-h-8b" nemotron-h-8b >/dev/null
    "$PY" "$ROOT/tools/bench/fill_sparse.py" "$DATA/nemotron-h-8b"
fi
SAVED_RUNS=$RUNS; RUNS=1
convert_bench "Nemotron-H-8B published shapes, real data (52 layers, 4 shards of ≤ 5 GB)" large "$DATA/nemotron-h-8b" true
RUNS=$SAVED_RUNS
ROWS=("${SAFETENSORS_ROWS[@]}")

# Notes written by hand below this marker (variance across runs) survive a re-run.
MARKER='<!-- notes below are kept by make bench -->'
KEPT=""
if [[ -f "$OUT" ]] && grep -qF "$MARKER" "$OUT"; then KEPT="$(sed -n "/$MARKER/,\$p" "$OUT")"; fi
{
    echo "# nembridge benchmarks"
    echo
    echo "Written by \`make bench\` (tools/bench.sh). Numbers vary with the machine and its load: compare"
    echo "rows of one run, not runs of different days."
    echo
    echo "## Safetensors read + write vs \`cp\`"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- Command: \`make bench\` (median of $RUNS rounds after a warm-up round, each round running every row of a table once in turn; page cache warm; each run right after freshly freed memory: see tools/bench/prewarm.sh)"
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(df -T "$DATA" | awk 'NR==2 {print $2}') file system"
    echo "- Input: generated Llama-shaped bf16 \`model.safetensors\`, $SAFETENSORS_BYTES bytes, $TENSORS tensors"
    echo "- nembridge $("$BIN" --version)"
    echo
    echo "| what | wall s | GB/s | CPU s/GB | peak RSS |"
    echo "| --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Every nembridge row fsyncs its output and publishes it by rename; the output bytes equal the"
    echo "source's (the tests prove byte identity). Peak RSS of nembridge is bounded by its buffer pool"
    echo "(2 workers × 16 MiB) plus headers, whatever the model size."
    echo
    echo "## Import and export vs a durable copy"
    echo
    echo "Weight-like bf16 models (normal, std 0.02) shaped like Llama-3.2-1B (hidden 2048, 32/8 heads,"
    echo "vocab 128256, tied) and like Nemotron 3 MoE, sharded at 1 GB as save_pretrained does;"
    echo "generated by tools/bench/make_llama_model.py and make_moe_model.py, not committed."
    echo "Each nembridge run is followed by \`sync\`, like the copy. Targets (issues 5 and 12): import and export"
    echo "within 1.1× the durable copy, peak RSS ≤ 256 MiB whatever the model size."
    printf '%s\n' "${CONVERT_ROWS[@]}"
    echo
    echo "## Import of quantized releases"
    echo
    echo "The Llama-3.2-1B shape (16 layers) as block FP8 ([128, 128], every linear) and as ModelOpt"
    echo "NVFP4 (tools/bench/make_quantized_model.py), imported and dequantized to bf16, against the"
    echo "plain import of the bf16 model of the same shape: the same bf16 bytes written."
    printf '%s\n' "${QUANT_ROWS[@]}"
    echo
    echo "## Export quantized (\`--quantize\`)"
    echo
    echo "The same bf16 import exported as bf16 and as block FP8 ([128, 128] scales computed in the same"
    echo "streamed pass as the codes), and the block-FP8 model's import exported like-source."
    printf '%s\n' "${QUANT_EXPORT_ROWS[@]}"
    echo
    if [[ -n "$KEPT" ]]; then echo; printf '%s\n' "$KEPT"; fi
} > "$OUT"
echo "bench: wrote $OUT"
# Sections that write themselves (each can be re-run alone).
"$ROOT/tools/bench/realscale.sh" "$BIN" "$DATA"
"$ROOT/tools/bench/jobs.sh" "$BIN" "$DATA"
