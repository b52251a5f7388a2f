# One entry point for every check. `make test` is the README's test command and what CI runs:
# test dependencies, lint (formatting, clippy, ruff, mypy --strict, stubtest of the extension's
# stubs against the built module), then the Rust and Python suites.
PYTHON ?= python3
export HYPOTHESIS_PROFILE ?= ci

.PHONY: test deps rust-test py-test lint fmt fuzz

test: deps lint rust-test py-test

# Test dependencies: Debian packages for the real clients, the package itself (built by
# maturin) and its `test` extra.
deps:
	./scripts/install-system-deps.sh
	$(PYTHON) -m pip install --disable-pip-version-check -q -e '.[test]'

rust-test:
	cargo test --workspace --locked

py-test:
	$(PYTHON) -m pytest -q

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	$(PYTHON) -m ruff check python tests benches
	$(PYTHON) -m ruff format --check python tests benches
	$(PYTHON) -m mypy
	$(PYTHON) -m mypy.stubtest qeltrix_v6._core

fmt:
	cargo fmt --all
	$(PYTHON) -m ruff format python tests benches

# Coverage-guided fuzzing of the parsers of untrusted bytes (libFuzzer, stable toolchain), for
# a bounded time: `make fuzz FUZZ_SECONDS=600`. Not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	./fuzz/run.sh "header tail range" $(FUZZ_SECONDS)
