# One-command entry points. `make help` lists them.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
PY     := $(BIN)/python
ARGS   ?=

.PHONY: help setup setup-cuda-serve repro repro-full repro-gpu repro-lab test test-all chat bench bench-llama adapter-cost levers register lint \
        docker-base docker-build docker-run docker-shell docker-test clean

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

setup-cuda-serve:  ## on a GPU machine, after setup: onnxruntime-gpu and the CUDA serving runtime (requirements-cuda-serve.txt)
	$(PY) -m pip install -q onnxruntime-gpu==$$(sed -n 's/^onnxruntime==\([^ #]*\).*/\1/p' requirements.txt)
	$(PY) -m pip install -q --no-deps --target $(VENV)/og-cuda-serve -r requirements-cuda-serve.txt

repro:  ## run the pipeline (`dvc repro`); reruns only what changed; stage times -> metrics/repro.json
	PATH=$(BIN):$$PATH $(PY) scripts/timed_repro.py $(ARGS)

.PHONY: plots
plots:  ## dvc plots show, viewable offline (vendored vega, .dvc/plots/offline) -> dvc_plots/index.html
	$(BIN)/dvc plots show $(ARGS)

test:  ## the default test suite (CI runs this; 8-12 min on 2 cores; prints its 15 slowest)
	PATH=$(BIN):$$PATH $(PY) -m pytest -q --durations=15 $(ARGS)

test-all:  ## every test, the slow end-to-end ones too
	PATH=$(BIN):$$PATH $(PY) -m pytest -q -m "slow or not slow" $(ARGS)

chat:  ## ask the shipped model: make chat PROMPT="..." [ADAPTER=travel|cooking|none]
	$(PY) scripts/chat.py --adapter $(or $(ADAPTER),travel) "$(or $(PROMPT),What should I pack for three days in Lisbon in April?)"

bench:  ## rerun only the benchmark stage
	PATH=$(BIN):$$PATH $(BIN)/dvc repro -s benchmark

adapter-cost:  ## where an adapter's decode time goes (onnxruntime profile, host vs GPU feeds) -> reports/adapter_cost.json
	$(PY) studies/adapter_cost.py $(ARGS)

levers:  ## measure the CPU-speed levers (accuracy level, head block, spinning, LoRA placement) -> reports/levers.json
	$(PY) studies/levers.py $(ARGS)

# The llama.cpp peer, built for the CPU it runs on: AVX-512 with VNNI and BF16 where the CPU has them,
# else AVX2. Not GGML_NATIVE: on an Intel Xeon with AMX it segfaulted on the first multi-token prompt,
# so AMX stays off (README "Measured here"). CPU_FLAGS="flags: avx2 ..." builds for another CPU.
CPU_FLAGS   ?= $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
cpu_has      = $(filter $(1),$(CPU_FLAGS))
LLAMA_CONVERTER := .cache/llama.cpp/convert_hf_to_gguf.py
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AVX2=ON \
  $(if $(call cpu_has,avx512f),-DGGML_AVX512=ON,-DGGML_AVX512=OFF) \
  $(if $(call cpu_has,avx512_vnni),-DGGML_AVX512_VNNI=ON) $(if $(call cpu_has,avx512_bf16),-DGGML_AVX512_BF16=ON)
bench-llama: llama-cpp  ## build llama-cpp-python (minutes) and benchmark llama.cpp beside our model, as an experiment
	PATH=$(BIN):$$PATH $(BIN)/dvc exp run -S benchmark.llama_cpp=true $(ARGS)

.PHONY: llama-cpp
llama-cpp: $(LLAMA_CONVERTER)  # the peer's two tools: llama-cpp-python built for this CPU, and the converter
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install -q -r requirements-peer.txt

# llama.cpp's own converter (convert_hf_to_gguf.py, conversion/, gguf-py/) from the same sdist that pip builds
$(LLAMA_CONVERTER): requirements-peer.txt
	mkdir -p .cache/llama.cpp
	$(PY) -m pip download -q --no-deps --no-binary :all: -d .cache $$(grep -m1 '^llama-cpp-python==' requirements-peer.txt | cut -d' ' -f1)
	tar -xzf .cache/llama_cpp_python-*.tar.gz -C .cache/llama.cpp --strip-components=3 --wildcards \
	  '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/conversion' '*/vendor/llama.cpp/gguf-py'
	touch $@

