#!/bin/sh
# boot: report the guest's view (kernel, modules, disks and their sizes) and exit 0.
. /etc/rewind/lib.sh
result "kernel=$(uname -r)" "modules=$(cut -d' ' -f1 /proc/modules | sort | tr '\n' ',' | sed 's/,$//')"
for b in $(ls /sys/block | grep '^vd'); do
  result "disk_$b=$(( $(cat /sys/block/$b/size) * 512 ))" "ro_$b=$(cat /sys/block/$b/ro)"
done
result "e2fsck=$(e2fsck -V 2>&1 | head -n1 | cut -d' ' -f2)" "uptime=$(cut -d' ' -f1 /proc/uptime)"
exit 0
