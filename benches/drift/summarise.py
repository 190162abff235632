"""Summarises drift detections: false alarms before the change, detection
delay after it, misses.

    summarise.py DETECTIONS CHANGE POST

DETECTIONS: one JSON list of indices per stream. Prints one JSON object.
"""

import json
import sys


def main():
    path, change, post = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    false_alarms = 0
    delays = []
    misses = 0
    streams = 0
    with open(path) as lines:
        for line in lines:
            found = json.loads(line)
            streams += 1
            false_alarms += sum(1 for i in found if i < change)
            after = [i - change for i in found if i >= change]
            if after:
                delays.append(after[0])
            else:
                misses += 1
    delays.sort()

    def quantile(q):
        if not delays:
            return None
        return delays[min(len(delays) - 1, int(q * len(delays)))]

    print(json.dumps({
        "streams": streams,
        "stable_outcomes": streams * change,
        "false_alarms": false_alarms,
        "false_alarms_per_million": false_alarms / (streams * change) * 1e6 if streams else None,
        "median_delay": quantile(0.5),
        "p90_delay": quantile(0.9),
        "misses": misses,
    }))


if __name__ == "__main__":
    main()