# The GPU profile (README "GPU path"): every stage on CUDA, on a random-init model of Phi-3.5-mini's
# exact shape, two adapters as in the Olive lab; give real weights with
# ARGS="-S model.source=microsoft/Phi-3.5-mini-instruct".
GPU_PROFILE := -S model.source=random:phi-3.5-mini -S '~adapters.garden' -S quantize.device=cuda -S finetune.device=cuda \
  -S finetune.batch_size=4 -S finetune.seq_len=512 -S finetune.r=64 -S finetune.alpha=128 \
  -S 'finetune.target_modules=[qkv_proj]' -S 'optimize.lora_targets=[qkv_proj]' -S optimize.provider=cuda -S optimize.auto_level_rows=8 -S evaluate.device=cuda -S evaluate.guard_rows=8 -S 'reference.algorithms=[]' \
  -S optimize.cuda_graph=true -S benchmark.builder_reference=true -S benchmark.profile=false
repro-full:  ## the default pipeline plus onnxruntime's per-node decode profile (benchmark.profile), as an experiment
	PATH=$(BIN):$$PATH $(BIN)/dvc exp run -S benchmark.profile=true $(ARGS)

repro-gpu:  ## the whole pipeline on one CUDA GPU (Phi-3.5-mini-shaped; ARGS adds or overrides -S), each stage timed -> reports/gpu/
	PATH=$(BIN):$$PATH $(PY) scripts/timed_repro.py --exp --metrics reports/gpu/repro.json \
	  --stages reports/gpu/stage_seconds.json $(GPU_PROFILE) $(ARGS)

# The Olive lab's product at its own scale (README "The lab at its own scale"): Phi-3.5-mini-shaped,
# AWQ and LoRA on the GPU, built, evaluated and benchmarked for the CPU, llama.cpp Q4_0 / Q4_K_M of the
# same float base in the same rounds; two adapters (switching needs two). -> reports/lab/
LAB_PROFILE := -S model.source=random:phi-3.5-mini -S quantize.device=cuda -S finetune.device=cuda \
  -S finetune.batch_size=4 -S finetune.seq_len=512 -S finetune.r=64 -S finetune.alpha=128 \
  -S 'finetune.target_modules=[qkv_proj]' -S 'optimize.lora_targets=[qkv_proj]' -S '~adapters.garden' \
  -S optimize.provider=cpu -S optimize.int4_accuracy_level=auto -S optimize.auto_level_rows=4 \
  -S evaluate.device=cuda -S evaluate.max_rows=16 -S evaluate.guard_rows=4 -S evaluate.generate_rows=2 \
  -S evaluate.max_new_tokens=32 -S 'reference.algorithms=[]' -S benchmark.torch_baseline=false \
  -S benchmark.llama_cpp=true -S benchmark.new_tokens=64 -S benchmark.runs=3 -S benchmark.switches=20 \
  -S 'benchmark.context_lengths=[128,1024]' -S 'benchmark.thread_counts=[8]' -S benchmark.sweep_new_tokens=32 \
  -S benchmark.profile=true
repro-lab: llama-cpp  ## the Olive lab's Phi-3.5-mini flow at its scale: GPU quantize/finetune, CPU build/eval/benchmark vs llama.cpp -> reports/lab/
	PATH=$(BIN):$$PATH $(PY) scripts/timed_repro.py --exp --metrics reports/lab/repro.json \
	  --stages reports/lab/stage_seconds.json $(LAB_PROFILE) $(ARGS)
	$(PY) scripts/lab_report.py --out reports/lab

register:  ## manifest (register stage), then upload to Azure ML: make register ARGS=--dry-run | --next-version
	PATH=$(BIN):$$PATH $(BIN)/dvc repro -s register
	$(PY) scripts/azure_register.py $(ARGS)

# README "When one machine is not enough": one experiment per -S (space-separated overrides in one -S go together)
.PHONY: azure-job sweep
JOBS ?= 2
azure-job:  ## the pipeline as Azure ML jobs, one per -S: make azure-job ARGS="[--dry-run] -S finetune.r=8 -S finetune.r=32"
	PATH=$(BIN):$$PATH $(PY) scripts/azure_job.py $(ARGS)

