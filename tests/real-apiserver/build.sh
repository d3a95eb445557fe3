#!/usr/bin/env bash
# Build Debian's kube-apiserver from source, once per machine, for tests/kube_real_apiserver.rs.
#
# Debian bookworm ships the `kubernetes` source package (1.20.x, Go modules vendored) but only
# the kubectl binary from it; golang-go (1.19) and etcd-server (3.4, /usr/bin/etcd) are ordinary
# packages. This script installs those, fetches the source with `apt-get source`, builds only
# cmd/kube-apiserver and copies the binary to
#
#   ${CACERTD_KUBE_CACHE:-$HOME/.cache/cacertd/kube-apiserver}/kube-apiserver
#
# If that binary already exists and answers `--version`, it does nothing. Everything it builds
# with (source tree, GOPATH, GOCACHE) lives in a temporary directory that is removed at exit, so
# the cache holds only the binary. Needs root (or sudo) for apt and network access to the
# Debian archive. On two (shared) cores it takes 7–10 minutes, ~1.8 GB of temporary disk and
# ~1.3 GB of memory at most (one compiler process); the cache then holds ~106 MB.
set -euo pipefail

cache="${CACERTD_KUBE_CACHE:-$HOME/.cache/cacertd/kube-apiserver}"
binary="$cache/kube-apiserver"
start=$SECONDS

log() { printf '[build.sh %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }

if [ -x "$binary" ] && version=$("$binary" --version 2>/dev/null); then
  log "$binary already built ($version); nothing to do"
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "need root or sudo for apt-get"; exit 1; }
  sudo="sudo"
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# `apt-get source` needs deb-src entries, which a default bookworm image does not configure.
# Mirror the deb822 file that holds the binary entries, as deb-src, in a file of its own.
has_deb_src() {
  grep -Eqs '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list ||
    grep -Eqs '^Types:.*deb-src' /etc/apt/sources.list.d/*.sources
}
if ! has_deb_src; then
  src_file=/etc/apt/sources.list.d/debian-src.sources
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    log "adding deb-src entries to $src_file (mirroring debian.sources)"
    sed -E 's/^Types:.*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
      $sudo tee "$src_file" >/dev/null
  else
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    log "adding deb-src entries for $codename main to $src_file"
    printf '%s\n' "Types: deb-src" "URIs: http://deb.debian.org/debian" \
      "Suites: $codename $codename-updates" "Components: main" \
      "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
      $sudo tee "$src_file" >/dev/null
  fi
fi

log "apt-get update"
$sudo apt-get update -qq
# dpkg-dev: apt-get source/dpkg-source; xz-utils: the source tarballs; golang-go: the compiler;
# make/rsync/bash: the kubernetes build scripts; etcd-server: the apiserver's store at test time.
had_etcd=$(dpkg-query -W -f='${Status}' etcd-server 2>/dev/null || true)
log "installing golang-go etcd-server dpkg-dev make rsync xz-utils ca-certificates"
apt_install golang-go etcd-server dpkg-dev make rsync xz-utils ca-certificates
command -v etcd >/dev/null 2>&1 || { log "etcd-server installed no etcd binary"; exit 1; }
# Under systemd the package starts a system etcd on 127.0.0.1:2379; the tests start their own
# on free ports, so a service this script brought in is stopped and disabled again.
if [ "$had_etcd" != "install ok installed" ] && [ -d /run/systemd/system ]; then
  log "disabling the etcd service etcd-server enabled (the tests run their own etcd)"
  $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
fi
log "$(go version); $(etcd --version 2>/dev/null | sed -n 1p) at $(command -v etcd)"

work=$(mktemp -d "${TMPDIR:-/tmp}/cacertd-kube-apiserver.XXXXXX")
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

log "apt-get source kubernetes (in $work/src)"
mkdir "$work/src"
chmod 0755 "$work"
# As root, apt downloads as its sandbox user, which must be able to write there.
if [ "$(id -u)" -eq 0 ] && id -u _apt >/dev/null 2>&1; then chown _apt "$work/src"; fi
(cd "$work/src" && apt-get source -qq kubernetes >/dev/null)
src=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[ -n "$src" ] || { log "apt-get source did not unpack a kubernetes-* directory"; exit 1; }
log "unpacked $(basename "$src")"

# Keep every Go artefact inside the temporary directory; never touch the caller's GOPATH/cache.
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GOFLAGS="" GOTOOLCHAIN=local
export GOPROXY=off GO111MODULE=""

built=""
log "building cmd/kube-apiserver with make WHAT=cmd/kube-apiserver"
if (cd "$src" && make WHAT=cmd/kube-apiserver KUBE_BUILD_PLATFORMS="$(go env GOOS)/$(go env GOARCH)" \
  >"$work/make.log" 2>&1); then
  built=$(find "$src/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
fi
if [ -z "$built" ]; then
  log "make route failed or produced no binary (last lines of its log follow); trying go build -mod=vendor"
  tail -n 20 "$work/make.log" >&2 || true
  (cd "$src" && GO111MODULE=on go build -mod=vendor -o "$work/kube-apiserver" ./cmd/kube-apiserver)
  built="$work/kube-apiserver"
fi

mkdir -p "$cache"
install -m 0755 "$built" "$binary.tmp"
mv "$binary.tmp" "$binary"
log "installed $binary: $("$binary" --version)"
log "removing the build tree ($(du -sh "$work" | cut -f1) of source, GOPATH and GOCACHE)"
cleanup
trap - EXIT
log "done in $((SECONDS - start))s; cache size $(du -sh "$cache" | cut -f1)"
