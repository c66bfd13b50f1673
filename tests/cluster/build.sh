#!/usr/bin/env bash
# Build (or reuse) the kube-apiserver and kube-controller-manager binaries
# that tests/cluster/apiserver.py runs for the cluster tests.
#
# Where they come from: Debian's `kubernetes` source package (1.20.2 with
# all dependencies vendored), built with Debian's Go. No Docker, kind or
# download from anywhere but the Debian mirrors the machine is configured for.
#
# The binaries are cached OUTSIDE the clone, keyed by version:
#     ${TIDINGS_KUBE_CACHE:-/var/cache/tidings}/kube-1.20.2/bin/
# so only the first run on a machine builds (~7-8 min on 2 cores); later runs
# only check that the runtime packages (etcd, openssl) are present and exit.
#
# Usage: tests/cluster/build.sh [--force]
#   --force   rebuild even when cached binaries exist
# Env:
#   TIDINGS_KUBE_CACHE     cache root (default /var/cache/tidings)
#   TIDINGS_KUBE_KEEP_SRC  1 = keep the source tree + Go cache after a build
#
# Progress goes to stderr; the LAST line on stdout is the binary directory,
# e.g.  BIN=$(tests/cluster/build.sh | tail -n1)
set -euo pipefail

KUBE_VERSION=1.20.2
SRC_PACKAGE=kubernetes
FALLBACK_SUITE=bookworm          # a release whose archive has kubernetes 1.20.x
BINARIES=(kube-apiserver kube-controller-manager)
RUNTIME_PKGS=(etcd-server openssl)
BUILD_PKGS=(golang-go rsync jq golang-github-modern-go-reflect2-dev dpkg-dev make)
REFLECT2_DEB=/usr/share/gocode/src/github.com/modern-go/reflect2

CACHE_ROOT=${TIDINGS_KUBE_CACHE:-/var/cache/tidings}
PREFIX=$CACHE_ROOT/kube-$KUBE_VERSION
BIN_DIR=$PREFIX/bin
WORK=$PREFIX/work

FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[build.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  printf '\n[build.sh] ERROR: %s\n' "$*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || die "must run as root (it apt-get installs packages and writes $CACHE_ROOT)"
command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-based machine"

export DEBIAN_FRONTEND=noninteractive
APT_LOCK_OPTS=(-o DPkg::Lock::Timeout=600)
APT_UPDATED=0

apt_update() {
  [[ $APT_UPDATED == 1 ]] && return 0
  log "apt-get update"
  local i
  for i in 1 2 3; do
    if apt-get "${APT_LOCK_OPTS[@]}" update -q >&2; then APT_UPDATED=1; return 0; fi
    log "apt-get update failed (try $i/3), retrying in 5s"; sleep 5
  done
  die "apt-get update failed 3 times (are the Debian mirrors reachable?)"
}

# Install the packages among "$@" that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} == 0 ]] && return 0
  apt_update
  log "apt-get install ${missing[*]}"
  apt-get "${APT_LOCK_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || die "package $p is still not installed after apt-get install"
  done
}

have_binaries() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || return 1; done
  "$BIN_DIR/kube-apiserver" --version >/dev/null 2>&1
}

check_runtime() {
  command -v etcd >/dev/null || die "etcd not on PATH after installing etcd-server"
  command -v openssl >/dev/null || die "openssl not on PATH"
}

finish() {
  check_runtime
  log "kube binaries in $BIN_DIR ($("$BIN_DIR/kube-apiserver" --version 2>&1)); etcd: $(command -v etcd)"
  echo "$BIN_DIR"
  exit 0
}

# --- fast path: cached ------------------------------------------------------
apt_install "${RUNTIME_PKGS[@]}"
if [[ $FORCE == 0 ]] && have_binaries; then
  finish
fi

# --- slow path: build, under a lock so two runs don't build at once ---------
mkdir -p "$PREFIX"
exec 9>"$PREFIX/.lock"
log "taking build lock $PREFIX/.lock"
flock 9
if [[ $FORCE == 0 ]] && have_binaries; then
  log "another run built the binaries while we waited"
  finish
fi

START=$SECONDS
apt_install "${BUILD_PKGS[@]}"
[[ -d $REFLECT2_DEB ]] || die "$REFLECT2_DEB missing (golang-github-modern-go-reflect2-dev)"
log "go: $(go version)"

# --- fetch the source with a PRIVATE apt config (deb-src of the machine's
#     own Debian sources); the machine's apt configuration is untouched. -----
APTDIR=$WORK/apt
rm -rf "$APTDIR"
mkdir -p "$APTDIR/sources.list.d" "$APTDIR/lists/partial" "$APTDIR/archives/partial"
: >"$APTDIR/sources.list"