sweep:  ## variants on DVC's queue, JOBS at a time, cores split: make sweep ARGS="-S finetune.r=4 -S finetune.r=8"
	PATH=$(BIN):$$PATH $(PY) scripts/sweep.py --jobs $(JOBS) $(ARGS)

lint:  ## lint the Dockerfile (hadolint) and the Python (ruff), if installed
	$(BIN)/hadolint --config .hadolint.yaml docker/Dockerfile
	$(BIN)/ruff check ondevice scripts studies tests

# ---- Container (README "Container"): docker where an engine answers, else podman ----
IMAGE      ?= ondevice-llm:latest
BASE       ?= nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FLAVOUR    ?= $(if $(findstring nvidia/cuda,$(BASE)),cuda,cpu)
LOCAL_BASE ?= localhost/debian:bookworm
DEBIAN_MIRROR ?= http://deb.debian.org/debian
TORCH_WHEELS  ?= /opt/wheels
TORCH_VERSION := $(shell sed -n 's/^torch==\([^ #]*\).*/\1/p' requirements.txt)
# evaluated once, on first use: a docker client without an engine (no `docker info`) means podman
ENGINE     ?= $(eval ENGINE := $$(shell docker info >/dev/null 2>&1 && echo docker || echo podman))$(ENGINE)
# podman only: containers.conf without default ulimits (nested machines refuse to raise them), runc
# where installed (crun fails on cgroups-v1/hybrid hosts), host network, the host's CA bundle for pip;
# images in docker format (OCI images drop the Dockerfile's SHELL); PODMAN_STORAGE=vfs where overlay
# cannot work (storage on an overlay filesystem), and there one build container committed once
# (--layers=false): vfs stores every layer as a whole copy of the tree, so the cached layers took the
# CPU build's disk peak from 10.1 to 19.1 GB (docs/container.md). PODMAN_CONF= keeps your containers.conf.
PODMAN_CONF    ?= $(CURDIR)/docker/podman-containers.conf
PODMAN_STORAGE ?=
PODMAN_RUNTIME ?= $(if $(shell command -v runc 2>/dev/null),runc)
CA_BUNDLE      ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
HAS_GPU    := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
podman_env  = $(if $(PODMAN_CONF),CONTAINERS_CONF=$(PODMAN_CONF))
podman_opts = --network host $(if $(PODMAN_RUNTIME),--runtime $(PODMAN_RUNTIME)) \
              $(if $(CA_BUNDLE),-v $(CA_BUNDLE):/etc/ssl/host-ca.crt:ro)
CONTAINER   = $(if $(filter podman,$(ENGINE)),$(podman_env) podman $(if $(PODMAN_STORAGE),--storage-driver $(PODMAN_STORAGE)),$(ENGINE))
BUILD_OPTS  = $(if $(filter podman,$(ENGINE)),--format docker $(podman_opts) $(if $(CA_BUNDLE),--build-arg PIP_CERT=/etc/ssl/host-ca.crt) \
              $(if $(filter vfs,$(PODMAN_STORAGE)),--layers=false))
# outputs on the host belong to the invoking user (rootless podman: same uid through keep-id), and
# `dvc exp run` commits as the host's git identity; caches (Hugging Face, Olive, pip) on a volume
git_id      = $(foreach who,AUTHOR COMMITTER,-e GIT_$(who)_NAME="$$(git config user.name)" \
                -e GIT_$(who)_EMAIL="$$(git config user.email)")
RUN_OPTS    = --rm --user $$(id -u):$$(id -g) -v $(CURDIR):/work -v ondevice-cache:/cache -w /work $(git_id) \
              $(if $(filter podman,$(ENGINE)),$(podman_opts) \
                $(if $(CA_BUNDLE),-e PIP_CERT=/etc/ssl/host-ca.crt -e REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.crt \
                  -e SSL_CERT_FILE=/etc/ssl/host-ca.crt) \
                $$(test "$$(id -u)" = 0 || echo --userns keep-id) $(if $(HAS_GPU),--device nvidia.com/gpu=all), \
                $(if $(HAS_GPU),--gpus all))

