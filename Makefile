.PHONY: demo test lint bench cardinality setup setup-test zoo

# The two commands of the README: each installs what it needs, then runs.
demo: setup
	.venv/bin/gradwatch demo

test: lint
	.venv/bin/python -m pytest -q

# The model zoo alone (`make test` runs it too)
zoo: setup-test
	.venv/bin/python -m pytest -q -m zoo -rs

# Seconds, and first in `make test`: ruff (a conservative rule set) and mypy (strict on the
# core); settings in pyproject.toml
lint: setup-test
	.venv/bin/python -m ruff check
	scripts/typecheck.sh

# The overhead benchmark (issue 6): ~15 min on CPU, writes the whole docs/benchmarks.md
bench:
	scripts/setup.sh bench
	PYTHONPATH=. .venv/bin/python benchmarks/overhead.py

# Series each rank exports at 1, 2 and 64 ranks (seconds): its section of docs/benchmarks.md
cardinality: setup-test
	PYTHONPATH=. .venv/bin/python -m benchmarks.cardinality --output docs/benchmarks.md

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
