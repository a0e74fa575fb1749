# syntax=docker/dockerfile:1
#
# gpe-ebpf container image.
#
#   docker build -t gpe-ebpf:latest .
#   make image          # the same, with VERSION and REVISION from git (see the Makefile)
#
# The generated BPF objects (*_bpfel.o and their Go bindings) are committed, so
# the build needs neither clang nor kernel headers: a plain static Go build.

# ---- build stage: Debian 12 based Go toolchain matching go.mod (Go 1.26) ----
FROM golang:1.26-bookworm AS build
WORKDIR /src

# Module downloads are cached in their own layer: they change less often than the code.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
# Stamped into the binary as `make build` does (gpe-ebpf --version, gpe_ebpf_build_info).
# Declared after the module download so that a new version does not invalidate that layer.
ARG VERSION=dev
ARG REVISION=unknown
ENV CGO_ENABLED=0
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${REVISION}" \
    -o /gpe-ebpf ./cmd/gpe-ebpf

# ---- final stage ----
# distroless/static (not :nonroot): gpe-ebpf loads BPF programs, attaches to
# tracepoints in tracefs and reads /proc of other users' processes, which needs
# uid 0 with CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (the
# DaemonSet grants exactly those and drops the rest). The :nonroot variant runs
# as uid 65532, which cannot do that without file capabilities. distroless/static
# rather than scratch because it brings CA certificates (Redis over TLS),
# tzdata and an /etc/passwd, and still has no shell or package manager.
FROM gcr.io/distroless/static-debian12:latest
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="gpe-ebpf" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /gpe-ebpf /usr/local/bin/gpe-ebpf
USER 0:0
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/gpe-ebpf"]
