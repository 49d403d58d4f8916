.PHONY: demo test bench setup setup-test

# The two commands of the README: each installs what it needs, then runs.
demo: setup
	.venv/bin/gradwatch demo

test: setup-test
	.venv/bin/python -m pytest -q

# The overhead benchmark (issue 6): ~15 min on CPU, writes docs/benchmarks.md
bench: setup-test
	PYTHONPATH=. .venv/bin/python benchmarks/overhead.py

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
