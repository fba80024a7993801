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

.PHONY: install gpu swap-ort demo test test-unit test-integration proto bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]' $(TORCH)
	if [ -f $(VENV)/.gpu ]; then $(MAKE) --no-print-directory swap-ort; fi
	touch $@

# On a machine with an NVIDIA GPU: ONNX Runtime's CUDA build (onnxruntime-gpu) in place of its
# CPU build. Both install the same `onnxruntime` package and, where both are installed, the CPU
# build is the one imported, without the CUDA provider; so the CPU build goes and the CUDA one
# comes in alone (again after every reinstall, while .venv/.gpu exists), with CUDA 13's runtime,
# cuBLAS and cuDNN 9 as nvidia-* wheels (the backend loads them: load_cuda_libraries). Then
# `make test` runs tests/gpu too, and `python -m pseudostream.benchmarks.cuda_bench` measures.
gpu: install
	touch $(VENV)/.gpu
	$(MAKE) --no-print-directory swap-ort

swap-ort:
	$(BIN)/python -m pip uninstall -q -y onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install -q 'onnxruntime-gpu[cuda,cudnn]' 'nvidia-cublas>=13,<14'
	$(BIN)/python -c "import onnxruntime as o; p = o.get_available_providers(); print('onnxruntime', o.__version__, p); assert 'CUDAExecutionProvider' in p"

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
