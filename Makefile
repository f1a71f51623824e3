# CloudVLAN build. `make run` starts a controller with embedded defaults; `make test` is what CI checks.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(BIN)/tools
BUF       := $(TOOLS)/buf
MODULES   := gen controller agent relay vrouter
PKGS      := $(addsuffix /...,$(addprefix ./,$(MODULES)))
BINARIES  := controller/cmd/cvlan-controller agent/cmd/cvlan-agent relay/cmd/cvlan-relay vrouter/cmd/cvlan-vrouter
DATA_DIR  ?= $(CURDIR)/data
# Every Go test runs with the race detector, the end-to-end packages (controller/e2e/...) included.
GOTEST_FLAGS ?= -race -count=1 -timeout 20m

.PHONY: all tools ui-deps generate vendor-protovalidate lint breaking check-generate toolchain-check vet \
        build ui test test-go test-ui test-e2e-ui test-fuzz run bench bench-relay bench-api bench-netmap bench-pki bench-dataplane clean

all: build

## tools: build the pinned code generators, grpcurl and h2spec (build/tools/go.mod) into bin/tools.
tools: $(BUF)
$(BUF): build/tools/go.mod build/tools/go.sum
	cd build/tools && GOWORK=off GOBIN=$(TOOLS) $(GO) install tool
	@touch $(BUF)

## ui-deps: install the UI's pinned npm packages (protoc-gen-es among them).
ui-deps: ui/node_modules/.package-lock.json
ui/node_modules/.package-lock.json: ui/package.json ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund
	@touch $@

## generate: regenerate gen/ (Go and TypeScript) from proto/.
generate: tools ui-deps
	$(BUF) generate

## vendor-protovalidate: print buf/validate/validate.proto back from the protovalidate Go package.
vendor-protovalidate:
	{ echo "// Vendored from the descriptor embedded in buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go"; \
	  echo "// by build/tools/cmd/vendorproto (make vendor-protovalidate). Do not edit."; \
	  cd build/tools && GOWORK=off $(GO) run ./cmd/vendorproto; } > proto/buf/validate/validate.proto.tmp
	mv proto/buf/validate/validate.proto.tmp proto/buf/validate/validate.proto

## lint: buf lint and go vet.
lint: tools
	$(BUF) lint
	$(GO) vet $(PKGS)

vet:
	$(GO) vet $(PKGS)

## breaking: buf breaking against the previous commit of main (offline, from git history).
breaking: tools
	@if git rev-parse -q --verify 'HEAD~1' >/dev/null && git cat-file -e 'HEAD~1:buf.yaml' 2>/dev/null; then \
	  $(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "breaking: no previous commit with protos; nothing to compare"; fi

## check-generate: fail when gen/ differs from what proto/ generates.
check-generate: tools ui-deps
	build/ci/check-generate.sh

## toolchain-check: prove that the drift check and buf breaking catch what they must.
toolchain-check: tools ui-deps
	build/ci/toolchain-check.sh

## ui: build the web console into controller/internal/webui/dist (embedded by go build).
ui: ui-deps
	cd ui && npm run build

## build: the UI, then the four binaries into bin/.
build: ui
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./,$(BINARIES))

## test: everything CI checks.
test: lint breaking check-generate toolchain-check test-go test-fuzz test-ui test-e2e-ui

test-go: build tools
	CLOUDVLAN_BIN=$(BIN) $(GO) test $(GOTEST_FLAGS) $(PKGS)

## test-ui: the console's component tests (Vitest).
test-ui: ui-deps
	cd ui && npm test

## test-e2e-ui: the console end to end in Debian's headless chromium against the built binaries.
test-e2e-ui: build
	cd ui && CLOUDVLAN_BIN=$(BIN) npm run e2e

## test-fuzz: run each fuzz target briefly.
FUZZ_TARGETS ?= ./relay/frame:FuzzReadFrame ./controller/internal/leanh2:FuzzServeConn
test-fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$fn in $$pkg"; $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime 10s -fuzzminimizetime 0 $$pkg; done

## run: the controller with embedded defaults (SQLite and CA in ./data), API and UI on https://localhost:8443.
run: build
	$(BIN)/cvlan-controller --data-dir $(DATA_DIR)

## bench: every benchmark; figures, commands and the machine are recorded in docs/benchmarks.md.
bench: bench-relay bench-api bench-netmap bench-pki bench-dataplane

## bench-relay: relay vs plain TLS pipe, 1,400-byte packets, relay and clients in separate processes.
bench-relay:
	$(GO) run ./relay/cmd/relaybench

## bench-api: store-level CreateNode/s and ListNodes latency with 100,000 nodes, SQLite and PostgreSQL.
bench-api:
	cd controller && $(GO) test -run '^$$' -bench . -benchtime 2000x ./internal/store/sqlite ./internal/store/postgres
	cd controller && $(GO) test -run '^$$' -bench BenchmarkAPIScale -benchtime 1x -timeout 60m ./internal/api/

## bench-netmap: the network-map engine (in memory) and the streaming fan-out over real mTLS gRPC:
## 1,000 and 10,000 agents on one in-process replica (SQLite), then 100,000 agents over 6 controller
## replica processes on one throw-away PostgreSQL (about 27 minutes on this 2-core, 24 GiB machine, 13 GiB
## used; netmapbench -check prints the plan and what fits without running it).
bench-netmap:
	cd controller && $(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./internal/netmap
	$(GO) run ./controller/internal/nodeplane/netmapbench -n 1000,10000
	$(GO) run ./controller/internal/nodeplane/netmapbench -store postgres -replicas 6 -n 100000 -timeout 45m

## bench-pki: certificate signatures per second (embedded step-ca), and enrollments per second end to end
## (token, CSR signing, node row) on SQLite and PostgreSQL.
bench-pki:
	cd controller && $(GO) test -run '^$$' -bench BenchmarkSign -benchtime 3s ./internal/pki
	cd controller && $(GO) test -run '^$$' -bench BenchmarkEnroll -benchtime 2000x ./internal/nodeplane/

## bench-dataplane: agent-to-agent TCP throughput, direct and relayed, against plain wireguard-go.
bench-dataplane:
	$(GO) run ./agent/cmd/dpbench

clean:
	rm -rf $(BIN) ui/dist
