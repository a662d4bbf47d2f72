# One-command entry points. `make help` lists them.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
PY     := $(BIN)/python
IMAGE  ?= ondevice-llm:latest
ARGS   ?=
GPU_FLAG := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo --gpus all)

.PHONY: help setup repro test test-all chat bench bench-llama levers register lint docker-build docker-run docker-shell clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

setup: $(BIN)/activate  ## create .venv and install the pinned dependencies (CPU)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	@test -d .dvc || $(BIN)/dvc init -q $$(git rev-parse --git-dir >/dev/null 2>&1 || echo --no-scm)
	@$(BIN)/dvc config core.autostage true

repro:  ## run the pipeline (`dvc repro`); reruns only what changed
	PATH=$(BIN):$$PATH $(BIN)/dvc repro $(ARGS)

test:  ## the default test suite (CI runs this; under ~20 min on 2 cores)
	PATH=$(BIN):$$PATH $(PY) -m pytest -q $(ARGS)

test-all:  ## every test, the slow end-to-end ones too
	PATH=$(BIN):$$PATH $(PY) -m pytest -q -m "slow or not slow" $(ARGS)

chat:  ## ask the shipped model: make chat PROMPT="..." [ADAPTER=travel|cooking|none]
	$(PY) scripts/chat.py --adapter $(or $(ADAPTER),travel) "$(or $(PROMPT),What should I pack for three days in Lisbon in April?)"

bench:  ## rerun only the benchmark stage
	PATH=$(BIN):$$PATH $(BIN)/dvc repro -s benchmark

levers:  ## measure the CPU-speed levers (accuracy level, head block, spinning, LoRA placement) -> reports/levers.json
	$(PY) scripts/levers.py $(ARGS)

# llama.cpp's native (AVX-512/AMX) build segfaulted on multi-token prompts on our test box: AVX2 only.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
bench-llama:  ## build llama-cpp-python (minutes) and benchmark llama.cpp beside our model, as an experiment
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install -q -r requirements-peer.txt
	PATH=$(BIN):$$PATH $(BIN)/dvc exp run -S benchmark.llama_cpp=true $(ARGS)

register:  ## manifest (register stage), then upload to Azure ML: make register ARGS=--dry-run | --next-version
	PATH=$(BIN):$$PATH $(BIN)/dvc repro -s register
	$(PY) scripts/azure_register.py $(ARGS)

lint:  ## lint the Dockerfile (hadolint) and the Python (ruff), if installed
	$(BIN)/hadolint --config .hadolint.yaml docker/Dockerfile
	$(BIN)/ruff check ondevice scripts tests

docker-build:  ## build the CUDA 12 image
	docker build -f docker/Dockerfile -t $(IMAGE) .

docker-run:  ## run `dvc repro $(ARGS)` in the container on this checkout (GPUs when present)
	docker run --rm $(GPU_FLAG) -v $(CURDIR):/work -v ondevice-cache:/cache -w /work $(IMAGE) dvc repro $(ARGS)

docker-shell:  ## a shell in the container
	docker run --rm -it $(GPU_FLAG) -v $(CURDIR):/work -v ondevice-cache:/cache -w /work $(IMAGE) bash

clean:  ## remove pipeline outputs (not the DVC cache)
	rm -rf models metrics plots reports data/prepared
