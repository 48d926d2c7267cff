# Shell helpers for the guest's scenarios (sourced: . /etc/rewind/lib.sh).

# arg NAME [DEFAULT]: the scenario argument NAME (last one wins), else DEFAULT.
arg() {
  _v=$(sed -n "s/^$1=//p" /run/rewind/args 2>/dev/null | tail -n1)
  if [ -n "$_v" ]; then echo "$_v"; else echo "${2:-}"; fi
}

# result KEY=VALUE ...: one parseable line on the serial console.
result() { echo "REWIND-RESULT $*"; }

# fail MESSAGE: report an error and end the scenario with status 1.
fail() { result "error=$(echo "$*" | tr ' =' '_:')"; exit 1; }

# gen_content SEED NAME BYTES: deterministic content of a file, a function of
# the seed, the file's name and its size. Every 4 KiB block differs (it starts
# with a header naming the file and the block) and the rest of each block is
# filler derived from the same inputs.
gen_content() {
  awk -v s="$1" -v p="$2" -v n="$3" 'BEGIN {
    h = (s * 69069 + n * 31 + length(p) * 7 + 7) % 2147483648
    hex = "0123456789abcdef"; f = ""
    for (i = 0; i < 64; i++) { h = (h * 69069 + 1) % 2147483648; f = f substr(hex, int(h / 134217728) + 1, 1) }
    while (length(f) < 4096) f = f f
    for (b = 0; b * 4096 < n; b++) {
      h = (h * 69069 + 1) % 2147483648
      hdr = sprintf("%s %s %08d %08x ", s, p, b, h)
      printf "%s%s\n", hdr, substr(f, (h % 61) + 1, 4095 - length(hdr))
    }
  }' | head -c "$3"
}

# file_size SEED INDEX MAXKB: deterministic size in bytes, 1..MAXKB KiB, not always block aligned.
file_size() {
  echo $(( ( ($2 * 7919 + $1 * 104729) % $3 + 1) * 1024 - ($2 % 3) * 100 ))
}

# sha FILE: the sha256 of FILE (or of stdin with no FILE).
sha() { sha256sum "$@" | cut -d' ' -f1; }

# fsck_check DISK: runs e2fsck -fn DISK (changes nothing); sets FSCK to
# "clean" or "dirty" and FSCK_RC to its exit status; its output goes to stderr.
fsck_check() {
  e2fsck -fn "$1" >/tmp/fsck.log 2>&1
  FSCK_RC=$?
  sed 's/^/  e2fsck: /' /tmp/fsck.log | tail -n 20 >&2
  if [ $FSCK_RC -eq 0 ]; then FSCK=clean; else FSCK=dirty; fi
}
