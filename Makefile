# `make demo` and `make test` install what they need first. They use the active virtual
# environment if there is one, else a project .venv (works where the system Python refuses
# pip installs, PEP 668). torch==2.13.0 is installed first when missing so that no CUDA wheels
# are pulled on a CPU machine; on a GPU node install the torch build you want before `make`.

BOOT_PYTHON ?= python3
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.alignment-installed
TORCH_VERSION ?= 2.13.0
EXTRAS ?= dev

.PHONY: install demo test test-fast lint format tiny smoke bench bench-data bench-serve compare-methods forgetting clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(BOOT_PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# Embedded pipeline on CPU: build the tiny model and task, run recipes/tiny/pipeline.yaml, held-out numbers per stage.
demo: install
	$(PY) -m alignment.cli demo

test: install
	$(PY) -m pytest tests --durations=15

# Everything but the end-to-end training runs.
test-fast: install
	$(PY) -m pytest tests -m "not slow"

lint: install
	$(PY) -m ruff check src scripts tests benchmarks
	$(PY) -m ruff format --check src scripts tests benchmarks

format: install
	$(PY) -m ruff check --fix src scripts tests benchmarks
	$(PY) -m ruff format src scripts tests benchmarks

# Training throughput, the Handbook's default configuration against ours side by side (SFT, DPO, data
# preparation; tiny and ~30M models on a CPU): writes benchmarks/results/<device>-<date>.json. ~15 minutes on 2 cores.
bench: install
	@test -d data/tiny || $(PY) -m alignment.cli tiny build
	$(PY) benchmarks/train.py

# Data-layer throughput on 200k generated conversations; writes benchmarks/results/<device>-<date>-data.json.
bench-data: install
	$(PY) benchmarks/data.py

# `alignment serve` on the demo's DPO model (make demo first): latency of one request, time to the first
# streamed token, tokens/s, beside generate_answers in-process; writes benchmarks/results/<device>-<date>-serve.json.
bench-serve: install
	$(PY) benchmarks/serve.py

# Full fine-tuning, LoRA, DoRA, prompt tuning, IA3 and the last layer only, from one base, on the tiny task:
# trainable parameters, time, peak memory, held-out exact match -> benchmarks/results/<device>-<date>-methods.json
# (and .md). ~15 minutes on 2 cores.
compare-methods: install
	@test -d data/tiny || $(PY) -m alignment.cli tiny build
	$(PY) benchmarks/compare_methods.py

# What SFT does to held-out pretraining perplexity, with 0/10/25% replay, 3 seeds, on the tiny pipeline
# -> benchmarks/results/<device>-<date>-forgetting.json (and .md). ~15 minutes on 2 idle cores.
forgetting: install
	@test -d data/tiny || $(PY) -m alignment.cli tiny build
	$(PY) benchmarks/forgetting.py

tiny: install
	$(PY) -m alignment.cli tiny build

# Every recipe under recipes/ for 2 steps on CPU: tiny model of its family, first or generated rows
# (offline unless HF_HUB_OFFLINE=0: then a Hub source's first rows are streamed). Logs in runs/smoke/.
smoke: install
	@test -d data/tiny || $(PY) -m alignment.cli tiny build
	@mkdir -p runs/smoke; failed=0; for recipe in $$(find recipes -name '*.yaml' | sort); do \
		log=runs/smoke/$$(echo $$recipe | tr / _).log; \
		HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(PY) -m alignment.cli check $$recipe --smoke >$$log 2>&1 || failed=1; \
		tail -n 1 $$log; \
	done; test $$failed = 0

clean:
	rm -rf runs data/tiny .pytest_cache
