#!/usr/bin/env bash
# Build an emulated Raspberry Pi OS (Bookworm, arm64) Python stack and put
# edgeresnet's device side in it, so `inspect`, `predict`, `eval` and `bench`
# run on ARM kernels without a Pi.
#
#   scripts/build_pi_env.sh [DEST]
#
# DEST defaults to $EDGERESNET_PI_ENV, else ~/.cache/edgeresnet/pi-env. What it
# builds, from Debian's arm64 packages and PyPI's aarch64 wheels only:
#   DEST/rootfs   python3.11 (aarch64) and the shared libraries it loads
#   DEST/site     tflite-runtime 2.14, numpy<2, pillow, click, edgeresnet
#   DEST/python   a wrapper: qemu-aarch64-static runs the aarch64 python
# The rootfs and the wheels are cached and rebuilt only when this script's
# inputs (its package lists) change; edgeresnet itself is reinstalled on every
# run, from this checkout. Needs qemu-user-static (installed with apt-get when
# run as root) and the Debian and PyPI registries. Exits non-zero with one
# line on stderr when something cannot be had.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-${EDGERESNET_PI_ENV:-$HOME/.cache/edgeresnet/pi-env}}"
PYVER=3.11

# Raspberry Pi OS Bookworm = Debian 12 arm64 with Python 3.11: these packages
# are what python3.11 needs to import the standard library, numpy and pillow.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6
      libexpat1 zlib1g libffi8 libssl3 libbz2-1.0 liblzma5 libgcc-s1 libstdc++6
      libcrypt1 libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8
      libdb5.3 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3
      libkrb5support0 libcom-err2 libkeyutils1)
# What a Pi with only tflite-runtime has (tflite-runtime 2.14 needs numpy<2).
WHEELS=("tflite-runtime==2.14.0" "numpy==1.26.4" "pillow==11.3.0" "click==8.1.8")

die() { echo "pi-env: $*" >&2; exit 1; }

stamp_of() { printf '%s\n' "$PYVER" "${DEBS[@]}" "${WHEELS[@]}" | sha256sum | cut -c1-16; }
STAMP="$(stamp_of)"

need_qemu() {
  command -v qemu-aarch64-static >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null 2>&1 \
      || die "could not install qemu-user-static with apt-get"
  fi
  command -v qemu-aarch64-static >/dev/null || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"
}

build_rootfs() {
  local tmp="$1"
  command -v apt-get >/dev/null || die "apt-get is needed to fetch Debian arm64 packages"
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    [ "$(id -u)" = 0 ] || die "run as root once (dpkg --add-architecture arm64 && apt-get update) or build DEST elsewhere"
    dpkg --add-architecture arm64
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (no Debian mirror?)"
  fi
  mkdir -p "$tmp/debs" "$tmp/rootfs"
  local pkgs=()
  for p in "${DEBS[@]}"; do pkgs+=("$p:arm64"); done
  if ! (cd "$tmp/debs" && apt-get download -qq "${pkgs[@]}" >/dev/null 2>&1); then
    [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1
    (cd "$tmp/debs" && apt-get download -qq "${pkgs[@]}" >/dev/null 2>&1) \
      || die "apt-get download of the arm64 packages failed (no Debian mirror?)"
  fi
  for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/rootfs"; done
  rm -rf "$tmp/debs"
  [ -x "$tmp/rootfs/usr/bin/python$PYVER" ] || die "the arm64 packages gave no python$PYVER"
}

fetch_wheels() {
  local tmp="$1"
  mkdir -p "$tmp/wheels" "$tmp/site"
  python3 -m pip download -q --only-binary=:all: --no-deps --python-version "$PYVER" \
      --implementation cp --abi "cp${PYVER/./}" \
      --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
      --platform manylinux2014_aarch64 --platform any \
      -d "$tmp/wheels" "${WHEELS[@]}" >/dev/null 2>&1 \
    || die "pip could not download the aarch64 wheels (${WHEELS[*]})"
  for whl in "$tmp"/wheels/*.whl; do python3 -m zipfile -e "$whl" "$tmp/site"; done
  rm -rf "$tmp/wheels"
}

install_edgeresnet() {
  local site="$DEST/site" w
  w="$(mktemp -d)"
  trap 'rm -rf "$w"' RETURN
  python3 -m pip wheel -q --no-deps --no-build-isolation -w "$w" "$REPO" >/dev/null 2>&1 \
    || python3 -m pip wheel -q --no-deps -w "$w" "$REPO" >/dev/null 2>&1 \
    || die "could not build the edgeresnet wheel from $REPO"
  rm -rf "$site"/edgeresnet "$site"/edgeresnet-*.dist-info
  python3 -m zipfile -e "$w"/edgeresnet-*.whl "$site"
}

write_wrapper() {
  cat > "$DEST/python.tmp" <<EOF
#!/usr/bin/env bash
# Runs the emulated Raspberry Pi OS (arm64) Python 3.11 with edgeresnet's device side.
export PYTHONPATH="$DEST/site"
export PYTHONNOUSERSITE=1 EDGERESNET_EMULATED=qemu-aarch64
# The host's own interpreters and venvs mean nothing on the Pi (an x86 python cannot run here).
unset PYTHONHOME EDGERESNET_TFLITE_RUNTIME_PYTHON EDGERESNET_MEDIAPIPE_PYTHON EDGERESNET_INTERPRETER EDGERESNET_PI_PYTHON
exec qemu-aarch64-static -L "$DEST/rootfs" "$DEST/rootfs/usr/bin/python$PYVER" "\$@"
EOF
  chmod +x "$DEST/python.tmp"
  mv "$DEST/python.tmp" "$DEST/python"
}

need_qemu
if [ "$(cat "$DEST/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  mkdir -p "$(dirname "$DEST")"
  TMP="$(mktemp -d "$(dirname "$DEST")/.pi-env.build-XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  build_rootfs "$TMP"
  fetch_wheels "$TMP"
  echo "$STAMP" > "$TMP/.stamp"
  rm -rf "$DEST"
  mv "$TMP" "$DEST"
  trap - EXIT
fi
install_edgeresnet
write_wrapper
"$DEST/python" -c "import platform, tflite_runtime, numpy; assert platform.machine() == 'aarch64', platform.machine()" \
  || die "the emulated python in $DEST does not run"
echo "$DEST/python"
