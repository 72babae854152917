# The two commands that matter: `make run` and `make test` (see README.md).
CARGO ?= cargo
SANDBOX ?= target/sandbox
BIN := target/debug/certrotd

.PHONY: run test deps build fmt clippy check-fmt bench clean-sandbox

## run: inventory this node's certificates, or a throwaway sandbox PKI when the node has none
run: build
	@if [ -d /etc/kubernetes/pki ] || [ -d /var/lib/rancher ]; then \
		echo "== this node's certificates"; $(BIN) check; \
	else \
		rm -rf $(SANDBOX); \
		$(BIN) sandbox --dir $(SANDBOX) && \
		echo "== certrotd check --config $(SANDBOX)/certrotd.toml" && \
		$(BIN) check --config $(SANDBOX)/certrotd.toml; \
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
