#!/usr/bin/env bash
# Installs the Debian packages Rewind's tests and benchmarks use: the real NBD
# peers and clients, filesystem tools and the VM test rig's emulator.
# Idempotent: packages already present are skipped by apt.
set -euo pipefail

PACKAGES=(
  nbdkit            # peer for benchmarks (file plugin)
  qemu-utils        # qemu-img, qemu-io, qemu-nbd
  libnbd-bin        # nbdinfo, nbdcopy, nbdfuse, nbdsh
  python3-libnbd    # libnbd bindings for /usr/bin/python3
  fio               # load generator with an NBD engine
  nbd-server        # reference server
  e2fsprogs         # mkfs.ext4, e2fsck, debugfs
  fdisk             # sfdisk: partition tables for the filesystem-reader tests
  sleuthkit         # fls, istat, icat: the oracle of the filesystem reader and catalog tests
  fuse3             # nbdfuse needs fusermount3
  qemu-system-x86   # VM test rig
  busybox-static    # VM test rig initramfs
  cpio              # VM test rig: packs the initramfs (vm-images/build.sh)
  openssl           # test certificates
  chromium          # the web console's browser tests (driven by playwright-core; never downloaded)
  iproute2          # network namespaces for two-host tests
  util-linux        # mount, losetup
  python3           # node-gyp (npm ci builds the native addon)
  make              # node-gyp
  g++               # node-gyp
  liburing-dev      # the addon's batched I/O (io_uring); without it the addon falls back to the threadpool
  libzstd-dev       # the addon's zstd compression for the archive pool
  borgbackup        # peer of tools/bench-archive.ts
  restic            # peer of tools/bench-archive.ts
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
