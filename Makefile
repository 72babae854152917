# The two commands that matter: `make run` and `make test` (see README.md).
CARGO ?= cargo
SANDBOX ?= target/sandbox
LEAF_TTL ?= 5m
BIN := target/debug/certrotd

.PHONY: run test deps build fmt clippy check-fmt bench clean-sandbox

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

## test: install what is missing, then fmt check, clippy (warnings denied) and every test
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features --locked -- -D warnings
	$(CARGO) test --locked --features failpoints

## bench: the benchmarks named in the issues (release build)
bench: deps
	$(CARGO) build --release --locked
	$(CARGO) bench --locked

deps:
	./scripts/install-deps.sh

build:
	$(CARGO) build --locked
