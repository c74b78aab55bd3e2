# The two commands a newcomer needs: `make demo` and `make test`
# (`make test-fast` for the edit-test loop). Each creates .venv from uv.lock
# first (Python 3.10, TFX 1.16; see docs/environment.md).

# The first Python 3.10 that runs: python3.10 on PATH, else pyenv's.
PYTHON ?= $(shell for p in python3.10 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10.*/bin/python 2>/dev/null); do \
  $$p -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { command -v $$p; break; }; done)
UV := .uv/bin/uv
UV_VERSION := 0.13.9
VENV := .venv

.PHONY: demo test test-fast lint docs venv

venv: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@test -n "$(PYTHON)" || { echo "Python 3.10 not found: set PYTHON=/path/to/python3.10" >&2; exit 2; }
	@test -x $(UV) || python3 -m pip install --quiet --target .uv uv==$(UV_VERSION)
	$(UV) sync --frozen --extra test --extra docs --python "$(PYTHON)"
	@touch $@

demo: venv
	$(VENV)/bin/tfx-transfer run

# The whole suite, in 2 processes (pytest-xdist): each module runs whole in
# one of them (--dist loadfile), so its module fixtures are built once.
test: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

# The tests marked `fast` (tests/conftest.py): under 3 minutes on 2 cores.
test-fast: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -m fast

# Ruff's lint and format checks (settings in pyproject.toml).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (mkdocs.yml, docs/) into build/site; --strict makes
# a broken link or a page missing from the nav an error.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site