docker-base:  ## build localhost/debian:bookworm (LOCAL_BASE) from debootstrap (root), for machines that reach no registry
	@command -v debootstrap >/dev/null || { echo "error: docker-base needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
	set -e; root=$$(mktemp -d); trap 'rm -rf "$$root"' EXIT; \
	debootstrap --variant=minbase bookworm "$$root" $(DEBIAN_MIRROR) >/dev/null; \
	tar -C "$$root" -c . | $(CONTAINER) import - $(LOCAL_BASE)

docker-build:  ## build the image: CUDA 13 (default), or CPU with BASE=localhost/debian:bookworm (after docker-base)
	rm -f docker/wheels/*.whl
ifeq ($(FLAVOUR),cpu)
	@ls $(TORCH_WHEELS)/torch-$(TORCH_VERSION)[+-]*.whl >/dev/null 2>&1 || { echo "error: no torch-$(TORCH_VERSION) wheel in \
	TORCH_WHEELS=$(TORCH_WHEELS); the CPU image installs torch's CPU wheel from there" >&2; exit 2; }
	for w in $(TORCH_WHEELS)/torch-$(TORCH_VERSION)[+-]*.whl; do ln -f "$$w" docker/wheels/ 2>/dev/null || cp "$$w" docker/wheels/; done
endif
	$(CONTAINER) build $(BUILD_OPTS) --build-arg BASE=$(BASE) --build-arg FLAVOUR=$(FLAVOUR) \
	  -f docker/Dockerfile -t $(IMAGE) .
	rm -f docker/wheels/*.whl

docker-build-cuda-local:  ## the CUDA flavour on the debootstrap base (after docker-base; no registry): build, import check, cuda_check -> reports/container_cuda.json
	set -e; t0=$$(date +%s); \
	$(MAKE) --no-print-directory docker-build BASE=$(LOCAL_BASE) FLAVOUR=cuda IMAGE=ondevice-llm:cuda; \
	build_s=$$(( $$(date +%s) - t0 )); \
	size=$$($(CONTAINER) image inspect ondevice-llm:cuda --format '{{.Size}}'); \
	imports=$$($(CONTAINER) run $(RUN_OPTS) ondevice-llm:cuda python -c "import torch, onnxruntime as o, \
	  onnxruntime_genai as g; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'onnxruntime', \
	  o.__version__, 'onnxruntime-genai', g.__version__, o.get_available_providers())"); \
	check=$$($(CONTAINER) run $(RUN_OPTS) ondevice-llm:cuda python -m ondevice.runtime.cuda_check 2>&1) && rc=0 || rc=$$?; \
	echo "$$imports"; echo "cuda_check (exit $$rc): $$check"; \
	$(PY) -c 'import json, sys; k = ("image_bytes", "build_s", "imports", "cuda_check", "cuda_check_exit", "host_cpu", "host_gpu"); \
	  v = sys.argv[1:]; r = dict(zip(k, v)); r.update(image_bytes=int(r["image_bytes"]), build_s=int(r["build_s"]), \
	  cuda_check_exit=int(r["cuda_check_exit"]), image="ondevice-llm:cuda", flavour="cuda", base="$(LOCAL_BASE)", \
	  engine="$(ENGINE)"); open("reports/container_cuda.json", "w").write(json.dumps(r, indent=2, sort_keys=True) + "\n")' \
	  "$$size" "$$build_s" "$$imports" "$$check" "$$rc" "$$(lscpu | sed -n 's/^Model name: *//p')" "$$(nvidia-smi -L 2>/dev/null || echo none)"; \
	cat reports/container_cuda.json

docker-run:  ## the pipeline in the container on this checkout: `dvc repro`, or `dvc exp run` when ARGS has -S
	$(CONTAINER) run $(RUN_OPTS) $(IMAGE) dvc $(if $(filter -S --set-param,$(ARGS)),exp run,repro) $(ARGS)

docker-shell:  ## a shell in the container, on this checkout
	$(CONTAINER) run -it $(RUN_OPTS) $(IMAGE) bash

docker-test:  ## the test suite inside the image, on this checkout
	$(CONTAINER) run $(RUN_OPTS) $(IMAGE) python -m pytest -q $(ARGS)

clean:  ## remove pipeline outputs (not the DVC cache)
	rm -rf models metrics plots reports data/prepared
