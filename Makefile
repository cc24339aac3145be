# `make demo` and `make test` are the whole set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-all lint format bench study clean

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kerasmlic demo

# The suite's processes leave a core idle half the time (tracing is
# single-threaded), so two pytest workers share the two CI cores.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m ''

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The built-in study (experiments/README.md): 800/1000/1000 images, every model's
# rate chosen between 2 by full-length seed-0 runs, 3 seeds (evaluated on the
# weights' EMA at momentum 0.98), deterministic, two tasks at once; resumes
# where it stopped.
STUDY_DATA := data/study
STUDY_SHARDS := data/study-shards
# The stamp names the size, so data of an earlier size is rebuilt, never reused.
STUDY_BUILT := $(STUDY_SHARDS)/.built-800-1000-1000-s1

$(STUDY_BUILT): | $(STAMP)
	rm -rf $(STUDY_DATA) $(STUDY_SHARDS)
	$(BIN)/kerasmlic synth $(STUDY_DATA) --train 800 --val 1000 --test 1000 --seed 1
	for s in train val test; do $(BIN)/kerasmlic build --split $$s --out $(STUDY_SHARDS) \
		--annotations $(STUDY_DATA)/annotations/instances_$$s.json --images $(STUDY_DATA)/$$s \
		|| exit 1; done
	touch $@

study: $(STAMP) $(STUDY_BUILT)
	$(BIN)/kerasmlic reproduce --data $(STUDY_SHARDS) --seeds 3 --epochs 24 \
		--rates 0.001,0.002 --rate-selection full \
		--set data.batch_size=16 --set train.min_learning_rate_ratio=0 \
		--set train.precise_bn_batches=16 --set train.deterministic=true \
		--seed-set train.use_ema=true --seed-set train.ema_momentum=0.98 \
		--seed-set evaluation.every=6 --jobs 2 --out runs/study

bench: $(STAMP)
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/build_memory.py
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/metrics_speed.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/multiworker.py

clean:
	rm -rf $(VENV) build *.egg-info
