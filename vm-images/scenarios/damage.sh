#!/bin/sh
# damage: simulate an operator's or a program's mistake on the disk.
# args: disk=/dev/vda mode=rm|overwrite|both blocks=64 tree=tree
#   rm:        mount, rm -rf the tree, sync, unmount
#   overwrite: write BLOCKS 4 KiB blocks of random garbage at the start of the disk
# results: damaged=rm,overwrite removed_files=N overwritten_bytes=N
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); mode=$(arg mode both); blocks=$(arg blocks 64); tree=$(arg tree tree)
[ -b "$disk" ] || fail "no block device $disk"
done_list=""
case "$mode" in rm|both)
  mount -t ext4 "$disk" /mnt || fail "mount $disk failed"
  n=$(find "/mnt/$tree" -type f 2>/dev/null | grep -c .)
  rm -rf "/mnt/$tree"
  sync
  umount /mnt || fail "umount failed"
  result "removed_files=$n"
  done_list="rm"
  ;;
esac
case "$mode" in overwrite|both)
  dd if=/dev/urandom of="$disk" bs=4096 count="$blocks" conv=fsync 2>/dev/null || fail "dd failed"
  blockdev --flushbufs "$disk"
  result "overwritten_bytes=$((blocks * 4096))"
  done_list="${done_list:+$done_list,}overwrite"
  ;;
esac
[ -n "$done_list" ] || fail "unknown mode $mode"
sync
result "damaged=$done_list"
exit 0
