.PHONY: demo test lint bench bench-step cardinality detect-bench setup setup-test zoo

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

# The callback's cost inside a real Lightning step, part by part (issue 29): its section of
# docs/benchmarks.md (~5 min on CPU; also part of make bench)
bench-step: setup-test
	PYTHONPATH=. .venv/bin/python -m benchmarks.lightning_step --output docs/benchmarks.md

# Series each rank exports at 1, 2 and 64 ranks (seconds): its section of docs/benchmarks.md
cardinality: setup-test
	PYTHONPATH=. .venv/bin/python -m benchmarks.cardinality --output docs/benchmarks.md

# The recipe corpus (issue 27): every recipe trained and judged in-process and by the
# shipped rules; writes the table of docs/detection.md (the default run judges a subset)
detect-bench: setup-test
	GRADWATCH_CORPUS=all GRADWATCH_DETECTION_TABLE=docs/detection.md \
		.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_recipe_corpus.py

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
