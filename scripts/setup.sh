#!/usr/bin/env bash
# Valley's one-command setup. Idempotent: installs only what is missing, then builds Release.
# Fast path (everything present and the build up to date) finishes well under a second.
#
#   scripts/setup.sh            system packages + build
#   VALLEY_SETUP_EXTRAS="python3-torch chromium" scripts/setup.sh   also test extras (MPICH is installed by default)
#
# Needs: the .NET 10 SDK on PATH. On Debian/Ubuntu, root (or sudo) for apt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v dotnet >/dev/null 2>&1; then
  say "the .NET 10 SDK is required (dotnet not found on PATH); see https://dot.net"
  exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
have_apt() { command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }; }
apt_updated=0
apt_update() { if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi; }
apt_install() { apt_update; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

libstdcxx() {
  for f in /lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib/x86_64-linux-gnu/libstdc++.so.6 \
           /lib/aarch64-linux-gnu/libstdc++.so.6 /usr/lib/aarch64-linux-gnu/libstdc++.so.6; do
    [ -e "$f" ] && { echo "$f"; return; }
  done
}

# 1. libstdc++ with GLIBCXX_3.4.32 (GCC >= 13), needed by TorchSharp's native library (docs/design.md §2).
if [ "$(uname -s)" = Linux ]; then
  lib="$(libstdcxx || true)"
  if [ -n "$lib" ] && ! grep -q GLIBCXX_3.4.32 "$lib"; then
    . /etc/os-release
    if have_apt && [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
      say "libstdc++ lacks GLIBCXX_3.4.32: installing libstdc++6 from Debian 13 (trixie), pinned to priority 100"
      cat > /tmp/valley-trixie.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
      $SUDO cp /tmp/valley-trixie.sources /etc/apt/sources.list.d/valley-trixie.sources
      printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > /tmp/valley-trixie.pref
      $SUDO cp /tmp/valley-trixie.pref /etc/apt/preferences.d/valley-trixie.pref
      apt_updated=0; apt_update
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t trixie libstdc++6 >/dev/null
    elif have_apt && [ "${ID:-}" = ubuntu ]; then
      say "libstdc++ lacks GLIBCXX_3.4.32: installing a newer libstdc++6 from the ubuntu-toolchain-r PPA is needed on Ubuntu 22.04"
      apt_install software-properties-common
      $SUDO add-apt-repository -y ppa:ubuntu-toolchain-r/test >/dev/null
      apt_updated=0; apt_install libstdc++6
    else
      say "warning: $lib lacks GLIBCXX_3.4.32 (GCC >= 13); TorchSharp will not load until libstdc++ is upgraded"
    fi
  fi
fi

# 2. Fashion-MNIST and MPICH from Debian's packages, plus optional extras for tests (PyTorch cross-checks, Chromium).
want=()
if have_apt; then
  [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
  # MPICH for runs under mpiexec.mpich and the MPI tests (docs/design.md §2); one process never needs it. VALLEY_SETUP_NO_MPI=1 skips.
  if [ -z "${VALLEY_SETUP_NO_MPI:-}" ]; then
    for p in mpich libmpich-dev; do pkg_installed "$p" || want+=("$p"); done
  fi
  extras="${VALLEY_SETUP_EXTRAS:-}"
  # Debian's python3-torch uses whatever libblas.so.3 is installed; without OpenBLAS that is the reference BLAS, and the
  # PyTorch column of the benchmarks would be ~40x too slow (docs/benchmarks.md).
  case " $extras " in *" python3-torch "*) extras="$extras libopenblas0-pthread" ;; esac
  for p in $extras; do pkg_installed "$p" || want+=("$p"); done
  if [ ${#want[@]} -gt 0 ]; then
    say "installing ${want[*]}"
    apt_install "${want[@]}"
  fi
fi

# 3. Restore and build Release, skipped when nothing that feeds the build changed since the last build.
stamp="$root/artifacts/.setup-stamp"
hash="$( { git -C "$root" ls-files -co --exclude-standard -- src tests bench examples '*.sln' '*.props' '*.targets' 2>/dev/null \
          || find src tests bench examples -type f; } | sort | xargs -r stat -c '%n %s %Y' 2>/dev/null | sha1sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && [ -x "$root/artifacts/bin/Valley.Cli/release/Valley.Cli" ]; then
  exit 0
fi
say "building Valley (Release)"
log="$(mktemp)"
if ! dotnet build "$root/Valley.sln" -c Release -nologo -v:quiet >"$log" 2>&1; then
  grep -E 'error|Error' "$log" | sort -u >&2 || cat "$log" >&2
  rm -f "$log"; say "build failed"; exit 1
fi
rm -f "$log"
mkdir -p "$(dirname "$stamp")"; echo "$hash" > "$stamp"
