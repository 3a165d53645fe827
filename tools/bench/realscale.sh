#!/usr/bin/env bash
# Real-scale planning for `make bench`: sparse Hugging Face folders at the real dimensions of the
# published models (tools/realscale/make_sparse.py: real headers, data as file holes), planned by
# `import --dry-run` at the training layouts people use, and `inspect`. Prints Markdown rows
# (time and peak RSS of each command) on stdout; progress on stderr.
#
#   tools/bench/realscale.sh NEMBRIDGE DATA_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$1"
DATA="$2/realscale"
if [[ ! -d "$DATA" ]]; then
    echo "bench: writing sparse real-scale folders into $DATA" >&2
    python3 "$ROOT/tools/realscale/make_sparse.py" "$DATA" --all >&2
fi

# measure MODEL LABEL ARGS...: one row, best wall time of 3 runs and their peak RSS.
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
    printf '| %s | %s | %s | %s | %s | %s MiB | %s |\n' "$model" "$tensors" \
        "$(awk -v b="$bytes" 'BEGIN { printf "%.1f GB", b / 1e9 }')" "$label" "$best" "$((rss / 1024))" "$verdict"
    echo "bench: $model $label: ${best}s, $((rss / 1024)) MiB" >&2
}

out="$DATA/out"
rm -rf "$out"
echo "| model | tensors | bytes | command, layout | wall s | peak RSS | ≤ 2 s, ≤ 128 MiB |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
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
rm -f "$DATA/time.txt" "$DATA/stderr.txt"
