#!/usr/bin/python3
"""Copy only the changed extents of an NBD export onto a copy of an older image.

    tools/copy-dirty.py SOURCE_URI BITMAP DEST [--json]

SOURCE_URI  an NBD URI of the newer point, e.g. a `rewind diff --export NAME`
            export or any snapshot: nbd://127.0.0.1:10809/NAME
BITMAP      the meta context naming the changes, e.g. qemu:dirty-bitmap:NAME
            (on a snapshot: qemu:dirty-bitmap:@seq:1234 or a marker name)
DEST        a raw image file holding the older point, or an NBD URI of one

Reads the BITMAP context's block status with libnbd (python3-libnbd), and
for every extent flagged dirty (bit 0, NBD_STATE_DIRTY) copies the source's
bytes onto DEST. Everything else is left alone: DEST becomes the newer point.
Prints the extents copied ("OFFSET+LENGTH" lines, or JSON with --json).
"""
import json
import sys

import nbd

STATE_DIRTY = 1
STEP = 1 << 30  # block status asked in 1 GiB slices
CHUNK = 4 << 20  # copies in 4 MiB pieces


def main(argv):
    args = [a for a in argv[1:] if a != '--json']
    if len(args) != 3:
        sys.stderr.write(__doc__)
        return 2
    src_uri, bitmap, dest = args
    src = nbd.NBD()
    src.add_meta_context(bitmap)
    src.connect_uri(src_uri)
    if not src.can_meta_context(bitmap):
        sys.stderr.write(f'{src_uri} does not offer the meta context {bitmap}\n')
        return 1
    size = src.get_size()
    extents = []
    off = 0
    while off < size:
        got = []

        def cb(ctx, offset, entries, err):
            if ctx == bitmap:
                got.append((offset, list(entries)))
            return 0

        src.block_status(min(STEP, size - off), off, cb)
        pos = off
        for _, entries in got:
            for i in range(0, len(entries), 2):
                length, flags = entries[i], entries[i + 1]
                length = min(length, size - pos)
                if flags & STATE_DIRTY:
                    if extents and extents[-1][0] + extents[-1][1] == pos:
                        extents[-1][1] += length
                    else:
                        extents.append([pos, length])
                pos += length
        if pos <= off:
            raise RuntimeError(f'no progress at offset {off}')
        off = pos

    if dest.startswith('nbd:') or dest.startswith('nbd+unix:') or dest.startswith('nbds:'):
        dst = nbd.NBD()
        dst.connect_uri(dest)

        def write(data, at):
            dst.pwrite(data, at)

        def finish():
            dst.flush()
            dst.shutdown()
    else:
        fh = open(dest, 'r+b')

        def write(data, at):
            fh.seek(at)
            fh.write(data)

        def finish():
            fh.flush()
            fh.close()

    for start, length in extents:
        at = start
        while at < start + length:
            n = min(CHUNK, start + length - at)
            write(src.pread(n, at), at)
            at += n
    finish()
    src.shutdown()
    if '--json' in argv:
        print(json.dumps([{'offset': s, 'length': n} for s, n in extents]))
    else:
        for s, n in extents:
            print(f'{s}+{n}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
