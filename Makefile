# Everything runs from a project-local virtual environment that these targets create.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit protos docs bench bench-quick fuzz soak faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bench.demo

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# Two workers, one test file each at a time (--dist loadfile): the suite mostly waits on sidecar processes,
# so it takes about half as long; every test uses its own ports and directories.
test: lint typecheck
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/property

# Admin API code in sidecar/admin/v1/ from protos/sidecar/v1/admin.proto. sidecar/admin/codegen.py runs
#   python -m grpc_tools.protoc -Isidecar/admin/v1=protos/sidecar/v1 --python_out=. --pyi_out=. \
#       --grpc_python_out=. protos/sidecar/v1/admin.proto
# The -I mapping makes protoc see the file as sidecar/admin/v1/admin.proto, so the modules land there and
# import each other as sidecar.admin.v1 with no post-processing. tests/unit/test_protos_fresh.py fails
# when the committed code is stale.
protos: $(STAMP)
	$(BIN)/python -m sidecar.admin.codegen

# docs/configuration.md from the config schema's Structs and their comments (sidecar/docgen.py): run it after
# adding or changing a config key or merging a branch. Then the documentation tests: they name every key
# without a description, and every metric family, log event or alert that docs/metrics.md,
# docs/troubleshooting.md or docs/runbooks.md (written by hand) lack, and every broken link.
docs: $(STAMP)
	@status=0; $(BIN)/python -m sidecar.docgen || status=1; \
	$(BIN)/python -m pytest -q --tb=short tests/unit/test_docs.py tests/unit/test_doc_links.py \
		|| status=1; exit $$status

# Hostile input (not part of `make test`, which runs the same suites with few examples): the receiver,
# codec and config fuzz suites with FUZZ_EXAMPLES hypothesis examples per test (default 300), then
# coverage-guided atheris on the codec for ATHERIS_RUNS inputs (default 300000) when atheris is installed.
FUZZ_EXAMPLES ?= 300
ATHERIS_RUNS  ?= 300000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/integration/test_fuzz_receivers.py \
		tests/property/test_config_fuzz.py tests/unit/test_codec.py
	@if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
		ATHERIS_RUNS=$(ATHERIS_RUNS) $(BIN)/python -m pytest -q tests/unit/test_codec_atheris.py; \
	else echo "atheris not installed (pip install atheris): skipping the coverage-guided codec fuzzer"; fi

# Soak (not part of `make test`): SOAK_SECONDS of steady SDK load while the fake Collector injects random
# faults; checks nothing acknowledged is lost and RSS/fds/threads stay flat. The report replaces the
# "Soak" section of bench/RESULTS.md.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS) --results bench/RESULTS.md

# Faults (bench/faults.py, not part of `make test`; the disk-full rows need root to mount a tmpfs): full
# disk, black-hole and slow upstreams, a queue WAL cut while running, SIGSTOP, a long outage's backlog
# (FAULTS_BACKLOG_SECONDS, default 300 as in issue 16: about 9 minutes in all; 60 for a quicker look),
# an upstream answering partial success, and a full disk with the queue's memory fallback full too.
# The table replaces the "Faults" section of bench/RESULTS.md.
FAULTS_BACKLOG_SECONDS ?= 300
faults: $(STAMP)
	$(BIN)/python -m bench.faults --backlog-seconds $(FAULTS_BACKLOG_SECONDS) --results bench/RESULTS.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Benchmarks (bench/run.py): throughput (with a rotel peer row), added latency, Collector outage, SIGKILL,
# memory and CPU-at-a-steady-rate (sidecar vs rotel at 10,000 spans/s) scenarios, side by side with a
# baseline measured in the same run. `bench` (about 10 minutes on a 2-core machine)
# writes bench/RESULTS.md, results.json, outage.png and memory.png; `bench-quick` (about 3 minutes) writes
# bench/RESULTS-quick.md and friends (git-ignored). One scenario: python -m bench.run throughput [--quick].
bench: $(STAMP)
	$(BIN)/python -m bench.run all

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run all --quick
