#!/usr/bin/env bash
# Longer runs of nembridge's mutation fuzzer (Tests/NembridgeKitTests/Fuzz/), one target at a time.
#
#   tools/fuzz.sh                      # every target, 20000 mutants each, seeded by today's date
#   NEMBRIDGE_FUZZ_ITERATIONS=100000 TARGETS="pickle zip" NEMBRIDGE_FUZZ_SEED=7 tools/fuzz.sh
#
# NEMBRIDGE_FUZZ_SECONDS bounds each target's run (default: none). `swift test` runs the same
# fuzzer with a small fixed budget on every run; this script is for exploring further.
#
# A trap ends the test process, leaving the input that caused it in
# $NEMBRIDGE_FUZZ_CRASH_DIR/<target>.current.bin (its fixture in .current.context); the script
# copies it to Tests/FuzzCorpus/<target>/<context>--crash-seed<seed>.bin, which every `swift test`
# replays. Rename the file after what it found, fix the reader, and commit both. Mutants that end
# in an untyped or multi-line error, or take too long, are saved beside the crash file and named
# in the test's output.
set -uo pipefail
cd "$(dirname "$0")/.."

iterations=${NEMBRIDGE_FUZZ_ITERATIONS:-20000}
seed=${NEMBRIDGE_FUZZ_SEED:-$(date +%Y%m%d)}
crash_dir=${NEMBRIDGE_FUZZ_CRASH_DIR:-${TMPDIR:-/tmp}/nembridge-fuzz}
targets=${TARGETS:-safetensors pickle zip dcp-metadata distcp config legacy}

swift build --build-tests || exit 1
mkdir -p "$crash_dir"
status=0
for target in $targets; do
    log="$crash_dir/$target.log"
    rm -f "$crash_dir/$target.current.bin" "$crash_dir/$target.current.context"
    echo "fuzz: $target: $iterations mutants, seed $seed (log: $log)"
    NEMBRIDGE_FUZZ_ITERATIONS=$iterations NEMBRIDGE_FUZZ_SEED=$seed NEMBRIDGE_FUZZ_CRASH_DIR=$crash_dir \
        NEMBRIDGE_FUZZ_TARGETS=$target swift test --skip-build --filter MutationFuzzTests >"$log" 2>&1
    code=$?
    grep -E '^fuzz |recorded an issue|↳ '"$target"':' "$log" | grep -v 'Testing Library' || true
    if [ $code -ne 0 ] && ! grep -q 'Test run with' "$log"; then
        # No summary line: the process died inside a reader.
        context=$(cat "$crash_dir/$target.current.context" 2>/dev/null | tr '/' '+')
        name="${context:+$context--}crash-seed$seed.bin"
        mkdir -p "Tests/FuzzCorpus/$target"
        cp "$crash_dir/$target.current.bin" "Tests/FuzzCorpus/$target/$name"
        echo "fuzz: $target CRASHED; the input is now Tests/FuzzCorpus/$target/$name"
        tail -n 20 "$log"
        status=1
    elif [ $code -ne 0 ]; then
        status=1
    fi
done
exit $status
