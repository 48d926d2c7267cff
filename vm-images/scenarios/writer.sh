#!/bin/sh
# writer: write files continuously with a periodic sync, for crash tests.
# After every EVERY files it runs `sync` and then prints
#   REWIND-SYNCED n=N
# so the host knows files 1..N were durable (flushed) when it saw the line.
# File N is DIR/fN with gen_content(seed, "DIR/fN", file_size(seed, N, maxkb)).
# args: disk=/dev/vda seed=1 mkfs=1 every=4 count=0 (0: until killed) maxkb=64 dir=w
. /etc/rewind/lib.sh
disk=$(arg disk /dev/vda); seed=$(arg seed 1); every=$(arg every 4); count=$(arg count 0)
maxkb=$(arg maxkb 64); dir=$(arg dir w)
[ -b "$disk" ] || fail "no block device $disk"
if [ "$(arg mkfs 1)" = 1 ]; then
  mkfs.ext4 -q -F -L rewind-vm "$disk" || fail "mkfs.ext4 failed"
  result mkfs=ok
fi
mount -t ext4 "$disk" /mnt || fail "mount $disk failed"
mkdir -p "/mnt/$dir"
sync
echo "REWIND-SYNCED n=0"
n=0
while [ "$count" = 0 ] || [ $n -lt "$count" ]; do
  n=$((n + 1))
  gen_content "$seed" "$dir/f$n" "$(file_size "$seed" "$n" "$maxkb")" >"/mnt/$dir/f$n" || fail "write f$n failed"
  if [ $((n % every)) -eq 0 ]; then
    sync
    echo "REWIND-SYNCED n=$n"
  fi
done
sync
echo "REWIND-SYNCED n=$n"
umount /mnt
result "written=$n"
exit 0
