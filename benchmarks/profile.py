"""``python -m benchmarks.profile FILE...``: where the samples of py-spy profiles were spent.

Reads the collapsed stacks written by a scenario's ``--profile`` option and prints the
functions with the most samples of their own (self) and, below, with the most samples in them
or what they called (inclusive), both as shares of all samples that were not idle.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

#: Frames where a sampled thread is waiting, not working.
IDLE = ("EpollSelector.select", "select (selectors.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for path in args.files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
            if not frames or any(frames[-1].startswith(i) for i in IDLE):
                idle += int(count)
                continue
            total += int(count)
            own[frames[-1]] += int(count)
            for frame in set(frames):
                inclusive[frame] += int(count)
    print(f"{total} busy samples, {idle} idle ({idle / max(1, total + idle):.0%} idle)")
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n{title}:")
        for frame, count in counter.most_common(args.top):
            print(f"{count / max(1, total):6.1%}  {frame[:140]}")


if __name__ == "__main__":
    main()
