#!/usr/bin/env bash
# Regenerate everything under TestCheckpoints/ with the real libraries (deterministic):
#   tiny HF checkpoints + dtype files (tools/fixtures/make_fixtures.py) and the malformed
#   safetensors corpus with the reference reader's verdicts (tools/make_malformed_corpus.py).
#
#   tools/make-fixtures.sh            # (re)write TestCheckpoints/
#   tools/make-fixtures.sh --check    # regenerate into a temp dir, fail if anything differs
#   tools/make-fixtures.sh NAME ...   # only these fixtures (e.g. llama3-tiny dtypes)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
PY="$ROOT/.venv/bin/python"

"$SCRIPT_DIR/setup-venv.sh" >/dev/null
export PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

if [[ "${1:-}" == "--check" ]]; then
    shift
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PY" "$SCRIPT_DIR/fixtures/make_fixtures.py" --out "$tmp" "$@"
    status=0
    for d in "$tmp"/*; do
        name="$(basename "$d")"
        if ! diff -r "$d" "$ROOT/TestCheckpoints/$name" >/dev/null; then
            echo "make-fixtures: TestCheckpoints/$name differs from a fresh build" >&2
            diff -rq "$d" "$ROOT/TestCheckpoints/$name" >&2 || true
            status=1
        fi
    done
    if [[ $# -eq 0 ]]; then
        "$PY" "$SCRIPT_DIR/make_malformed_corpus.py" --check || status=1
    fi
    [[ $status -eq 0 ]] && echo "make-fixtures: TestCheckpoints matches a fresh build"
    exit $status
fi

"$PY" "$SCRIPT_DIR/fixtures/make_fixtures.py" "$@"
if [[ $# -eq 0 ]]; then
    # Everything else in TestCheckpoints/, each made by the real library it is about.
    "$PY" "$SCRIPT_DIR/make_malformed_corpus.py"
    "$PY" "$SCRIPT_DIR/fixtures/make_super_fixture.py"
    # after the bf16 fixtures they are made from
    "$PY" "$SCRIPT_DIR/fixtures/make_quantized_fixtures.py"
    "$PY" "$SCRIPT_DIR/fixtures/make_dialect_fixtures.py"
    "$SCRIPT_DIR/megatron/make_megatron_fixtures.sh"
    (cd "$ROOT" && "$PY" "$SCRIPT_DIR/make_pickle_corpus.py")
    (cd "$ROOT" && "$PY" "$SCRIPT_DIR/make_zip_corpus.py")
    "$PY" "$SCRIPT_DIR/hybrid/hybrid_keys.py"
    "$PY" "$SCRIPT_DIR/hybrid/super_keys.py"
    python3 "$SCRIPT_DIR/fixture_hashes.py" "$ROOT/TestCheckpoints/pickles" "$ROOT/TestCheckpoints/zips" \
        "$ROOT/TestCheckpoints/hybrid-keys" "$ROOT/TestCheckpoints/nemotron3-super-tiny"
fi
du -sh "$ROOT/TestCheckpoints"
