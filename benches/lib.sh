# Helpers shared by the bench scripts; source it.

# shadow_counts METRICS_ADDRESS: "MIRRORED SHED", the server's
# nurture_shadow_requests_total so far, summed over models.
shadow_counts() {
    python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=10).read().decode()
total = {"mirrored": 0, "shed": 0}
for line in text.splitlines():
    if line.startswith("nurture_shadow_requests_total"):
        for result in total:
            if f'result="{result}"' in line:
                total[result] += int(float(line.rsplit(" ", 1)[1]))
print(total["mirrored"], total["shed"])
PY
}

# abba PAIRS A B: runs the commands A and B in PAIRS adjacent pairs, A first
# in odd pairs and B first in even ones (A B B A A B ...), each given the
# pair's number, so a drift of the machine or the server over the section
# does not always fall on the same side.
abba() {
    local pairs="$1" a="$2" b="$3" pass
    for pass in $(seq 1 "$pairs"); do
        if [ $((pass % 2)) -eq 1 ]; then
            "$a" "$pass"
            "$b" "$pass"
        else
            "$b" "$pass"
            "$a" "$pass"
        fi
    done
}
