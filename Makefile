# Two commands for a newcomer: `make run` (whole benchmark, synthetic default) and `make test`.
# Both create and use a local virtual environment in .venv; nothing else is needed on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= workflows/config/default.yaml
CORES ?= all
# Jobs that declare `resources: gpu=1` at once: one per GPU; without a GPU they share the CPU cores.
GPU_SLOTS ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | wc -l); if [ "$$n" -gt 0 ]; then echo $$n; else nproc; fi)
# The CPU build of PyTorch: an unpinned `torch` would pull a multi-GB CUDA build. GPU users: environment.yml.
TORCH_SPEC ?= torch==2.13.0
# nnU-Net without its timm dependency (see the `nnunet` extra in pyproject.toml).
NNUNET_SPEC ?= "nnunetv2>=2.8.1,<2.9" "dynamic-network-architectures>=0.4.4,<0.5"
# two workers; idle ones take tests queued for the other, so uneven test lengths do not leave a core idle
PYTEST_ARGS ?= -n 2 --dist worksteal --durations=15

.PHONY: venv run test lint report clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,nnunet]"
	$(BIN)/python -m pip install --quiet --no-deps $(NNUNET_SPEC)
	touch $@

venv: $(BIN)/.installed

run: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPU_SLOTS) \
		--configfile $(CONFIG) --keep-going --rerun-incomplete

report: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report results/report.html

test: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint --configfile $(CONFIG)

clean:
	rm -rf results/*/ results/report.html .snakemake
