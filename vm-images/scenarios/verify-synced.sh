#!/bin/sh
# verify-synced: after a crash of the writer scenario, check that the
# filesystem needs at most a journal replay, and that files 1..N (all synced
# before the crash) are present with their exact content.
#   1. replay the journal if the filesystem needs it (e2fsck -E journal_only)
#   2. e2fsck -fn must then be clean
#   3. mount and compare files 1..N with the content the seed defines
# args: disk=/dev/vda seed=1 n=N maxkb=64 dir=w
# results: needs_recovery=yes|no fsck=clean|dirty fsck_exit=N synced_ok=N
#          synced_bad=N files_total=N
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); seed=$(arg seed 1); n=$(arg n 0); maxkb=$(arg maxkb 64); dir=$(arg dir w)
[ -b "$disk" ] || fail "no block device $disk"
ok=1
if dumpe2fs -h "$disk" 2>/dev/null | grep -q '^Filesystem features:.*needs_recovery'; then
  result needs_recovery=yes
  e2fsck -E journal_only -y "$disk" >/tmp/replay.log 2>&1
  result "replay_exit=$?"
else
  result needs_recovery=no
fi
fsck_check "$disk"
result "fsck=$FSCK" "fsck_exit=$FSCK_RC"
[ "$FSCK" = clean ] || ok=0
mount -t ext4 -o ro "$disk" /mnt || { result mount=failed; exit 1; }
good=0; bad=0; i=1
while [ $i -le "$n" ]; do
  f="/mnt/$dir/f$i"
  if [ -f "$f" ] && [ "$(sha "$f")" = "$(gen_content "$seed" "$dir/f$i" "$(file_size "$seed" "$i" "$maxkb")" | sha)" ]; then
    good=$((good + 1))
  else
    bad=$((bad + 1)); echo "bad or missing: $dir/f$i" >&2
  fi
  i=$((i + 1))
done
total=$(ls "/mnt/$dir" 2>/dev/null | grep -c .)
umount /mnt
result "synced_ok=$good" "synced_bad=$bad" "files_total=$total"
[ $bad -eq 0 ] || ok=0
[ $ok = 1 ] && exit 0
exit 1
