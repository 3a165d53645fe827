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

# run LABEL CLEANUP COMMAND...: median wall seconds and max peak RSS over $RUNS runs (after one
# warm-up), appended to the results table.
ROWS=()
run() {
    local label="$1" cleanup="$2"; shift 2
    local times=() cpus=() rss=0
    for i in $(seq 0 "$RUNS"); do
        eval "$cleanup"
        prewarm
        local line
        /usr/bin/time -o "$DATA/time.txt" -f "%e %M %U %S" "$@" >/dev/null 2>"$DATA/stderr.txt" \
            || { cat "$DATA/stderr.txt" >&2; echo "bench: $label failed" >&2; exit 1; }
        line=$(tail -1 "$DATA/time.txt")
        [[ $i -eq 0 ]] && continue   # warm-up
        local wall mem user sys
        read -r wall mem user sys <<< "$line"
        times+=("$wall")
        cpus+=("$(awk -v u="$user" -v s="$sys" 'BEGIN { print u + s }')")
        (( mem > rss )) && rss=$mem
    done
    eval "$cleanup"
    local median cpu
    median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    cpu=$(printf '%s\n' "${cpus[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    local rate per_gb
    rate=$(awk -v b="$BYTES" -v s="$median" 'BEGIN { if (s > 0) printf "%.2f", b/s/1e9; else print "-" }')
    per_gb=$(awk -v b="$BYTES" -v c="$cpu" 'BEGIN { if (b > 0) printf "%.2f", c/(b/1e9); else print "-" }')
    [[ "${NO_RATE:-0}" == 1 ]] && rate="-" && per_gb="-"
    ROWS+=("| $label | $median | $rate | $per_gb | $((rss / 1024)) MiB |")
    LAST_MEDIAN=$median
    echo "bench: $label: ${median}s (${rate} GB/s, ${per_gb} CPU s/GB), peak RSS $((rss / 1024)) MiB"
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
    run "\`nembridge export\` of the bf16 import (bf16 out) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-bf16' --out '$DATA/hf-q' && sync"
    local plain_s=$LAST_MEDIAN
    run "\`nembridge export --quantize fp8-block\` ([128, 128] out) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-bf16' --out '$DATA/hf-q' --quantize fp8-block && sync"
    local fp8_s=$LAST_MEDIAN
    run "\`nembridge export --quantize like-source\` of the block-FP8 import (byte-identical to the source) + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-fp8' --out '$DATA/hf-q' --quantize like-source && sync"
    local like_s=$LAST_MEDIAN
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
run '`cp` + `sync` of the file (durable copy)' "$clean_out" bash -c "cp '$SRC' '$DATA/out.safetensors' && sync '$DATA/out.safetensors'"
run '`nembridge reshard` (same layout: read, write, XXH3 per tensor, fsync)' "$clean_out" "$BIN" reshard --hf "$DATA/model" --out "$DATA/out"
run '`nembridge reshard --max-shard-size 250MB` (5 shards + index)' "$clean_out" "$BIN" reshard --hf "$DATA/model" --out "$DATA/out" --max-shard-size 250MB
run 'Python `safetensors` load_file + save_file + fsync' "$clean_out" "$PY" "$ROOT/tools/bench/python_rewrite.py" "$SRC" "$DATA/out.safetensors"
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
    run "durable copy: \`cp -r\` + \`sync\`" "$clean" bash -c "cp -r '$model' '$DATA/copy' && sync"
    local copy_s=$LAST_MEDIAN
    run "\`nembridge import\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' && sync"
    local import_s=$LAST_MEDIAN
    "$BIN" import --hf "$model" --out "$DATA/mc-src" >/dev/null 2>&1 || { rm -rf "$DATA/mc-src"; "$BIN" import --hf "$model" --out "$DATA/mc-src" >/dev/null; }
    run "\`nembridge export\` + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mc-src' --out '$DATA/hf-out' && sync"
    local export_s=$LAST_MEDIAN
    RATIO_NOTE="import $(awk -v a="$import_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')×, export $(awk -v a="$export_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')× the durable copy's wall time."
    run "\`nembridge verify\` HF vs Megatron (reads both)" ":" "$BIN" verify "$model" "$DATA/mc-src"
    if [[ "$layers" == 16 ]]; then
        run "\`nembridge reshard --megatron --tp 4\` + \`sync\`" "$clean" bash -c "'$BIN' reshard --megatron '$DATA/mc-src' --out '$DATA/mc' --tp 4 && sync"
        local reshard_s=$LAST_MEDIAN
        RESHARD_NOTE="reshard to TP=4 $(awk -v a="$reshard_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')× the durable copy's wall time."
        # The legacy per-rank format (--ckpt-format torch): write TP=2 PP=2 from HF, re-shard the
        # torch_dist checkpoint into legacy TP=4, and export the legacy files back to HF.
        run "\`nembridge import --ckpt-format torch --tp 2 --pp 2\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --ckpt-format torch --tp 2 --pp 2 && sync"
        local legacy_import_s=$LAST_MEDIAN
        run "\`nembridge reshard --ckpt-format torch --tp 4\` (torch_dist -> legacy) + \`sync\`" "$clean" bash -c "'$BIN' reshard '$DATA/mc-src' --out '$DATA/mc' --ckpt-format torch --tp 4 && sync"
        local legacy_reshard_s=$LAST_MEDIAN
        rm -rf "$DATA/legacy-src"
        "$BIN" import --hf "$model" --out "$DATA/legacy-src" --ckpt-format torch --tp 2 --pp 2 >/dev/null
        local legacy_bytes
        legacy_bytes=$(du -sb "$DATA/legacy-src" | cut -f1)
        run "\`nembridge export\` of the legacy TP=2 PP=2 checkpoint + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/legacy-src' --out '$DATA/hf-out' && sync"
        local legacy_export_s=$LAST_MEDIAN
        rm -rf "$DATA/legacy-src"
        RESHARD_NOTE="$RESHARD_NOTE Legacy format: import at TP=2 PP=2 $(awk -v a="$legacy_import_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')× (it writes $(awk -v a="$legacy_bytes" -v b="$size" 'BEGIN { printf "%.2f", a/b }')× the model's bytes, the last stage keeping its own copy of the tied embedding: $(awk -v a="$legacy_import_s" -v b="$copy_s" -v w="$legacy_bytes" -v m="$size" 'BEGIN { printf "%.2f", (a/b)/(w/m) }')× per byte written), torch_dist -> legacy TP=4 $(awk -v a="$legacy_reshard_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')×, export of legacy TP=2 PP=2 $(awk -v a="$legacy_export_s" -v b="$copy_s" 'BEGIN { printf "%.2f", a/b }')× the durable copy's wall time."
    fi
    if [[ "$layers" == 16 ]]; then
        run "\`nembridge import --compress zstd:1\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --compress zstd:1 && sync"
        run "\`nembridge import --compress zstd:3\` + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' --compress zstd:3 && sync"
        "$BIN" import --hf "$model" --out "$DATA/mcz" --compress zstd:3 >/dev/null
        local zsize plain
        zsize=$(du -sb "$DATA/mcz/release" | cut -f1)
        plain=$(du -sb "$DATA/mc-src/release" | cut -f1)
        run "\`nembridge export\` of the zstd:3 checkpoint + \`sync\`" "$clean" bash -c "'$BIN' export --megatron '$DATA/mcz' --out '$DATA/hf-out' && sync"
        rm -rf "$DATA/mcz"
        ZSTD_NOTE="zstd:3 checkpoint: $zsize bytes vs $plain uncompressed (ratio $(awk -v a="$plain" -v b="$zsize" 'BEGIN { printf "%.3f", a/b }'))."
    fi
    rm -rf "$DATA/mc-src"
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
    run "\`nembridge import\` of the bf16 model + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$model' --out '$DATA/mc' && sync"
    local plain_s=$LAST_MEDIAN
    run "\`nembridge import\` of block FP8 [128, 128] (dequantized to bf16) + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$DATA/llama-16-fp8' --out '$DATA/mc' && sync"
    local fp8_s=$LAST_MEDIAN
    run "\`nembridge import\` of ModelOpt NVFP4 (dequantized to bf16) + \`sync\`" "$clean" bash -c "'$BIN' import --hf '$DATA/llama-16-nvfp4' --out '$DATA/mc' && sync"
    local nvfp4_s=$LAST_MEDIAN
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
    echo "- Command: \`make bench\` (median of $RUNS runs after one warm-up; page cache warm; each run right after freshly freed memory: see \`prewarm\` in tools/bench.sh)"
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
    echo "Each nembridge run is followed by \`sync\`, like the copy. Targets (issue 5): import and export"
    echo "within 1.25× the durable copy, peak RSS ≤ 256 MiB whatever the model size."
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
