# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed  ## AN vs SCL on the embedded synthetic dataset, on CPU
	$(PY) examples/train_synthetic.py --output_dir runs/synthetic

test: $(VENV)/.installed  ## lint, then the whole test suite (CPU)
	$(VENV)/bin/ruff check scl_hf examples benchmarks tests
	$(PY) -m pytest -q -p no:cacheprovider

bench: $(VENV)/.installed  ## every table of the README's Benchmarks section (about 3 hours on 2 CPU cores)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/bank_prototypes.py
	$(PY) benchmarks/metric_speed.py
	$(PY) benchmarks/loader_throughput.py
	$(PY) benchmarks/bank_io.py
	$(PY) benchmarks/coco_build.py
	$(PY) benchmarks/compare_methods.py --jobs 2
	$(PY) benchmarks/compare_methods.py --jobs 2 --epochs 10 --output benchmarks/results/compare_methods_10ep
	$(PY) benchmarks/compare_methods.py --jobs 2 --seeds 3 4 --methods full an ll-r em-apl role scl role+scl \
		--output benchmarks/results/compare_methods_heldout
	$(PY) benchmarks/compare_methods.py --jobs 2 --epochs 10 --methods an scl vlpl aevlp vlpl+scl aevlp+scl \
		--output benchmarks/results/compare_methods_clip
