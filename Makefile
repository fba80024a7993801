# pseudostream: `make demo` runs the main job on the embedded teacher, `make test` runs the tests.
# Both install what they need into .venv first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the local CPU wheel; any other spec pulls gigabytes of CUDA wheels.
TORCH  := torch==2.13.0
# The [triton] extra brings tritonclient and the tritonserver bundled in nvidia-pytriton
# (CPU, python backend), which the tests start themselves.
EXTRAS ?= dev,triton
BACKEND ?= onnxruntime
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: install demo test test-unit test-integration proto bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]' $(TORCH)
	touch $@

demo: install
	$(BIN)/pseudostream demo --backend $(BACKEND) $(if $(REPORT),--report $(REPORT))

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

# Performance side by side (benchmarks/bench.py): writes bench-report.json and
# benchmarks/bench-plot.png; about 17 minutes on 2 cores (--repeats 1: about 11). BENCH_ARGS=--quick for a smoke run.
bench:
	$(MAKE) install EXTRAS=$(EXTRAS),bench
	$(BIN)/python -m pseudostream.benchmarks.bench $(BENCH_ARGS)

# Regenerate the committed gRPC stubs from proto/pseudostream/v1/*.proto.
proto: install
	$(BIN)/python -m pseudostream.proto.gen

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache demo-report.json bench-report.json
