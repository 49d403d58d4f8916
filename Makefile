.PHONY: demo test setup setup-test

# The two commands of the README: each installs what it needs, then runs.
demo: setup
	.venv/bin/gradwatch demo

test: setup-test
	.venv/bin/python -m pytest -q

setup:
	scripts/setup.sh

setup-test:
	scripts/setup.sh test
