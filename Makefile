# deepfuse — two commands on a fresh machine: `make demo` and `make test`.
# Everything runs in .venv (created on first use). Where torch, triton and pytest are already importable
# (a GPU machine with no package registry), the venv reuses them and installs nothing from the network.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.deepfuse-installed
PYTEST := $(PY) -m pytest -p no:cacheprovider
# Real sample files of every dataset (never copied into the project); tests that read them skip without them.
# Looked for beside this checkout, then beside the repository it was cloned from (a CI clone in a scratch folder).
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
export DEEPFUSE_REALDATA ?= $(firstword $(wildcard $(CURDIR)/../shared/realdata $(ORIGIN)/../shared/realdata))

.PHONY: install build test test-cpu compile-gate test-gpu bench demo lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py CMakeLists.txt requirements-dev.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch, triton, pytest, pybind11, cmake, matplotlib, tqdm, sklearn, PIL, tokenizers, numba, gymnasium, cutlass_library" \
	  2>/dev/null || { \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" && \
	  $(PY) -m pip install -q -c .ci/constraints.txt -r requirements-dev.txt; }
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $(STAMP)

build: install  ## rebuild deepfuse._C after editing csrc/
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .

test: install lint  ## lint (seconds), then the CPU tests and, in parallel on the other core, the sm_90 compile gates
	$(MAKE) -j2 --output-sync=target test-cpu compile-gate

# Single-threaded torch: the CPU tests' tensors are tiny, and the compile gate has the other core.
test-cpu: install  ## reference checks, Triton kernels through the interpreter, _C build and errors, the models
	OMP_NUM_THREADS=1 $(PYTEST) -q -m "not gpu and not slow" tests

compile-gate: install  ## every Triton launch compiled for sm_90 and every _C kernel against the H200's limits (tables)
	$(PY) -m tests.compile_gate
	$(PY) -m tests.cuda_resources

test-gpu: install  ## GPU tests (needs a CUDA device): both kernels, every dtype, large shapes
	$(PYTEST) -q -m gpu tests

bench: install  ## every op's benchmark and the host-overhead table; results under benchmarks/results/<gpu>/
	$(PY) -m deepfuse bench all
	$(PY) -m deepfuse bench overhead

demo: install  ## the main job: train the digits CNN (fused layers) on the built-in digits; run folder under runs/demo/
	$(PY) -m deepfuse demo

lint: install  ## ruff's lint rules and its formatter (check only: `ruff format .` fixes)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf build python/deepfuse/_C*.so *.egg-info python/*.egg-info
