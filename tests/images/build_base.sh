#!/usr/bin/env bash
# Build (or reuse) the local base images the image tests build Dockerfile.sidecar and
# Dockerfile.operator on, since no public base image (python:3.11-slim) can be pulled here:
#
#   localhost/tidings-base:bookworm     Debian bookworm, `debootstrap --variant=minbase` from the
#                                       Debian mirror the machine's apt uses, trimmed like Debian's
#                                       own slim images (no docs, man pages, locales, apt lists)
#   localhost/tidings-python:bookworm   + Debian's python3 (3.11) and python3-venv, with apt: what
#                                       python:3.11-slim gives the Dockerfiles (python3, venv, pip)
#
# Installs with apt, when missing: podman (its build runs RUN steps with --isolation=chroot: no
# OCI runtime is needed, and none can run a container here), debootstrap, and iproute2 (the
# image test's network namespace).
#
# Cached OUTSIDE the clone, in ${TIDINGS_IMAGES_CACHE:-/var/cache/tidings/images}/:
#     base-bookworm-<RECIPE>.tar    the trimmed debootstrap tree (~80 MB, ~45 s to make); bump
#                                   RECIPE when the debootstrap part below changes
#     base-bookworm-<RECIPE>.info   mirror, debootstrap version, date
#     build-pip.conf                written by the image test (pip's CA bundle in RUN steps)
#     .lock                         flock: two runs never build at once
# and in podman's storage (/var/lib/containers): the two images, labelled with the recipe and the
# digests of this script and Containerfile.python; they are re-imported / rebuilt from the tarball
# (~15 s) when missing or when either file changed. A cached run only checks and exits (<1 s).
#
# Usage: tests/images/build_base.sh [--force]
#   --force   debootstrap and rebuild both images even when cached
# Progress goes to stderr; the LAST line on stdout is the Python base image's name.
set -euo pipefail

SUITE=bookworm
RECIPE=v2
BASE_IMAGE=localhost/tidings-base:$SUITE
PYTHON_IMAGE=localhost/tidings-python:$SUITE
PYTHON_PKGS=(python3 python3-venv)
LABEL=org.tidings.base-recipe
# podman: builds (no buildah, fuse-overlayfs or uidmap needed as root: native overlay storage, chroot
# isolation); debootstrap: the base tree; iproute2: `ip link set lo up` in the test's own netns
HOST_PKGS=(podman debootstrap iproute2)

CACHE=${TIDINGS_IMAGES_CACHE:-/var/cache/tidings/images}
TARBALL=$CACHE/base-$SUITE-$RECIPE.tar
HERE=$(cd "$(dirname "$0")" && pwd)

FORCE=0
for arg in "$@"; do
  case $arg in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "build_base.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

