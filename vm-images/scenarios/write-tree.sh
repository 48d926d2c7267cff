#!/bin/sh
# write-tree: make an ext4 filesystem on the disk (unless mkfs=0) and write a
# file tree whose content is a function of the seed, then a manifest of its
# sha256 sums inside the filesystem (/MANIFEST.sha256); sync and unmount.
# args: disk=/dev/vda seed=1 files=64 dirs=4 maxkb=64 mkfs=1 tree=tree
# results: files, bytes, manifest_sha256 (the digest of the manifest), write_seconds
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); seed=$(arg seed 1); files=$(arg files 64); dirs=$(arg dirs 4)
maxkb=$(arg maxkb 64); tree=$(arg tree tree)
[ -b "$disk" ] || fail "no block device $disk"
if [ "$(arg mkfs 1)" = 1 ]; then
  mkfs.ext4 -q -F -L rewind-vm "$disk" || fail "mkfs.ext4 failed"
  result mkfs=ok
fi
mount -t ext4 "$disk" /mnt || fail "mount $disk failed"
t0=$(cut -d' ' -f1 /proc/uptime)
rm -rf "/mnt/$tree"
bytes=0; i=0
while [ $i -lt "$files" ]; do
  d="$tree/d$((i % dirs))"
  mkdir -p "/mnt/$d"
  size=$(file_size "$seed" "$i" "$maxkb")
  gen_content "$seed" "$d/f$i" "$size" >"/mnt/$d/f$i" || fail "write $d/f$i failed"
  bytes=$((bytes + size)); i=$((i + 1))
done
(cd /mnt && find "$tree" -type f | LC_ALL=C sort | xargs sha256sum >MANIFEST.sha256) || fail "manifest failed"
sync
t1=$(cut -d' ' -f1 /proc/uptime)
result "files=$files" "bytes=$bytes" "manifest_sha256=$(sha /mnt/MANIFEST.sha256)" "write_seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')"
umount /mnt || fail "umount failed"
exit 0
