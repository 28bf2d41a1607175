#!/usr/bin/env bash
# A real Kubernetes API server for the end-to-end tests, without containers:
# kube-apiserver v1.20.2 built from Debian's own `kubernetes` source package
# with Debian's Go, run against Debian's etcd-server on loopback
# (see tests/src/kube_env.rs for how the tests start it).
#
#   .ci/kube-testenv.sh install   apt-get install golang-go etcd-server openssl curl dpkg-dev
#   .ci/kube-testenv.sh build     build kube-apiserver into the cache (once; 4-9 min on 2 cores)
#   .ci/kube-testenv.sh path      print the path of the cached binary
#
# Both steps are idempotent: `install` does nothing when the packages are there,
# `build` does nothing when the cached binary runs `--version` and was built by
# the current recipe (see RECIPE; it stamps $BIN.recipe). An interrupted
# build resumes from its work dir (download, unpack, generated code and Go's
# build cache are kept under the cache dir until the build succeeds).
#
# Environment:
#   CAPSTAN_CACHE           cache root (default ~/.cache/capstan); binary at $CAPSTAN_CACHE/kube/bin/kube-apiserver
#   KUBE_TESTENV_JOBS       go build -p (default 2)
#   KUBE_TESTENV_KEEP_WORK  set to 1 to keep the source tree and Go cache after a successful build
set -Eeuo pipefail

KUBE_VERSION=v1.20.2
CACHE_ROOT="${CAPSTAN_CACHE:-${HOME:-/root}/.cache/capstan}"
KUBE_DIR="$CACHE_ROOT/kube"
BIN_DIR="$KUBE_DIR/bin"
BIN="$BIN_DIR/kube-apiserver"
WORK="$KUBE_DIR/work"
JOBS="${KUBE_TESTENV_JOBS:-2}"
STAMP="$BIN.recipe"
# Bump when the build recipe changes: a cached binary from an older recipe is rebuilt.
RECIPE="kube-apiserver $KUBE_VERSION recipe 3 (reflect2 1.0.2)"
PACKAGES=(golang-go etcd-server openssl curl dpkg-dev golang-github-modern-go-reflect2-dev)

log() { printf 'kube-testenv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
trap 'rc=$?; log "error: command failed (exit $rc) at line $LINENO: $BASH_COMMAND"; exit $rc' ERR

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

cmd_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        # (no `| grep -q`: with pipefail, grep's early exit can fail the pipe)
        if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != *"install ok installed"* ]]; then
            missing+=("$p")
        fi
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    # Update the package lists only when apt does not know one of the packages.
    local p
    for p in "${missing[@]}"; do
        if [[ "$(apt-cache policy "$p" 2>/dev/null || true)" != *"Candidate: "[0-9]* ]]; then
            log "apt-get update (no candidate for $p)"
            as_root apt-get update -qq >/dev/null
            break
        fi
    done
    log "apt-get install ${missing[*]}"
    local logf
    logf=$(mktemp)
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        rm -f "$logf"
        die "apt-get install failed"
    fi
    rm -f "$logf"
}

binary_ok() {
    [ -x "$BIN" ] && [ "$(cat "$STAMP" 2>/dev/null || true)" = "$RECIPE" ] \
        && "$BIN" --version >/dev/null 2>&1
}

# The Debian mirror the machine already uses (first deb822 URIs: or one-line deb entry).
debian_mirror() {
    local m=""
    if compgen -G '/etc/apt/sources.list.d/*.sources' >/dev/null; then
        m=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\// && $i ~ /debian\/?$/ && $i !~ /security/) { print $i; exit } }' \
            /etc/apt/sources.list 2>/dev/null || true)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# Download kubernetes source package with apt's own client, using a private
