# The make targets of README.md and docs/testing.md. Each creates .venv/ on first use (install/install.sh).
#   make demo        train + evaluate the demo Mask R-CNN on the generated long-tailed dataset
#   make test        lint, layering contracts and the test suite (two pytest workers, one thread
#                    each: the tests are small models, which use two processes better than two
#                    threads): the unit tier and the integration tier
#   make test-fast   lint, layering contracts and the unit tier only (-m "not integration"):
#                    leaves out the tests marked `integration` (training or evaluating through
#                    the trainer or train_net.py, several processes, installs); tests/conftest.py
#                    fails an unmarked test that does one of those
#   make test-gpu    on a machine with a CUDA GPU: the `cuda` tier (every classifier compiled ==
#                    eager on CUDA, fp16/AMP gradients, 20-iteration AMP trainings of a two-stage
#                    and a dense demo config), then the benchmarks with --device cuda
# With your own detectron2 (e.g. built from source on a GPU machine), name its interpreter:
#   PYTHON=/path/to/python make test
# and the second test environment, detectron2 main built from ../shared/third_party:
#   make test-main   builds .venv-d2main (torch, numpy 2, detectron2 main installed editable,
#                    as a GPU user has it), installs lt_d2 beside it into .venv-main through
#                    the PYTHON route above, and runs the test suite there, including the
#                    multi-process (gloo) training test
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per interpreter route, so that PYTHON=... re-runs the installer (which refuses a
# venv made for another route instead of reusing it silently).
STAMP := $(VENV)/.installed-$(shell printf '%s' '$(PYTHON)' | cksum | cut -d' ' -f1)
DEMO_CONFIG ?= configs/demo/softmax_mask_rcnn_R_18_FPN_demo.yaml
DEMO_OUTPUT ?= output/demo/softmax_mask_rcnn_R_18_FPN_demo
D2_MAIN_ARCHIVE ?= ../shared/third_party/detectron2-02b5c4e.tar.gz
D2_MAIN_ENV := .venv-d2main
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

.PHONY: demo lint test test-fast test-gpu test-main venv

venv: $(STAMP)

$(STAMP): install/install.sh install/requirements.txt install/requirements-dev.txt setup.py
	PYTHON="$(PYTHON)" bash install/install.sh $(VENV)
	touch $@

demo: venv
	$(PY) train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUTPUT)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: lint
	$(PYTEST)

test-fast: lint
	$(PYTEST) -m "not integration"

test-gpu: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m cuda tests/cuda
	$(PY) benchmarks/bench_dense_losses.py --device cuda
	$(PY) benchmarks/bench_gradient_stats.py --device cuda
	$(PY) benchmarks/bench_classifiers.py --device cuda

test-main:
	bash install/install_detectron2_main.sh $(D2_MAIN_ENV) $(D2_MAIN_ARCHIVE)
	$(MAKE) venv VENV=.venv-main PYTHON=$(abspath $(D2_MAIN_ENV))/bin/python
	LT_D2_EXPECT_DETECTRON2=$(abspath $(D2_MAIN_ENV))/src LT_D2_EXPECT_NUMPY_MAJOR=2 \
		OMP_NUM_THREADS=1 .venv-main/bin/python -m pytest -q -n 2
