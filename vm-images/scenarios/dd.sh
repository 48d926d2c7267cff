#!/bin/sh
# dd: raw sequential throughput of the disk as the guest sees it (for the
# rig's benchmarks: Rewind against other NBD servers).
# args: disk=/dev/vda mode=write|read mb=64 bs=1024 (KiB) direct=1 src=zero|urandom
#   write: MB MiB from /dev/zero (or urandom) to the start of the disk, then fsync
#   read:  MB MiB from the start of the disk
# results: mode bytes seconds mb_per_s
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); mode=$(arg mode write); mb=$(arg mb 64); bs=$(arg bs 1024); src=$(arg src zero)
[ -b "$disk" ] || fail "no block device $disk"
count=$((mb * 1024 / bs))
iflag=""; oflag=""
if [ "$(arg direct 1)" = 1 ]; then iflag="iflag=direct"; oflag="oflag=direct"; fi
t0=$(cut -d' ' -f1 /proc/uptime)
case "$mode" in
  write) dd if="/dev/$src" of="$disk" bs="${bs}k" count="$count" $oflag conv=fsync 2>/tmp/dd.log || { cat /tmp/dd.log; fail "dd failed"; } ;;
  read) dd if="$disk" of=/dev/null bs="${bs}k" count="$count" $iflag 2>/tmp/dd.log || { cat /tmp/dd.log; fail "dd failed"; } ;;
  *) fail "unknown mode $mode" ;;
esac
t1=$(cut -d' ' -f1 /proc/uptime)
bytes=$((count * bs * 1024))
result "mode=$mode" "bytes=$bytes" "seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')" \
  "mb_per_s=$(awk -v a="$t0" -v b="$t1" -v n="$bytes" 'BEGIN { d = b - a; if (d <= 0) d = 0.01; printf "%.1f", n / d / 1048576 }')"
exit 0
