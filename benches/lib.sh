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