log() { printf '[build_base.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '\n[build_base.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (apt-get, debootstrap and podman's storage)"
command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-based machine"

export DEBIAN_FRONTEND=noninteractive
APT_LOCK_OPTS=(-o DPkg::Lock::Timeout=600)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# Install the packages among "$@" that are not installed yet; fail loudly when apt cannot.
apt_install() {
  local missing=() p i
  for p in "$@"; do installed "$p" || missing+=("$p"); done
  [[ ${#missing[@]} == 0 ]] && return 0
  for i in 1 2 3; do
    apt-get "${APT_LOCK_OPTS[@]}" update -q >&2 && break
    [[ $i == 3 ]] && die "apt-get update failed 3 times (are the Debian mirrors reachable?)"
    log "apt-get update failed (try $i/3), retrying in 5s"; sleep 5
  done
  log "apt-get install ${missing[*]}"
  apt-get "${APT_LOCK_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
  for p in "${missing[@]}"; do
    installed "$p" || die "package $p is still not installed after apt-get install"
  done
}

# The images carry the recipe they were made from, with the digests of this script and of
# Containerfile.python: an edit of either re-imports / rebuilds the images (not the tarball).
BASE_KEY=$SUITE-$RECIPE-$(sha256sum "$HERE/build_base.sh" | cut -c1-12)
PYTHON_KEY=$BASE_KEY-$(sha256sum "$HERE/Containerfile.python" | cut -c1-12)
label_of() { podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
fresh() { [[ $(label_of "$1") == "$2" ]]; }
cached() { [[ -s $TARBALL ]] && fresh "$BASE_IMAGE" "$BASE_KEY" && fresh "$PYTHON_IMAGE" "$PYTHON_KEY"; }

finish() {
  log "$PYTHON_IMAGE ($(podman image inspect --format '{{.Id}}' "$PYTHON_IMAGE" | cut -c1-12)) from $TARBALL"
  echo "$PYTHON_IMAGE"
  exit 0
}

# The Debian mirror apt already uses here (deb822 .sources or one-line sources.list).
debian_mirror() {
  local uri
  uri=$(grep -hiE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -E 's/^URIs:[[:space:]]*//I' | tr ' ' '\n' | grep -E '/debian/?$' | head -n1 || true)
  if [[ -z $uri && -f /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*\/debian\/?$/) {print $i; exit}}' \
          /etc/apt/sources.list)
  fi
  [[ -n $uri ]] || die "no Debian mirror (a URI ending in /debian) in /etc/apt/sources.list{,.d/*.sources}"
  echo "${uri%/}"
}

# --- fast path: cached -----------------------------------------------------------------------
apt_install "${HOST_PKGS[@]}"
if [[ $FORCE == 0 ]] && cached; then finish; fi

# --- slow path, under a lock so two runs don't build at once -------------------------------------
mkdir -p "$CACHE" || die "cannot create $CACHE"
exec 9>"$CACHE/.lock"
log "taking lock $CACHE/.lock"
flock 9
if [[ $FORCE == 0 ]] && cached; then log "another run built the images while we waited"; finish; fi
START=$SECONDS

if [[ $FORCE == 1 || ! -s $TARBALL ]]; then
  MIRROR=$(debian_mirror)
  work=$(mktemp -d "$CACHE/work.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  log "debootstrap --variant=minbase $SUITE from $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # What Debian's slim images leave out, for this tree and every package installed into it later.
  cat >"$root/etc/dpkg/dpkg.cfg.d/tidings-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{man,info,locale,lintian}/*
  # apt keeps no .debs; the suite's updates and the security archive, as on this machine.
  cat >"$root/etc/apt/apt.conf.d/tidings-clean" <<'EOF'
APT::Keep-Downloaded-Packages "false";
Acquire::Languages "none";
EOF
  security=$(grep -hiE '^URIs:.*debian-security' /etc/apt/sources.list.d/*.sources 2>/dev/null \
             | sed -E 's/^URIs:[[:space:]]*//I' | head -n1 || true)
  {
    echo "deb $MIRROR $SUITE main"
    echo "deb $MIRROR $SUITE-updates main"
    echo "deb ${security:-${MIRROR%/debian}/debian-security} $SUITE-security main"
  } >"$root/etc/apt/sources.list"
  # bookworm-updates and -security on top of the debootstrapped release, in the tree itself (an
  # upgrade in a later layer would store both versions of every upgraded file).
  log "apt-get upgrade in the tree (${SUITE}-updates, ${SUITE}-security)"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c 'apt-get update -q && apt-get upgrade -y -q && apt-get clean' >"$work/upgrade.log" 2>&1 \
    || { tail -n 30 "$work/upgrade.log" >&2; die "apt-get upgrade in the tree failed (log above)"; }
  # The container runtime provides /dev, /proc, /sys, /etc/hosts and /etc/resolv.conf.
  rm -rf "$root"/dev/* "$root"/proc/* "$root"/sys/* "$root"/var/lib/apt/lists/* \
         "$root"/var/cache/apt/* "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* \
         "$root"/etc/hostname "$root"/etc/resolv.conf
  tar --numeric-owner --xattrs -C "$root" -cf "$work/base.tar" . || die "tar of the tree failed"
  mv "$work/base.tar" "$TARBALL"
  find "$CACHE" -maxdepth 1 -name "base-$SUITE-*" ! -name "base-$SUITE-$RECIPE.*" -delete  # older recipes
  {
    echo "suite=$SUITE recipe=$RECIPE mirror=$MIRROR security=${security:-}"
    echo "debootstrap=$(dpkg-query -W -f='${Version}' debootstrap)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$CACHE/base-$SUITE-$RECIPE.info"
  rm -rf "$work"
  trap - EXIT
  log "tarball $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

# the image a rebuild replaces, removed once it is no longer tagged (none other is touched)
drop_replaced() {
  [[ -n $1 ]] || return 0
  [[ $(podman image inspect --format '{{len .RepoTags}}' "$1" 2>/dev/null || echo 1) == 0 ]] \
    && podman rmi "$1" >/dev/null 2>&1 || true
}
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

old_base=$(image_id "$BASE_IMAGE")
old_python=$(image_id "$PYTHON_IMAGE")
if [[ $FORCE == 1 ]] || ! fresh "$BASE_IMAGE" "$BASE_KEY"; then
  log "podman import $TARBALL $BASE_IMAGE"
  podman import --change "LABEL $LABEL=$BASE_KEY" --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$TARBALL" "$BASE_IMAGE" >&2 || die "podman import failed"
fi

if [[ $FORCE == 1 ]] || ! fresh "$PYTHON_IMAGE" "$PYTHON_KEY"; then
  log "podman build $PYTHON_IMAGE (apt-get install ${PYTHON_PKGS[*]})"
  podman build --isolation=chroot --pull=never --no-cache --file "$HERE/Containerfile.python" \
    --build-arg "BASE=$BASE_IMAGE" --build-arg "PACKAGES=${PYTHON_PKGS[*]}" \
    --label "$LABEL=$PYTHON_KEY" --tag "$PYTHON_IMAGE" "$HERE" >&2 \
    || die "podman build of $PYTHON_IMAGE failed"
fi
drop_replaced "$old_python"
drop_replaced "$old_base"
cached || die "the images are still not there after building them"
log "built in $((SECONDS - START))s"
finish