# sources list, lists dir and cache dir: the machine's apt setup is not touched.
fetch_source() {
    local apt="$WORK/apt" dl="$WORK/download"
    if compgen -G "$dl/kubernetes_*.dsc" >/dev/null; then
        log "source package already downloaded"
        return 0
    fi
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d" "$dl"
    echo "deb-src $(debian_mirror) $codename main" >"$apt/sources.list"
    local opts=(
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=$apt/sources.list.d"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::Cache=$apt/cache"
        -o "APT::Sandbox::User=root"
        -o "Debug::NoLocking=1"
    )
    log "fetching the kubernetes source package list ($(cat "$apt/sources.list"))"
    apt-get "${opts[@]}" -qq update >/dev/null
    log "downloading the kubernetes source package (~34 MB)"
    (cd "$dl" && apt-get "${opts[@]}" -qq source --download-only kubernetes >/dev/null)
    compgen -G "$dl/kubernetes_*.dsc" >/dev/null || die "apt-get source did not produce a .dsc in $dl"
}

unpack_source() {
    if [ -f "$WORK/src.unpacked" ] && [ -d "$WORK/src" ]; then
        log "source already unpacked"
        return 0
    fi
    rm -rf "$WORK/src" "$WORK/src.unpacked"
    local dscs=("$WORK"/download/kubernetes_*.dsc)
    local dsc="${dscs[0]}"
    log "unpacking $(basename "$dsc") (~277 MB)"
    dpkg-source --no-check -x "$dsc" "$WORK/src" >/dev/null
    # dpkg-source leaves a copy of the orig tarball next to the target dir.
    rm -f "$WORK"/kubernetes_*.orig.tar.*
    [ -d "$WORK/src/vendor" ] || die "unpacked tree has no vendor/ dir"
    patch_reflect2
    touch "$WORK/src.unpacked"
}

# The vendored modern-go/reflect2 1.0.1 panics (nil pointer in Type2) when
# built with Go >= 1.18: every JSON decode of a map-typed field, e.g. a
# ConfigMap create, kills the request with no answer. 1.0.2 fixes it; Debian
# ships it as golang-github-modern-go-reflect2-dev, so vendor that instead.
patch_reflect2() {
    local fixed=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -f "$fixed/reflect2.go" ] || die "$fixed missing: run '$0 install' first"
    log "vendoring reflect2 1.0.2 from Debian (Go >= 1.18 fix)"
    rm -rf "$WORK/src/vendor/github.com/modern-go/reflect2"
    cp -r "$fixed" "$WORK/src/vendor/github.com/modern-go/reflect2"
    rm -f "$WORK/src/vendor/github.com/modern-go/reflect2/go.mod"
}

# GOPATH mode (module mode does not work on this tree).
setup_gopath() {
    mkdir -p "$WORK/gopath/src/k8s.io" "$WORK/gocache"
    ln -sfn "$WORK/src" "$WORK/gopath/src/k8s.io/kubernetes"
    export GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GO111MODULE=off GOPROXY=off \
        GOFLAGS= CGO_ENABLED=0
    PKG_DIR="$GOPATH/src/k8s.io/kubernetes"
}

