#!/usr/bin/env bash
# Real-scale planning for `make bench`: sparse Hugging Face folders at the real dimensions of the
# published models (tools/realscale/make_sparse.py: real headers, data as file holes), planned by
# `import --dry-run` at the training layouts people use, and `inspect`; then the Megatron side:
# the largest model imported for real at its training layout (a 1.1 TB checkpoint whose data
# stays holes), and that checkpoint's `export`, `reshard` dry runs and `inspect`. Writes (or
# replaces) its section of BENCHMARKS.md; progress on stderr.
#
#   tools/bench/realscale.sh NEMBRIDGE DATA_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$1"
DATA="$2/realscale"
OUT="$ROOT/BENCHMARKS.md"
if [[ ! -d "$DATA" ]]; then
    echo "bench: writing sparse real-scale folders into $DATA" >&2
    python3 "$ROOT/tools/realscale/make_sparse.py" "$DATA" --all >&2
fi

# measure MODEL LABEL ARGS...: one row, best wall time of 3 runs and their peak RSS; MODEL's
# sparse Hugging Face folder gives the tensor and byte counts.
ROWS=()
measure() {
    local model="$1" label="$2"; shift 2
    local best="" rss=0
    for _ in 1 2 3; do
        /usr/bin/time -o "$DATA/time.txt" -f "%e %M" "$BIN" "$@" >/dev/null 2>"$DATA/stderr.txt" \
            || { cat "$DATA/stderr.txt" >&2; echo "bench: $model $label failed" >&2; exit 1; }
        local line; line=$(tail -1 "$DATA/time.txt")
        local t=${line% *} m=${line#* }
        if [[ -z "$best" ]] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
        (( m > rss )) && rss=$m
    done
    local tensors bytes
    read -r tensors bytes < <(python3 "$ROOT/tools/realscale/check_sparse.py" "$DATA/$model" --json \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d, list) else d; print(d["tensors"], d["bytes"])')
    local verdict="✓"
    awk -v t="$best" -v m="$rss" 'BEGIN { exit !(t <= 2.0 && m <= 131072) }' || verdict="✗"
    ROWS+=("$(printf '| %s | %s | %s | %s | %s | %s MiB | %s |' "$model" "$tensors" \
        "$(awk -v b="$bytes" 'BEGIN { printf "%.1f GB", b / 1e9 }')" "$label" "$best" "$((rss / 1024))" "$verdict")")
    echo "bench: $model $label: ${best}s, $((rss / 1024)) MiB" >&2
}

out="$DATA/out"
rm -rf "$out"
for model in $(ls "$DATA" | grep -v '\.txt$' | sort); do
    [[ -f "$DATA/$model/config.json" ]] || continue
    measure "$model" "inspect" inspect "$DATA/$model"
    measure "$model" "import --dry-run, TP=1" import --hf "$DATA/$model" --out "$out" --dry-run
done
# The published training layouts of the largest models.
for model in nemotron3-super-120b-a12b nemotron3-ultra-550b-a55b; do
    layers=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(c.get('num_hidden_layers') or len(c.get('layers_block_type') or c['hybrid_override_pattern']))" "$DATA/$model/config.json")
    measure "$model" "import --dry-run, TP=8 EP=8" import --hf "$DATA/$model" --out "$out" --dry-run --tp 8 --ep 8
    measure "$model" "import --dry-run, TP=4 EP=8" import --hf "$DATA/$model" --out "$out" --dry-run --tp 4 --ep 8
    # PP=3: stages as even as Megatron-LM's first/last-stage flags allow.
    first=$(( layers - 2 * (layers / 3) )); last=$(( layers / 3 ))
    measure "$model" "import --dry-run, TP=1 PP=3 EP=8" import --hf "$DATA/$model" --out "$out" --dry-run --pp 3 --ep 8 \
        --decoder-first-pipeline-num-layers "$first" --decoder-last-pipeline-num-layers "$last"
done
measure llama31-405b "import --dry-run, TP=8 PP=16 (7 + 14 × 8 + 7 layers)" import --hf "$DATA/llama31-405b" --out "$out" --dry-run \
    --tp 8 --pp 16 --decoder-first-pipeline-num-layers 7 --decoder-last-pipeline-num-layers 7

# The Megatron side: the largest model imported at its training layout for real (every byte move
# run, the data holes stay holes), then planned from that checkpoint.
ultra=nemotron3-ultra-550b-a55b
# REALSCALE_SCRATCH: where the 1.1 TB (apparent) checkpoint goes, DATA by default. Some file
# systems refuse it (one ext4 volume gave ENOSPC at fsync with 78 GB free: 3 GB of written data
# scattered over 500 GB sparse files); the run is then repeated on /dev/shm. The row names the
# file system written.
scratch="${REALSCALE_SCRATCH:-$DATA}"
real_import() {
    mc="$1/$ultra-tp8-ep8"
    used="$1"
    rm -rf "$mc"
    echo "bench: importing $ultra at TP=8 EP=8 into $mc (a real run)" >&2
    /usr/bin/time -o "$DATA/time.txt" -f "%e %M %U %S" "$BIN" import --hf "$DATA/$ultra" --out "$mc" --tp 8 --ep 8 \
        >/dev/null 2>"$DATA/stderr.txt"
}
if ! real_import "$scratch"; then
    cat "$DATA/stderr.txt" >&2
    if grep -q "No space left on device" "$DATA/stderr.txt" && [[ -d /dev/shm ]]; then
        rm -rf "$mc"
        echo "bench: $scratch refused the sparse checkpoint; repeating the real import on /dev/shm (tmpfs)" >&2
        real_import /dev/shm || { cat "$DATA/stderr.txt" >&2; echo "bench: the real import failed" >&2; exit 1; }
    else
        echo "bench: the real import failed" >&2; exit 1
    fi
fi
read -r wall rss user system < <(tail -1 "$DATA/time.txt")
where=", written to $(df -T "$used" | awk 'NR==2 {print $2}')"
stored=$(du -sb --apparent-size "$mc" | cut -f1); written=$(du -sB1 "$mc" | cut -f1)
IMPORT_ROW="| \`import --tp 8 --ep 8\` of $ultra (a real run, 1 run$where) | $wall | $(awk -v u="$user" -v s="$system" 'BEGIN { printf "%.1f", u + s }') | $((rss / 1024)) MiB | $(awk -v b="$stored" 'BEGIN { printf "%.1f GB", b / 1e9 }') ($(awk -v b="$written" 'BEGIN { printf "%.1f GB", b / 1e9 }') on disk) |"
echo "bench: real import: ${wall}s, $((rss / 1024)) MiB" >&2
measure "$ultra" "Megatron TP=8 EP=8: inspect" inspect "$mc"
measure "$ultra" "Megatron TP=8 EP=8: export --dry-run" export --megatron "$mc" --out "$out" --dry-run
measure "$ultra" "Megatron TP=8 EP=8: reshard --dry-run to TP=1" reshard --megatron "$mc" --out "$out" --dry-run --tp 1
measure "$ultra" "Megatron TP=8 EP=8: reshard --dry-run to TP=4 EP=8" reshard --megatron "$mc" --out "$out" --dry-run --tp 4 --ep 8
# The same checkpoint with its .metadata as torch's own pickler writes it (Megatron-Core saves
# through it: every object, dict and tuple memoized, 6.4 million memo entries at this size, where
# nembridge's writer stores none). Data files linked, not copied.
pickled="$scratch/$ultra-tp8-ep8-torch-pickle"
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    rm -rf "$pickled"
    cp -as "$(realpath "$mc")" "$pickled"
    for metadata in "$pickled"/*/.metadata; do
        rm "$metadata"
        "$ROOT/.venv/bin/python" -c 'import pickle, sys, torch.distributed.checkpoint
pickle.dump(pickle.load(open(sys.argv[1], "rb")), open(sys.argv[2], "wb"))' "$mc/$(basename "$(dirname "$metadata")")/.metadata" "$metadata"
    done
    measure "$ultra" "Megatron TP=8 EP=8, .metadata pickled by torch: inspect" inspect "$pickled"
    measure "$ultra" "Megatron TP=8 EP=8, .metadata pickled by torch: reshard --dry-run to TP=4 EP=8" \
        reshard --megatron "$pickled" --out "$out" --dry-run --tp 4 --ep 8
    rm -rf "$pickled"
fi
rm -rf "$mc" "$DATA/time.txt" "$DATA/stderr.txt"

{
    echo "## Real-scale planning"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); command: \`make bench\` (tools/bench/realscale.sh); load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "- Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
    echo
    echo "Sparse Hugging Face folders at the real dimensions of the published models"
    echo "(tools/realscale/make_sparse.py: the published config.json field sets, real safetensors"
    echo "headers, tensor data as file holes), planned without moving data: \`inspect\` and"
    echo "\`import --dry-run\` at TP=1 and at the published training layouts; then the largest imported"
    echo "for real at TP=8 EP=8 and its Megatron checkpoint planned by \`export\` and \`reshard\`;"
    echo "the last rows (with the test venv's torch) read it with its \`.metadata\` re-pickled by torch's own pickler, as"
    echo "a checkpoint Megatron-Core saved has it (every object, dict and tuple memoized)."
    echo "Best of 3 runs, peak RSS of the 3. Target (issue 12): every plan ≤ 2 s and ≤ 128 MiB, a"
    echo "real run ≤ 256 MiB. The tests check the same plans for correctness (totals equal the headers,"
    echo "every chunk accounted for); this measures them."
    echo
    echo "| model | tensors | bytes | command, layout | wall s | peak RSS | ≤ 2 s, ≤ 128 MiB |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "| real run | wall s | CPU s | peak RSS | checkpoint written |"
    echo "| --- | --- | --- | --- | --- |"
    echo "$IMPORT_ROW"
} | python3 "$ROOT/tools/bench/write_section.py" "$OUT" realscale
echo "bench: wrote the realscale section of $OUT" >&2
