# The two commands that matter: `make run` and `make test` (see README.md).
CARGO ?= cargo
SANDBOX ?= target/sandbox
LEAF_TTL ?= 5m
BIN := target/debug/certrotd

# The packaging tools, pinned: `make package-tools` installs them when missing.
CARGO_DEB_VERSION ?= 3.8.0
CARGO_GENERATE_RPM_VERSION ?= 0.21.1

.PHONY: run test deps build-deps package-tools package build fmt clippy check-fmt bench clean-sandbox fuzz

## run: the daemon on this node, or on a throwaway sandbox node whose leaves expire in minutes
run: build
	@if [ -d /etc/kubernetes/pki ] || [ -d /var/lib/rancher ]; then \
		echo "== certrotd on this node (certrotd status / check / history from another terminal)"; \
		exec $(BIN) run; \
	else \
		rm -rf $(SANDBOX); \
		$(BIN) sandbox --dir $(SANDBOX) --leaf-ttl $(LEAF_TTL) && \
		$(BIN) check --config $(SANDBOX)/certrotd.toml; \
		echo; \
		echo "== certrotd run on the sandbox: its leaves expire in $(LEAF_TTL); watch them rotate."; \
		echo "   From another terminal: $(BIN) status --config $(SANDBOX)/certrotd.toml"; \
		echo "                          $(BIN) history --config $(SANDBOX)/certrotd.toml"; \
		echo "                          $(BIN) ca rotate etcd-ca --config $(SANDBOX)/certrotd.toml"; \
		exec $(BIN) run --config $(SANDBOX)/certrotd.toml; \
	fi

## test: install what is missing, then fmt check, clippy (warnings denied), every test, and the
## package tests (lintian, rpm, install/upgrade/purge in a debootstrapped Debian root)
test: deps package-tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features --locked -p certrotd -p alloc-trim -- -D warnings
	$(CARGO) test --locked -p alloc-trim
	$(CARGO) test --locked --features failpoints
	./scripts/test-package.sh

## package: the release .deb and .rpm (with man pages and completions) into target/
package: deps package-tools
	./scripts/package.sh

package-tools:
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install --locked cargo-deb@$(CARGO_DEB_VERSION)
	@command -v cargo-generate-rpm >/dev/null 2>&1 || $(CARGO) install --locked cargo-generate-rpm@$(CARGO_GENERATE_RPM_VERSION)

## bench: the benchmarks named in the issues (release build)
bench: deps
	$(CARGO) build --release --locked
	$(CARGO) bench --locked

## fuzz: every fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each, one after the other on one
## core (nightly toolchain; cargo-fuzz is installed if missing). Not part of `make test`, which
## replays the corpora (tests/node_tests/fuzz_corpus.rs). New inputs go to fuzz/target/corpus/<target>,
## failures to fuzz/artifacts/<target>; a summary per target ends the run.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || $(CARGO) install --locked cargo-fuzz
	@mkdir -p fuzz/target/logs
	@cd fuzz && failed=""; for t in $(FUZZ_TARGETS); do \
		mkdir -p target/corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS)s (log: fuzz/target/logs/$$t.log)"; \
		cargo +nightly fuzz run --target-dir target $$t target/corpus/$$t corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
			>target/logs/$$t.log 2>&1 || { tail -n 40 target/logs/$$t.log; failed="$$failed $$t"; }; \
	done; \
	for t in $(FUZZ_TARGETS); do \
		printf '%-14s %s\n' $$t "$$(grep -h '^Done ' target/logs/$$t.log || echo FAILED)"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz targets failed:$$failed (inputs in fuzz/artifacts/)"; exit 1; fi

deps:
	./scripts/install-deps.sh

build: build-deps
	$(CARGO) build --locked

build-deps:
	./scripts/install-deps.sh --build
