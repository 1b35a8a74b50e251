# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PYTHON ?= python3.11
BIN    := $(VENV)/bin
# Steady glibc malloc for honest timings (REFERENCE: otherwise eager runs vary 18-29 ms).
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 1073741824

.PHONY: demo test bench clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch first, pinned, so nothing can pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/.installed
	$(BIN)/effdl optimize --model zoo:lenet5 --data mnist --max-drop 0.01 --target latency --out runs/demo

test: $(BIN)/.installed
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/runtimes.py --quick

clean:
	rm -rf runs .pytest_cache
