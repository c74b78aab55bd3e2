# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv from uv.lock first (Python 3.10, TFX 1.16; see README).

PYTHON ?= $(shell command -v python3.10 2>/dev/null || ls /root/.pyenv/versions/3.10.*/bin/python 2>/dev/null | head -n 1)
UV ?= $(shell command -v uv 2>/dev/null || echo .uv/bin/uv)
VENV := .venv

.PHONY: demo test venv

venv: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@test -n "$(PYTHON)" || { echo "Python 3.10 not found: set PYTHON=/path/to/python3.10" >&2; exit 2; }
	@test -x "$(UV)" || python3 -m pip install --quiet --target .uv uv
	$(UV) sync --frozen --extra test --python "$(PYTHON)"
	@touch $@

demo: venv
	$(VENV)/bin/tfx-transfer run

test: venv
	$(VENV)/bin/python -m pytest
