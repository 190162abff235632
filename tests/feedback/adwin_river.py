"""River's ADWIN over streams, for side-by-side runs with Nurture's.

    adwin_river.py STREAMS DELTA CLOCK MAX_BUCKETS MIN_WINDOW GRACE

STREAMS holds one stream per line, values separated by spaces. Prints, per
stream, one line of JSON: the indices at which River reported a drift. River's
`ADWIN.update` starts afresh on the update after a detection; so do callers of
Nurture's detector in these runs.
"""

import json
import sys

from river import drift


def main():
    path = sys.argv[1]
    delta = float(sys.argv[2])
    clock, max_buckets, min_window, grace = (int(v) for v in sys.argv[3:7])
    with open(path) as streams:
        for line in streams:
            detector = drift.ADWIN(
                delta=delta,
                clock=clock,
                max_buckets=max_buckets,
                min_window_length=min_window,
                grace_period=grace,
            )
            found = []
            for index, value in enumerate(line.split()):
                detector.update(float(value))
                if detector.drift_detected:
                    found.append(index)
            print(json.dumps(found))


if __name__ == "__main__":
    main()
