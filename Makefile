# gpe-ebpf's front door. `make test` and `make demo` work on a fresh Debian machine as root.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Debian packages: the BPF toolchain (only `make generate` needs it), the real components the
# tests run (Gunicorn and its worker libraries, Redis, load generators) and the checkers of
# the deployment files (prometheus brings promtool, which checks the alerting rules), and the
# kernel matrix's emulators and root-filesystem builder.
DEB_PACKAGES := clang llvm libbpf-dev bpftool linux-libc-dev \
	gunicorn python3-gevent python3-eventlet python3-tornado python3-uvicorn \
	python3-prometheus-client redis-server python3-redis python3-psycopg2 postgresql wrk hey curl ruby \
	systemd procps openssl prometheus \
	qemu-system-x86 qemu-system-arm qemu-user-static binfmt-support debootstrap cpio

.PHONY: all deps generate build image deb test test-unit test-e2e test-deploy test-kernels demo bench lint vmlinux clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		case " $$missing " in *" prometheus "*) \
			echo "prometheus is installed for promtool only: its server is disabled (it would take port 9090)"; \
			systemctl disable prometheus.service >/dev/null 2>&1 || true; \
			systemctl stop prometheus.service >/dev/null 2>&1 || true;; \
		esac; \
	else echo "all Debian packages present"; fi
	@command -v $(GO) >/dev/null || { echo "Go is required (https://go.dev/dl/); it is not a Debian package here"; exit 1; }

generate:
	cd internal/probes && $(GO) generate ./...

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/gpe-ebpf ./cmd/gpe-ebpf

# The container image, stamped with the same version and commit as `make build`.
# IMAGE=registry.example/gpe-ebpf:v1 make image to name it.
IMAGE ?= gpe-ebpf:$(VERSION)
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(COMMIT) -t $(IMAGE) .

# The Debian package, built with dpkg-deb from the files of deploy/: the static binary in /usr/bin,
# the systemd unit (its ExecStart pointed at /usr/bin) in /usr/lib/systemd/system, the settings in
# /etc/default/gpe-ebpf (a conffile), the dashboard and the rules in /usr/share/gpe-ebpf. A
# version that is not a tag such as v1.2.3 becomes 0.0~git<commit>; DEB_DIR=dir puts it elsewhere.
DEB_VERSION ?= $(or $(shell echo '$(VERSION)' | sed -n 's/^v\{0,1\}\([0-9].*\)/\1/p' | tr - +),0.0~git$(COMMIT))
DEB_ARCH ?= $(shell dpkg --print-architecture)
DEB_DIR ?= dist
DEB := $(DEB_DIR)/gpe-ebpf_$(DEB_VERSION)_$(DEB_ARCH).deb
deb: build
	@set -e; tree=$$(mktemp -d); trap 'rm -rf "$$tree"' EXIT; \
	install -D -m 0755 bin/gpe-ebpf "$$tree/usr/bin/gpe-ebpf"; \
	mkdir -p "$$tree/usr/lib/systemd/system"; \
	sed 's|^ExecStart=/usr/local/bin/gpe-ebpf |ExecStart=/usr/bin/gpe-ebpf |' deploy/systemd/gpe-ebpf.service >"$$tree/usr/lib/systemd/system/gpe-ebpf.service"; \
	install -D -m 0644 deploy/debian/gpe-ebpf.default "$$tree/etc/default/gpe-ebpf"; \
	install -D -m 0644 deploy/grafana/gpe-ebpf.json "$$tree/usr/share/gpe-ebpf/grafana/gpe-ebpf.json"; \
	install -D -m 0644 -t "$$tree/usr/share/gpe-ebpf/prometheus" deploy/prometheus/gpe-ebpf-rules.yml deploy/prometheus/gpe-ebpf-migration-rules.yml; \
	install -D -m 0644 README.md "$$tree/usr/share/doc/gpe-ebpf/README.md"; \
	install -D -m 0755 -t "$$tree/DEBIAN" deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm; \
	echo /etc/default/gpe-ebpf >"$$tree/DEBIAN/conffiles"; \
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' deploy/debian/control.in >"$$tree/DEBIAN/control"; \
	echo "Installed-Size: $$(du -sk --exclude=DEBIAN "$$tree" | cut -f1)" >>"$$tree/DEBIAN/control"; \
	chmod -R u=rwX,go=rX "$$tree"; chmod 0755 "$$tree/usr/bin/gpe-ebpf"; \
	mkdir -p $(DEB_DIR); dpkg-deb --root-owner-group -Zxz --build "$$tree" $(DEB) >/dev/null; \
	echo "built $(DEB)"

# Everything, the privileged end-to-end tests included (they need root; under CI=true a
# missing prerequisite fails instead of skipping).
test: deps build lint test-unit test-e2e test-deploy test-kernels

test-unit:
	$(GO) test -count=1 ./internal/... ./cmd/...

# The end-to-end suite once per hook mode (GPE_HOOKS becomes every test's --hooks): socket, what
# kernels 6.3+ run, then syscall, what 5.17-6.2 run.
test-e2e:
	GPE_HOOKS=socket $(GO) test -count=1 -p 1 -timeout 30m ./test/e2e/...
	GPE_HOOKS=syscall $(GO) test -count=1 -p 1 -timeout 30m ./test/e2e/...

# Debian's 5.10, 6.1, 6.12 and sid's 7.x kernels, amd64 and arm64, booted under qemu (emulation,
# no KVM) with the freshly built gpe-ebpf: a table of kernel x arch x mode x result x what the mode
# costs a dd. The first run builds the cache in .cache/kernels (debootstrap, kernel packages);
# KERNELS=amd64/6.1,arm64/sid picks some.
KERNELS ?= all
test-kernels: deps
	GPE_KERNELS=$(KERNELS) $(GO) test -count=1 -v -timeout 60m ./test/kernels/

test-deploy:
	cd deploy/test && $(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd deploy/test && $(GO) vet ./...
	ruby -c Vagrantfile >/dev/null

demo: deps build
	./scripts/demo.sh

bench: deps build
	$(GO) run ./bench

vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > /tmp/vmlinux.h
	@echo "wrote /tmp/vmlinux.h (a reference for bpf/include/gpe_kernel.h; not committed)"

clean:
	rm -rf bin