# pkg/generated/openapi/zz_generated.openapi.go is not in the tree: generate it
# with the vendored openapi-gen over every package tagged +k8s:openapi-gen=.
generate_openapi() {
    local out="$PKG_DIR/pkg/generated/openapi/zz_generated.openapi.go"
    if [ -s "$out" ]; then
        log "openapi code already generated"
        return 0
    fi
    log "generating pkg/generated/openapi"
    cd "$PKG_DIR"
    nice -n 10 go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    # Tagged packages, found as upstream's Makefile.generated_files does: the
    # main tree (not vendor/) plus the staging repos, which are vendored as
    # k8s.io/kubernetes/vendor/k8s.io/<repo>; minus code-generator and
    # sample-apiserver, which have their own openapi outputs.
    # (`|| true`: grep -l exits 1 for a batch without a match.)
    find . \( -path ./vendor -o -path './_*' -o -path './.*' \) -prune -o \
        -type f -name '*.go' -print0 \
        | { xargs -0 grep -l --color=never '^// *+k8s:' || true; } \
        | { xargs grep -l --color=never '+k8s:openapi-gen=' || true; } \
        | xargs -r -n1 dirname \
        | sed -e 's|^\./staging/src|vendor|' -e 's|^\./||' \
        | { grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' || true; } \
        | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' >"$WORK/openapi-dirs.txt"
    local dirs
    dirs=$(cat "$WORK/openapi-dirs.txt")
    [ -n "$dirs" ] || die "found no +k8s:openapi-gen= packages"
    log "openapi-gen over $(wc -l <<<"$dirs") packages"
    mkdir -p "$WORK/openapi-report"
    nice -n 10 "$WORK/openapi-gen" \
        --logtostderr \
        --input-dirs "$(paste -sd, - <<<"$dirs")" \
        --output-package k8s.io/kubernetes/pkg/generated/openapi \
        --output-file-base zz_generated.openapi \
        --go-header-file vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        --report-filename "$WORK/openapi-report/violations.txt" \
        --output-base "$GOPATH/src" \
        >"$WORK/openapi-gen.log" 2>&1 \
        || { tail -n 30 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed (log: $WORK/openapi-gen.log)"; }
    [ -s "$out" ] || die "openapi-gen did not write $out"
}

build_apiserver() {
    cd "$PKG_DIR"
    # Like upstream's hack/lib/version.sh: both version packages get the
    # values (component-base for --version, client-go for the /version endpoint).
    local ldflags="-s -w" pkg key
    for pkg in client-go/pkg/version component-base/version; do
        for key in gitVersion=$KUBE_VERSION gitMajor=1 gitMinor=20 gitTreeState=archive \
            buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ); do
            ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/$pkg.$key"
        done
    done
    log "building kube-apiserver (4-9 min on 2 cores, cached afterwards; go build -p $JOBS, niced)"
    local start=$SECONDS
    mkdir -p "$BIN_DIR"
    nice -n 10 go build -p "$JOBS" -trimpath -ldflags "$ldflags" -o "$BIN.tmp" ./cmd/kube-apiserver
    mv -f "$BIN.tmp" "$BIN"
    echo "$RECIPE" >"$STAMP"
    log "built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

cmd_build() {
    if binary_ok; then
        log "kube-apiserver already built: $("$BIN" --version 2>&1)"
        log "binary: $BIN"
        echo "$BIN"
        return 0
    fi
    if [ -x "$BIN" ]; then
        log "cached kube-apiserver is from another build recipe (or broken): rebuilding"
    fi
    command -v go >/dev/null || die "go not found: run '$0 install' first"
    command -v dpkg-source >/dev/null || die "dpkg-source not found: run '$0 install' first"
    mkdir -p "$WORK"
    local start=$SECONDS
    fetch_source
    unpack_source
    setup_gopath
    generate_openapi
    build_apiserver
    binary_ok || die "built binary does not run --version: $BIN"
    log "$("$BIN" --version 2>&1), $(du -h "$BIN" | cut -f1)"
    if [ "${KUBE_TESTENV_KEEP_WORK:-0}" != 1 ]; then
        # The binary is static (CGO_ENABLED=0): the source tree and Go's cache
        # (several GB together) are no longer needed. Keep the downloaded
        # source package (~34 MB) so a rebuild needs no network.
        log "removing the source tree and Go build cache"
        chmod -R u+w "$WORK/gopath" "$WORK/gocache" 2>/dev/null || true
        rm -rf "$WORK/src" "$WORK/src.unpacked" "$WORK/gopath" "$WORK/gocache" "$WORK/openapi-gen"
    fi
    log "done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
    log "binary: $BIN"
    echo "$BIN"
}

case "${1:-}" in
    install) cmd_install ;;
    build) cmd_build ;;
    path) echo "$BIN" ;;
    *) echo "usage: $0 install|build|path" >&2; exit 2 ;;
esac