shopt -s nullglob
deb822=(/etc/apt/sources.list.d/*.sources)
shopt -u nullglob
n=0
for f in "${deb822[@]}"; do
  # keep every stanza, turn its Types into deb-src only
  sed -E 's/^Types:.*$/Types: deb-src/I' "$f" >"$APTDIR/sources.list.d/$(basename "$f")"
  n=$((n + 1))
done
if [[ -f /etc/apt/sources.list ]]; then
  # one-line format: "deb [opts] URI suite comps" -> "deb-src ..."
  { grep -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list || true; } \
    | sed -E 's/^[[:space:]]*deb[[:space:]]/deb-src /' >"$APTDIR/sources.list"
  [[ -s $APTDIR/sources.list ]] && n=$((n + 1))
fi
[[ $n -gt 0 ]] || die "no apt sources found in /etc/apt/sources.list{,.d/*.sources} to derive deb-src entries from"

APT_PRIV=(
  -o "Dir::Etc::SourceList=$APTDIR/sources.list"
  -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
  -o "Dir::State::Lists=$APTDIR/lists"
  -o "Dir::Cache::Archives=$APTDIR/archives"
  -o "Dir::Cache::pkgcache="
  -o "Dir::Cache::srcpkgcache="
  -o "APT::Sandbox::User=root"
)

src_version() {
  apt-cache "${APT_PRIV[@]}" showsrc "$SRC_PACKAGE" 2>/dev/null \
    | awk '/^Version:/ {print $2}' | grep -F "$KUBE_VERSION" | sort -V | tail -n1
}

log "apt-get update (private deb-src lists in $APTDIR)"
apt-get "${APT_PRIV[@]}" update -q >&2 || log "private apt-get update reported errors; checking what we got"
VER=$(src_version || true)
if [[ -z $VER ]]; then
  # The machine's release has no kubernetes $KUBE_VERSION source: add the
  # same mirror(s) with the $FALLBACK_SUITE suite.
  log "no $SRC_PACKAGE $KUBE_VERSION source in the configured suites; adding suite $FALLBACK_SUITE"
  uris=$(grep -hiE '^URIs:' "$APTDIR"/sources.list.d/*.sources 2>/dev/null | grep -vi security | head -n1 | sed -E 's/^URIs:[[:space:]]*//I' || true)
  if [[ -z $uris && -s $APTDIR/sources.list ]]; then
    uris=$(grep -v security "$APTDIR/sources.list" | awk '{for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}')
  fi
  [[ -n $uris ]] || die "cannot find a Debian mirror URI in the machine's apt sources"
  {
    echo "Types: deb-src"
    echo "URIs: $uris"
    echo "Suites: $FALLBACK_SUITE"
    echo "Components: main"
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] && echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
  } >"$APTDIR/sources.list.d/zz-tidings-fallback.sources"
  apt-get "${APT_PRIV[@]}" update -q >&2 || log "private apt-get update reported errors; checking what we got"
  VER=$(src_version || true)
fi
[[ -n $VER ]] || die "Debian source package '$SRC_PACKAGE' $KUBE_VERSION not found in the machine's Debian mirrors (nor in suite $FALLBACK_SUITE)"
log "source package: $SRC_PACKAGE $VER"

DL=$WORK/dl
rm -rf "$DL" "$WORK/src"
mkdir -p "$DL"
(cd "$DL" && apt-get "${APT_PRIV[@]}" source --download-only -q "$SRC_PACKAGE=$VER" >&2) \
  || die "apt-get source --download-only $SRC_PACKAGE=$VER failed"
dsc=$(ls "$DL"/*.dsc 2>/dev/null | head -n1)
[[ -n $dsc ]] || die "no .dsc downloaded for $SRC_PACKAGE"
log "unpacking $(basename "$dsc")"
dpkg-source -x "$dsc" "$WORK/src" >&2 || die "dpkg-source -x $dsc failed"
SRC=$WORK/src
grep -q "v$KUBE_VERSION" "$SRC/hack/lib/version.sh" \
  || die "unpacked tree is not kubernetes v$KUBE_VERSION (see $SRC/hack/lib/version.sh)"

# --- patch: vendored reflect2 v1.0.1 crashes under Go >= 1.18 (first custom
#     resource -> SIGSEGV in the json decoder); use Debian's 1.0.2. ---------
log "replacing vendor/github.com/modern-go/reflect2 with Debian's $(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
cp -a "$REFLECT2_DEB" "$SRC/vendor/github.com/modern-go/reflect2"
rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod" "$SRC/vendor/github.com/modern-go/reflect2/go.sum"

# --- build (hack/lib/init.sh builds in GOPATH mode: GO111MODULE=off) --------
log "building ${BINARIES[*]} (this takes ~7-8 minutes on 2 cores)"
whats=()
for b in "${BINARIES[@]}"; do whats+=("cmd/$b"); done
(
  cd "$SRC"
  unset GOFLAGS GOBIN GOROOT   # -mod=... is invalid in GOPATH mode
  export GO111MODULE=off GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local CGO_ENABLED=0
  export HOME=$WORK/home
  mkdir -p "$HOME"
  make WHAT="${whats[*]}" >&2
) || die "kubernetes build failed (source tree kept in $SRC)"

# --- install into the cache atomically -------------------------------------
tmp=$PREFIX/bin.tmp.$$
rm -rf "$tmp"
mkdir -p "$tmp"
for b in "${BINARIES[@]}"; do
  [[ -x $SRC/_output/bin/$b ]] || die "build finished but $SRC/_output/bin/$b is missing"
  cp "$SRC/_output/bin/$b" "$tmp/$b"
done
"$tmp/kube-apiserver" --version >&2 || die "built kube-apiserver does not run"
{
  echo "source_package=$SRC_PACKAGE $VER"
  echo "go=$(go version)"
  echo "reflect2=$(dpkg-query -W -f='${Version}' golang-github-modern-go-reflect2-dev)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$tmp/BUILD-INFO"
rm -rf "$BIN_DIR.old"
[[ -d $BIN_DIR ]] && mv "$BIN_DIR" "$BIN_DIR.old"
mv "$tmp" "$BIN_DIR"
rm -rf "$BIN_DIR.old"
log "build took $((SECONDS - START))s"

if [[ ${TIDINGS_KUBE_KEEP_SRC:-0} != 1 ]]; then
  log "removing build tree $WORK (set TIDINGS_KUBE_KEEP_SRC=1 to keep it)"
  rm -rf "$WORK"
fi
finish
