#!/bin/sh
# verify-tree: check the filesystem with `e2fsck -fn` (no changes), mount it
# read-only and check every file of the tree against /MANIFEST.sha256. With
# seed=, also regenerate the expected tree and compare; with expect=, compare
# the manifest's digest with it. Exit 0 only if everything holds.
# args: disk=/dev/vda seed= files= dirs=4 maxkb=64 expect= tree=tree
# results: fsck=clean|dirty fsck_exit=N mount=ok|failed manifest=present|missing
#          files_ok=N files_bad=N manifest_sha256=... regen=match|differ tree=ok|bad
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); expect=$(arg expect); seed=$(arg seed); tree=$(arg tree tree)
[ -b "$disk" ] || fail "no block device $disk"
ok=1
fsck_check "$disk"
result "fsck=$FSCK" "fsck_exit=$FSCK_RC"
[ "$FSCK" = clean ] || ok=0
if mount -t ext4 -o ro "$disk" /mnt 2>/tmp/mount.log || mount -t ext4 -o ro,noload "$disk" /mnt 2>>/tmp/mount.log; then
  result mount=ok
else
  cat /tmp/mount.log >&2
  result mount=failed tree=bad
  exit 1
fi
if [ ! -f /mnt/MANIFEST.sha256 ]; then
  result manifest=missing tree=bad
  umount /mnt; exit 1
fi
result manifest=present "manifest_sha256=$(sha /mnt/MANIFEST.sha256)"
[ -z "$expect" ] || [ "$(sha /mnt/MANIFEST.sha256)" = "$expect" ] || { result manifest_expected=differ; ok=0; }
total=$(grep -c . /mnt/MANIFEST.sha256)
bad=$(cd /mnt && sha256sum -c MANIFEST.sha256 2>/dev/null | grep -vc ': OK$')
result "files_ok=$((total - bad))" "files_bad=$bad"
[ "$bad" -eq 0 ] || ok=0
if [ -n "$seed" ]; then
  # Regenerate the tree the seed describes in RAM and compare the manifests.
  files=$(arg files "$total"); dirs=$(arg dirs 4); maxkb=$(arg maxkb 64)
  mkdir -p /tmp/regen; i=0
  while [ $i -lt "$files" ]; do
    d="$tree/d$((i % dirs))"; mkdir -p "/tmp/regen/$d"
    gen_content "$seed" "$d/f$i" "$(file_size "$seed" "$i" "$maxkb")" >"/tmp/regen/$d/f$i"
    i=$((i + 1))
  done
  if (cd /tmp/regen && find "$tree" -type f | LC_ALL=C sort | xargs sha256sum) | cmp -s - /mnt/MANIFEST.sha256; then
    result regen=match
  else
    result regen=differ; ok=0
  fi
  rm -rf /tmp/regen
fi
umount /mnt
if [ $ok = 1 ]; then result tree=ok; exit 0; fi
result tree=bad
exit 1
