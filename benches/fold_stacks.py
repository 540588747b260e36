#!/usr/bin/env python3
"""Folds `perf script` output (stdin) into one line per distinct stack, root first, frames
joined by ';' and followed by the sample count: the input flame-graph tools take. With
--top N FILE, also writes the N functions with the most samples, by self and by total
(inclusive) time, as percentages of all samples."""

import collections
import re
import sys


def frames_of(block):
    """The function names of one sample's stack, leaf first."""
    names = []
    for line in block[1:]:
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        name = re.sub(r"\+0x[0-9a-f]+$", "", parts[1].split(" (")[0])
        # Rust symbols carry a hash suffix (::h0123456789abcdef); it only splits one function.
        name = re.sub(r"::h[0-9a-f]{16}$", "", name)
        names.append(name or "[unknown]")
    return names


def main():
    top_n, top_path = 0, None
    args = sys.argv[1:]
    if args[:1] == ["--top"]:
        top_n, top_path = int(args[1]), args[2]
    stacks = collections.Counter()
    block = []
    for line in sys.stdin:
        if line.strip():
            block.append(line.rstrip("\n"))
            continue
        if block:
            frames = frames_of(block)
            if frames:
                stacks[";".join(reversed(frames))] += 1
            block = []
    if block and frames_of(block):
        stacks[";".join(reversed(frames_of(block)))] += 1
    for stack, count in stacks.most_common():
        print(f"{stack} {count}")
    if top_path:
        total = sum(stacks.values()) or 1
        own = collections.Counter()
        inclusive = collections.Counter()
        for stack, count in stacks.items():
            frames = stack.split(";")
            own[frames[-1]] += count
            for name in set(frames):
                inclusive[name] += count
        with open(top_path, "w") as out:
            out.write(f"{total} samples\n\nself%  function\n")
            for name, count in own.most_common(top_n):
                out.write(f"{100 * count / total:5.1f}  {name}\n")
            out.write("\ntotal%  function\n")
            for name, count in inclusive.most_common(top_n):
                out.write(f"{100 * count / total:6.1f}  {name}\n")


if __name__ == "__main__":
    main()
