"""Prints a process's CPU time so far by thread group, as JSON of clock ticks.

Argument: the server's pid. Groups, by thread name: `io` (the async runtime's
workers: gRPC, HTTP/2, protobuf, the request path), `live` and `shadow`
(inference workers of churn versions 1 and 2; the shadow's collector counts
as `shadow`), `log` (the prediction log's encoder) and `other`.
"""

import json
import os
import sys


def group(name):
    if name.startswith("tokio-rt-worker"):
        return "io"
    if name.startswith("infer-churn-v1-"):
        return "live"
    if name.startswith(("infer-churn-v2-", "shadow-collecto")):
        return "shadow"
    if name.startswith("log-encoder"):
        return "log"
    return "other"


def main():
    tasks = f"/proc/{sys.argv[1]}/task"
    ticks = {}
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        # "pid (name) state ...": the name may hold spaces; utime and stime
        # are the 12th and 13th fields after it.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[group(name)] = ticks.get(group(name), 0) + int(fields[11]) + int(fields[12])
    print(json.dumps(ticks))


if __name__ == "__main__":
    main()
