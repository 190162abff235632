"""One window's record for benches/shadow/run.sh: nurture-load's JSON report
plus what was measured around it, printed as one JSON line.

Arguments: REPORT STATE CYCLE SLOT BUCKETS "MIRRORED SHED" before and after,
"STEAL IDLE TOTAL" jiffies before and after, and the server's thread-group
ticks (benches/shadow/threads.py) before and after.
"""

import json
import os
import sys


def main():
    (report, state, cycle, slot, buckets, shadow_before, shadow_after,
     jiffies_before, jiffies_after, threads_before, threads_after) = sys.argv[1:12]
    window = json.load(open(report))
    window.update(state=state, cycle=int(cycle), slot=int(slot), buckets=buckets)
    before, after = [int(x) for x in shadow_before.split()], [int(x) for x in shadow_after.split()]
    window["mirrored"], window["shed"] = after[0] - before[0], after[1] - before[1]
    j0, j1 = [int(x) for x in jiffies_before.split()], [int(x) for x in jiffies_after.split()]
    total = max(j1[2] - j0[2], 1)
    window["steal_share"] = (j1[0] - j0[0]) / total
    window["busy_share"] = 1 - (j1[1] - j0[1]) / total
    # µs of the server's CPU per request sent, by thread group.
    t0, t1 = json.loads(threads_before), json.loads(threads_after)
    per_request = 1e6 / os.sysconf("SC_CLK_TCK") / max(window["total_requests"], 1)
    window["thread_us_per_request"] = {
        name: (t1[name] - t0.get(name, 0)) * per_request for name in t1
    }
    window["server_cpu_us_per_request"] = sum(window["thread_us_per_request"].values())
    print(json.dumps(window))


if __name__ == "__main__":
    main()
