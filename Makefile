# Two commands on a fresh machine with Python 3.11+:  `make demo` and `make test` (`make test-fast`: unit tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast bench lock clean

# A project venv; uv (from PyPI, one pinned version) installs the locked, universal resolution in seconds,
# every package checked against the lock's hashes. Its bytecode is compiled at install, as pip does: a shell
# with PYTHONDONTWRITEBYTECODE would otherwise compile Airflow and Ray from source in every process (about a
# second for each `airflow-ray` command, Ray worker and Airflow component).
UV_VERSION := 0.13.9

$(BIN)/.installed: pyproject.toml requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install -q --python $(BIN)/python --require-hashes --compile-bytecode -r requirements/lock.txt
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

install: $(BIN)/.installed

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# The unit tests alone: no Ray, no Airflow process, no database server (about half a minute).
test-fast: install
	$(BIN)/ruff check airflow_ray_platform dags tests bench
	$(BIN)/lint-imports
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -p no:cacheprovider --fast tests

test: install
	bash scripts/ensure-chromium.sh
	$(BIN)/ruff check airflow_ray_platform dags tests bench
	$(BIN)/lint-imports
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -p no:cacheprovider tests

bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run_all

lock:
	$(BIN)/uv pip compile pyproject.toml --extra test --universal --python-version 3.11 --generate-hashes \
		-o requirements/lock.txt

clean:
	rm -rf $(VENV) .airflow-home demo-output
