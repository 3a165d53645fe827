#!/usr/bin/env bash
# One conversion spread over 1, 2 and 4 processes on this machine (started with --rank/--world-size
# as a launcher would), import and export of a ~1 GB+ model: wall time of the whole job, and the
# bytes each process wrote. Writes (or replaces) its section of BENCHMARKS.md.
#   tools/bench/jobs.sh BIN DATA
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$1"
DATA="$2"
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/BENCHMARKS.md"
MODEL="$DATA/llama-16"
RUNS="${BENCH_RUNS:-3}"
WORKERS=4   # the file layout (4 .distcp files); the same for every process count

if [[ ! -f "$MODEL/config.json" ]]; then
    echo "bench: generating $MODEL"
    "$PY" "$ROOT/tools/bench/make_llama_model.py" "$MODEL"
fi
SIZE=$(du -sb "$MODEL" | cut -f1)
BYTES=$SIZE
source "$ROOT/tools/bench/prewarm.sh"
rm -rf "$DATA/job-src"
"$BIN" import --hf "$MODEL" --out "$DATA/job-src" --workers "$WORKERS" >/dev/null

# job N CMD...: starts N processes (ranks 0..N-1), waits for all, prints "wall peak_rss_kib shares"
job() {
    local n="$1"; shift
    local start end pids=() rss=0 shares=()
    start=$(date +%s.%N)
    for r in $(seq 0 $((n - 1))); do
        if [[ $n -gt 1 ]]; then
            /usr/bin/time -o "$DATA/job-time.$r" -f "%M" "$@" --rank "$r" --world-size "$n" --job-id "bench-$n" \
                >"$DATA/job-out.$r" 2>"$DATA/job-err.$r" &
        else
            /usr/bin/time -o "$DATA/job-time.$r" -f "%M" "$@" >"$DATA/job-out.$r" 2>"$DATA/job-err.$r" &
        fi
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { cat "$DATA"/job-err.* >&2; echo "bench: job of $n failed" >&2; exit 1; }; done
    sync
    end=$(date +%s.%N)
    for r in $(seq 0 $((n - 1))); do
        local m
        m=$(tail -1 "$DATA/job-time.$r")
        (( m > rss )) && rss=$m
        if [[ $n -gt 1 ]]; then
            shares+=("$(grep -o 'its share is [0-9]* of [0-9]* file(s), [0-9]* of' "$DATA/job-err.$r" | awk '{print $4 " files " $8}')")
        fi
    done
    echo "$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }') $((rss / 1024)) ${shares[*]:-all}"
}

ROWS=()
bench() {
    local label="$1" out="$2"; shift 2
    local n
    for n in 1 2 4; do
        local walls=() line rss shares
        for i in $(seq 0 "$RUNS"); do
            rm -rf "$out" "$(dirname "$out")/.$(basename "$out")".nembridge-*
            prewarm
            line=$(job "$n" "$@" --out "$out")
            [[ $i -eq 0 ]] && continue
            read -r wall rss shares <<< "$line"
            walls+=("$wall")
        done
        rm -rf "$out"
        local median
        median=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        local per
        per=$(echo "$shares" | sed -E 's/([0-9]+) files ([0-9]+)/\1 files, \2 bytes;/g; s/;$//')
        ROWS+=("| $label | $n | $median | $(awk -v b="$SIZE" -v s="$median" 'BEGIN { printf "%.2f", b/s/1e9 }') | $rss MiB | $per |")
        echo "bench: $label, $n process(es): ${median}s, peak RSS per process $rss MiB ($per)"
    done
}
bench "\`import --workers $WORKERS\` + \`sync\`" "$DATA/job-out" "$BIN" import --hf "$MODEL" --workers "$WORKERS"
bench "\`export\` + \`sync\`" "$DATA/job-out" "$BIN" export --megatron "$DATA/job-src"
rm -rf "$DATA/job-src" "$DATA"/job-time.* "$DATA"/job-out.* "$DATA"/job-err.*

{
    echo "## One conversion across processes"
    echo
    echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); command: \`make bench\` (tools/bench/jobs.sh; median of $RUNS runs after one warm-up)"
    echo "- Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(df -T "$DATA" | awk 'NR==2 {print $2}') file system, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; model: the Llama-3.2-1B-shaped 16-layer bf16 folder above, $SIZE bytes"
    echo
    echo "N processes started at once with \`--rank K --world-size N\` (what srun, torchrun or mpirun set in"
    echo "the environment), each writing its byte-balanced share of the output files; the wall time is"
    echo "the whole job's, to the last process's exit, then \`sync\`. The outputs are byte-identical"
    echo "whatever N (the tests prove it). Each process runs its own I/O workers (2 by default), so on"
    echo "this one-disk, 2-core machine a gain from N comes from overlapping reads, writes and fsyncs"
    echo "(the model fits the page cache), not from more bandwidth: **this is disk- and core-bound**."
    echo "The point of N processes is N nodes, each with its own bandwidth to a parallel file system."
    echo
    echo "| what | processes | wall s | GB/s | peak RSS per process | each process wrote |"
    echo "| --- | --- | --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
} | python3 "$ROOT/tools/bench/write_section.py" "$OUT" jobs
echo "bench: wrote the jobs section of $OUT"
