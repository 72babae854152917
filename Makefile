# The two commands that matter: `make run` and `make test` (see README.md).
CARGO ?= cargo
SANDBOX ?= target/sandbox
LEAF_TTL ?= 5m
BIN := target/debug/certrotd

# The packaging tools, pinned: `make package-tools` installs them when missing.
CARGO_DEB_VERSION ?= 3.8.0
CARGO_GENERATE_RPM_VERSION ?= 0.21.1

.PHONY: run test deps build-deps package-tools package build fmt clippy check-fmt bench clean-sandbox

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

deps:
	./scripts/install-deps.sh

build: build-deps
	$(CARGO) build --locked

build-deps:
	./scripts/install-deps.sh --build
