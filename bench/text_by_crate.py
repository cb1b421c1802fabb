#!/usr/bin/env python3
"""Where the code of a binary comes from: sizes of its text symbols summed by crate.

    python3 bench/text_by_crate.py [BINARY] [TOP]     (default target/release/opsbro, 30)

Reads `nm --size-sort -S -C` (binutils). A generic function instantiated for another crate's
type is counted under the crate that defines the function (the first path segment of its
demangled name, `<T as Trait>` impls under T's crate); symbols with no path (C, compiler
builtins) under "(other)". Sizes are of the symbols in .text, which is what is mapped.
"""
import collections
import re
import subprocess
import sys

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/opsbro"
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
out = subprocess.run(["nm", "--size-sort", "-S", "-C", binary], capture_output=True, text=True, check=True).stdout
sizes = collections.Counter()
total = 0
for line in out.splitlines():
    parts = line.split(" ", 3)
    if len(parts) < 4 or parts[2] not in "tTwW":
        continue
    size = int(parts[1], 16)
    name = parts[3].lstrip("<&*").replace("dyn ", "").replace("mut ", "")
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    crate = m.group(1) if m else "(other)"
    sizes[crate] += size
    total += size
print(f"{'crate':<28} {'KiB':>8} {'share':>6}")
for crate, size in sizes.most_common(top):
    print(f"{crate:<28} {size / 1024:>8.0f} {size / total * 100:>5.1f}%")
print(f"{'total text symbols':<28} {total / 1024:>8.0f}")
