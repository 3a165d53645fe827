# nembridge: the two commands are `make demo` and `make test`; each sets up what it needs.
SWIFT  ?= swift
VENV   := .venv
PYTHON := $(VENV)/bin/python
DEBUG_BIN   := .build/debug/nembridge
RELEASE_BIN := .build/release/nembridge

.PHONY: all deps venv build release test swift-test interop-test demo bench fixtures fuzz clean

all: release

deps:
	@tools/install-system-deps.sh

venv: deps
	@tools/setup-venv.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product nembridge

# Swift tests on the committed fixtures, then the interop tests against real safetensors,
# transformers and Megatron-Core in the pinned venv.
test: deps venv
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	NEMBRIDGE=$(CURDIR)/$(DEBUG_BIN) NEMBRIDGE_ROOT=$(CURDIR) $(PYTHON) -m pytest Tests/interop -q -p no:cacheprovider

swift-test: deps
	$(SWIFT) test

demo: release
	@tools/demo.sh $(RELEASE_BIN)

# A benchmark, not a test: writes BENCHMARKS.md.
bench: release venv
	@tools/bench.sh $(RELEASE_BIN)

# The mutation fuzzer for longer than `make test` runs it (which is a few seconds per input kind):
# NEMBRIDGE_FUZZ_ITERATIONS mutants per target (default 20000), TARGETS, NEMBRIDGE_FUZZ_SEED.
fuzz: deps
	@tools/fuzz.sh

# Regenerate TestCheckpoints/ with the real libraries (the outputs are committed).
fixtures: venv
	@tools/make-fixtures.sh

clean:
	rm -rf .build
