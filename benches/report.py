"""Writes docs/performance.md from benches/run.sh's results.jsonl.

Usage: report.py RESULTS_JSONL REPEATS DURATION > docs/performance.md
"""

import datetime
import json
import os
import platform
import statistics
import sys
from collections import defaultdict


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    path, repeats, duration = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = defaultdict(list)
    for line in open(path):
        record = json.loads(line)
        runs[record["scenario"]].append(record)

    def med(name, key):
        values = [r[key] for r in runs.get(name, []) if key in r]
        return statistics.median(values) if values else float("nan")

    def lat(name, q):
        values = [r["latency_ms"][q] for r in runs.get(name, [])]
        return statistics.median(values) if values else float("nan")

    def cpu_per_request_us(name):
        values = [r["server_cpu_seconds"] / max(r.get("total_requests", r["requests"]), 1) * 1e6 for r in runs.get(name, [])]
        return statistics.median(values) if values else float("nan")

    def switches_per_request(name):
        values = [r["server_context_switches"] / max(r.get("total_requests", r["requests"]), 1) for r in runs.get(name, []) if "server_context_switches" in r]
        return statistics.median(values) if values else float("nan")

    def paired(on, off, value):
        """Median over adjacent (on, off) runs of value(on run, off run)."""
        pairs = list(zip(runs.get(on, []), runs.get(off, [])))
        return statistics.median(value(a, b) for a, b in pairs) if pairs else float("nan")

    def paired_loss(on, off):
        return paired(on, off, lambda a, b: 1 - a["requests_per_second"] / b["requests_per_second"])

    def batch_rows(name):
        return med(name, "mean_batch_rows")

    def errors(name):
        total = defaultdict(int)
        for r in runs.get(name, []):
            for code, count in r["errors"].items():
                total[code] += count
        return ", ".join(f"{k} {v}" for k, v in sorted(total.items())) or "none"

    out = []
    w = out.append
    w("# Performance")
    w("")
    w("Regenerate with `benches/run.sh` (release build, fresh registry, every kind trained,")
    w("server and load generator on the same machine). Figures are medians of")
    w(f"{repeats} runs of {duration} s after 1 s of warm-up; ratios compare figures from the same run.")
    w("")
    w(f"- Date: {datetime.date.today().isoformat()}")
    w(f"- Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()};")
    w("  the load generator shares these cores with the server, so throughput is a floor.")
    io_threads = max(1, -(-(os.cpu_count() or 1) // 2))
    w(f"- Server defaults: `--max-batch 256 --max-delay 0ms --workers 1 --intra-threads 1`, `--io-threads {io_threads}` (half the cores).")
    w("")
    w("## Scenarios")
    w("")
    w("| scenario | what | req/s | rows/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | server context switches/req | rows per inference call | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    described = [
        ("a1", "churn via ModelInfer, 1 row, concurrency 1"),
        ("a16", "same, concurrency 16"),
        ("a64", "same, concurrency 64"),
        ("a64-typed", "PredictChurn, 1 lead (21 model rows with factors), concurrency 64"),
        ("k-a64-log", "as a64 (prediction log on, the default), alternating with k-a64-nolog"),
        ("k-a64-nolog", "as a64 with --prediction-log-sample 0"),
        ("k-typed-log", "as a64-typed (prediction log on, the default)"),
        ("k-typed-nolog", "as a64-typed with --prediction-log-sample 0"),
        ("s-a64-off", "as a64, alternating with s-a64-shadow"),
        ("s-a64-shadow", "as a64 with churn version 3 shadowing 100% of requests"),
        ("s-open-off", "as a64, open loop at half the a64 rate"),
        ("s-open-shadow", "as s-open-off with the 100% shadow"),
        ("b256", "churn via ModelInfer, 256 rows, concurrency 4"),
        ("b256-c16", "same, concurrency 16"),
        ("b256-c64", "same, concurrency 64"),
        ("c-emotion", "AnalyzeEmotion, 1 text, concurrency 16"),
        ("d-timing", "RecommendTiming, 1 lead = 672 slots, concurrency 4"),
        ("open-loop", "churn via ModelInfer, 1 row, open loop 2000 req/s"),
        ("e-batching-off", "as a64 with --max-batch 1"),
        ("e-emotion-on", "AnalyzeEmotion, 1 text, concurrency 64, batching on"),
        ("e-emotion-off", "same with --max-batch 1"),
        ("f-swaps", "as a64 while churn is promoted/rolled back every second"),
        ("e-linger-2ms", "as a64 with --max-delay 2ms (linger for stragglers)"),
        ("e-linger-emotion-2ms", "as e-emotion-on with --max-delay 2ms"),
        ("a64-io2", "as a64 with --io-threads 2"),
        ("b256-io2", "as b256 with --io-threads 2"),
    ]
    for name, what in described:
        if name not in runs:
            continue
        w(
            f"| {name} | {what} | {med(name, 'requests_per_second'):.0f} | {med(name, 'rows_per_second'):.0f} | "
            f"{lat(name, 'p50'):.2f} | {lat(name, 'p99'):.2f} | {lat(name, 'p99.9'):.2f} | {cpu_per_request_us(name):.0f} | {switches_per_request(name):.2f} | {batch_rows(name):.1f} | {errors(name)} |"
        )
    w("")
    if "i-h2load-1" in runs:
        w("## Cross-check with h2load")
        w("")
        w("h2load (Debian's nghttp2-client) replays a pre-encoded ModelInfer request (`nurture-load encode`),")
        w("4 connections × 16 streams, against the same server:")
        w("")
        w("| rows/request | h2load req/s | h2load mean ms | failed | nurture-load req/s (a64 / b256) |")
        w("|---|---|---|---|---|")
        for rows, ours in [(1, "a64"), (256, "b256")]:
            name = f"i-h2load-{rows}"
            if name in runs:
                failed = sum(r["failed"] for r in runs[name])
                w(f"| {rows} | {med(name, 'requests_per_second'):.0f} | {med(name, 'mean_ms'):.2f} | {failed} | {med(ours, 'requests_per_second'):.0f} |")
        w("")
    w("## In-process limit (straight through `ort`, one thread)")
    w("")
    w("| model | rows/call | calls/s | rows/s | µs/row |")
    w("|---|---|---|---|---|")
    for name in ["h-inprocess-1", "h-inprocess-256", "h-inprocess-emotion-1", "h-inprocess-emotion-64"]:
        if name in runs:
            r = runs[name][0]
            w(f"| {r['model']} | {r['rows_per_call']} | {med(name, 'calls_per_second'):.0f} | {med(name, 'rows_per_second'):.0f} | {med(name, 'microseconds_per_row'):.2f} |")
    w("")
    rss = runs.get("g-memory", [{}])[0].get("rss_kib", float("nan")) / 1024
    a64_cpu = cpu_per_request_us("a64")
    b256_server_row = cpu_per_request_us("b256") / 256
    inproc_row = med("h-inprocess-256", "microseconds_per_row")
    batching = med("a64", "requests_per_second") / med("e-batching-off", "requests_per_second")
    swap_ratio = lat("f-swaps", "p99") / lat("a64", "p99")
    w("## Targets")
    w("")
    w("| target | measured | met |")
    w("|---|---|---|")
    w(f"| server CPU per 1-row churn request at concurrency 64 ≤ 50 µs | {a64_cpu:.0f} µs | {'yes' if a64_cpu <= 50 else 'no'} |")
    per_row = [(c, cpu_per_request_us(name) / 256) for c, name in [(4, "b256"), (16, "b256-c16"), (64, "b256-c64")] if name in runs]
    measured = "; ".join(f"c={c}: {row:.2f} µs ({row / inproc_row:.2f}×)" for c, row in per_row)
    met_at = [c for c, row in per_row if row <= 1.5 * inproc_row]
    met = f"at c={', '.join(str(c) for c in met_at)}" if met_at else "no"
    w(f"| server cost per row, 256-row requests ≤ 1.5× in-process ({inproc_row:.2f} µs) | {measured} | {met} |")
    w(f"| batching on ≥ 3× batching off at concurrency 64 | {batching:.2f}× | {'yes' if batching >= 3 else 'no'} |")
    w(f"| p99 during hot swaps ≤ 2× steady p99 | {swap_ratio:.2f}× | {'yes' if swap_ratio <= 2 else 'no'} |")
    w(f"| resident memory, five kinds + a previous version ≤ 300 MiB | {rss:.0f} MiB | {'yes' if rss <= 300 else 'no'} |")
    off_cpu = cpu_per_request_us("e-batching-off")
    row1 = med("h-inprocess-1", "microseconds_per_row")
    bound = off_cpu / max(off_cpu - row1 + inproc_row, 1e-9)
    emotion_gain = med("e-emotion-on", "requests_per_second") / med("e-emotion-off", "requests_per_second")
    emotion_row1 = med("h-inprocess-emotion-1", "microseconds_per_row")
    emotion_row64 = med("h-inprocess-emotion-64", "microseconds_per_row")
    folder = os.path.dirname(path)

    def shares(name, sort):
        """{label: percent} from a perf report --sort SORT listing."""
        result = {}
        listing = os.path.join(folder, f"profile-{name}-{sort}.txt")
        if os.path.exists(listing):
            for line in open(listing):
                parts = line.split(None, 1)
                if len(parts) == 2 and parts[0].endswith("%"):
                    result[parts[1].strip()] = float(parts[0][:-1])
        return result

    def ort_share(name):
        return sum(v for k, v in shares(name, "dso").items() if "onnxruntime" in k) / 100

    b256_cpu = cpu_per_request_us("b256")
    b256_ort = ort_share("b256")
    b256_kernel = shares("b256", "dso").get("[kernel.kallsyms]", float("nan")) / 100
    if "k-typed-log" in runs:
        adwin = med("k-adwin-update", "ns_per_update")
        costs = {}
        for name, what in [("a64", "ModelInfer churn, 1 row (a64)"), ("typed", "PredictChurn, 1 lead (a64-typed)")]:
            on_rps, off_rps = med(f"k-{name}-log", "requests_per_second"), med(f"k-{name}-nolog", "requests_per_second")
            costs[name] = (
                what, on_rps, off_rps,
                cpu_per_request_us(f"k-{name}-log"), cpu_per_request_us(f"k-{name}-nolog"),
                paired_loss(f"k-{name}-log", f"k-{name}-nolog"),
            )
        for what, on_rps, off_rps, _, _, loss in costs.values():
            w(f"| feedback loop on (prediction log, label-free drift) loses ≤ 3% throughput, {what} at c=64 | {loss * 100:.1f}% ({on_rps:.0f} vs {off_rps:.0f} req/s) | {'yes' if loss <= 0.03 else 'no'} |")
        w(f"| one concept-drift (ADWIN) update ≤ 100 ns | {adwin:.0f} ns | {'yes' if adwin <= 100 else 'no'} |")
        if "s-a64-shadow" in runs:
            shadow_loss = paired_loss("s-a64-shadow", "s-a64-off")
            p99_ratio = paired("s-open-shadow", "s-open-off", lambda a, b: a["latency_ms"]["p99"] / b["latency_ms"]["p99"])
            open_runs = runs["s-open-shadow"]
            mirrored_share = sum(r["shadow_mirrored"] for r in open_runs) / max(sum(r.get("total_requests", r["requests"]) for r in open_runs), 1)
            w(f"| shadow at 100%, open loop at half the saturated rate: live p99 ≤ 1.1× shadow off | {p99_ratio:.2f}× | {'yes' if p99_ratio <= 1.1 else 'no'} |")
            w(f"| same: ≥ 99% of requests mirrored | {mirrored_share * 100:.1f}% | {'yes' if mirrored_share >= 0.99 else 'no'} |")
            w(f"| shadow at 100% at saturation (a64): live throughput drops ≤ 3% | {shadow_loss * 100:.1f}% | {'yes' if shadow_loss <= 0.03 else 'no'} |")
        w("")
        w("## The feedback loop's cost")
        w("")
        w("Concurrency 64, alternating servers with the prediction log on (the default: every answer logged,")
        w("its inputs counted for label-free drift) and off (`--prediction-log-sample 0`; prediction ids are")
        w(f"minted either way), {2 * int(repeats)} pairs of adjacent runs; the loss is the median of the pairs' losses")
        w("(the machine's speed drifts by several percent over the benchmark; within a pair it mostly cancels):")
        w("")
        w("| requests | on req/s | off req/s | loss | on CPU µs/req | off CPU µs/req | CPU per logged answer |")
        w("|---|---|---|---|---|---|---|")
        for what, on_rps, off_rps, log_cpu, nolog_cpu, loss in costs.values():
            w(f"| {what} | {on_rps:.0f} | {off_rps:.0f} | {loss * 100:.1f}% | {log_cpu:.1f} | {nolog_cpu:.1f} | {log_cpu - nolog_cpu:+.1f} µs |")
        w("")
        counts = runs.get("k-log-counts", [])
        dropped = sum(r["dropped"] for r in counts)
        written = sum(r["written"] for r in counts)
        w(f"The log-on servers wrote {written:,.0f} answers to the log and dropped {dropped:,.0f} (a full buffer).")
        w("")
        w("The CPU per logged answer covers appending its values to the buffer on the request path, the")
        w("writer's label-free drift counts, Parquet encoding and the store write in the background. Throughput and CPU per request swing")
        w("by several percent between runs of the same server on these shared cores, so a difference of")
        w("one or two microseconds is at the edge of what one run resolves: compare several runs before")
        w("reading a sign into it. One ADWIN update (the server's setting: 64 buckets per level, a check every 64; a window of 10 million")
        w(f"outcomes) costs {adwin:.0f} ns (`nurture-drift cost`).")
    if "s-a64-shadow" in runs:
        w("")
        w("## Shadow traffic")
        w("")
        rate = runs["s-half-rate"][0]["rate"] if runs.get("s-half-rate") else float("nan")
        w("Churn version 3 shadows 100% of the live version's requests (`nurturectl shadow churn 3 --percent 100`),")
        w(f"against no shadow, alternating on one server, {2 * int(repeats)} pairs of adjacent runs (ratios in the targets are")
        w(f"medians over the pairs); open loop at {rate:,} req/s, half the a64 rate.")
        w("The shadow's answers are computed by its own instance at the lowest scheduling priority, so at")
        w("saturation it is shed rather than served:")
        w("")
        w("| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | mirrored | shed |")
        w("|---|---|---|---|---|---|---|")
        for name in ["s-a64-off", "s-a64-shadow", "s-open-off", "s-open-shadow"]:
            total = sum(r.get("total_requests", r["requests"]) for r in runs[name])
            mirrored = sum(r.get("shadow_mirrored", 0) for r in runs[name])
            shed = sum(r.get("shadow_shed", 0) for r in runs[name])
            w(f"| {name} | {med(name, 'requests_per_second'):.0f} | {lat(name, 'p50'):.2f} | {lat(name, 'p99'):.2f} | {cpu_per_request_us(name):.1f} | {mirrored / max(total, 1) * 100:.1f}% | {shed / max(total, 1) * 100:.1f}% |")
        w("")
        w("Mirrored and shed are shares of all requests of the scenario's runs (warm-up included).")
        w("One run's open-loop p99 moves several-fold on these shared cores; the open-loop comparison")
        w("with every request of many alternating windows pooled, and an A/A beside it, is")
        w("[shadow-latency.md](shadow-latency.md) (`benches/shadow/run.sh`).")
    w("")
    w("## Reading the misses")
    w("")
    w(f"- **Batching gain on 1-row churn.** With batching off the server spends {off_cpu:.0f} µs of CPU per")
    w(f"  request, of which ONNX Runtime's 1-row call is {row1:.1f} µs (in-process figure); the rest is")
    w("  gRPC, HTTP/2, TCP and protobuf work done once per request, which batching cannot share.")
    w(f"  Even a perfect batcher that made inference cost the 256-row rate ({inproc_row:.2f} µs/row) would")
    w(f"  raise throughput at most {bound:.2f}× (Amdahl), so the 3× target cannot be met for this model on")
    w(f"  this path. In the a64 profile below ONNX Runtime is {ort_share('a64') * 100:.0f}% of the server's CPU.")
    w(f"  Batching does what it can there: {a64_cpu:.0f} µs of server CPU per request on, {off_cpu:.0f} µs off.")
    w("  Where inference weighs more, batching pays more: emotion costs")
    w(f"  {emotion_row1:.1f} µs per text alone and {emotion_row64:.1f} µs per text in batches of 64, so ONNX Runtime itself gains")
    w(f"  at most {emotion_row1 / emotion_row64:.2f}× from batching that model, which bounds any server gain; at concurrency 64")
    w(f"  the server spends {cpu_per_request_us('e-emotion-on'):.0f} µs of CPU per request with batching against")
    w(f"  {cpu_per_request_us('e-emotion-off'):.0f} µs without ({emotion_gain:.2f}× the throughput). Neither of this project's model kinds can")
    w("  show 3×: for churn ONNX Runtime gains ~12× from batching but is a few percent of the cost, for")
    w("  emotion it is most of the cost but gains under 2×. Requests per second")
    w("  are capped by the load generator's share of the two cores as much as by the server, so the")
    w("  CPU figures are the ones that carry over to a dedicated machine.")
    if "e-linger-2ms" in runs:
        w(f"- **Why `--max-delay` is 0 by default.** Lingering for stragglers (`--max-delay 2ms`) made")
        w(f"  1-row churn at concurrency 64 {med('e-linger-2ms', 'requests_per_second'):.0f} req/s at {cpu_per_request_us('e-linger-2ms'):.0f} µs of CPU per request")
        w(f"  (default: {med('a64', 'requests_per_second'):.0f} req/s, {cpu_per_request_us('a64'):.0f} µs) and emotion {med('e-linger-emotion-2ms', 'requests_per_second'):.0f} req/s at")
        w(f"  {cpu_per_request_us('e-linger-emotion-2ms'):.0f} µs (default: {med('e-emotion-on', 'requests_per_second'):.0f} req/s, {cpu_per_request_us('e-emotion-on'):.0f} µs). Closed-loop clients are")
        w("  blocked on the batch being gathered, so waiting for them idles the worker; the requests that")
        w("  queue while a batch runs already make the next batch (see rows per inference call).")
    w(f"- **256-row requests at low concurrency** cost {b256_cpu:.0f} µs of server CPU each at concurrency 4 ({b256_server_row:.2f} µs per row) against")
    w(f"  {inproc_row * 256:.0f} µs for the same ORT call in process. The b256 profile below puts ONNX Runtime at")
    w(f"  {b256_ort * 100:.0f}% of the server's CPU ({b256_cpu * b256_ort:.0f} µs per request; {inproc_row * 256:.0f} µs in process) and the kernel at")
    w(f"  {b256_kernel * 100:.0f}%: TCP receive and send of 20 KiB, epoll and futex wake-ups, and the context switches")
    w(f"  in the table ({switches_per_request('b256'):.1f} per request): at concurrency 4 the async runtime's")
    w("  thread sleeps while the inference thread computes and is woken for every answer. The")
    w("  design keeps sessions on their own worker threads (ONNX Runtime's Run is not safe to")
    w("  call concurrently, and inference must not stall the async runtime), so one hand-off each way")
    w("  per request is the floor; what is left above ORT is the per-request transport cost, which the")
    w("  in-process loop does not pay. Under load the hand-offs overlap with work and the cost falls:")
    w(f"  {cpu_per_request_us('b256-c16'):.0f} µs per request at concurrency 16 ({switches_per_request('b256-c16'):.1f} context switches), {cpu_per_request_us('b256-c64'):.0f} µs at 64")
    w(f"  ({switches_per_request('b256-c64'):.1f}), where the single inference worker is the bottleneck. `--io-threads` (half the cores by default) keeps the async")
    w(f"  runtime from oversubscribing the cores: with two runtime threads on these two cores a 256-row")
    w(f"  request costs {cpu_per_request_us('b256-io2'):.0f} µs and a 1-row one {cpu_per_request_us('a64-io2'):.0f} µs (scenarios b256-io2, a64-io2).")
    micro = os.path.join(folder, "micro.txt")
    if os.path.exists(micro):
        w("")
        w("## Micro-benchmarks (criterion, `cargo bench -p nurture-benches`)")
        w("")
        w("| benchmark | time (low, estimate, high) |")
        w("|---|---|")
        name = None
        for line in open(micro):
            stripped = line.strip()
            if not stripped:
                continue
            if "time:" in stripped:
                parts = stripped.split("time:")
                label = parts[0].strip() or name
                w(f"| {label} | {parts[1].strip()} |")
                name = None
            elif not stripped.startswith(("Benchmarking", "Found", "change:", "Performance", "No change", "Change within", "Warning", "Gnuplot", "mild", "high", "low", "severe")) and "outliers" not in stripped:
                name = stripped
        w("")
        w("`batcher_round_trip` minus `direct_session_run` is the batcher's own cost per request")
        w("(queue, hand-off to the worker thread and back).")
    for name, what in [("a64", "1-row churn, concurrency 64"), ("b256", "256-row churn, concurrency 4")]:
        listings = [os.path.join(folder, f"profile-{name}-{sort}.txt") for sort in ("comm-dso", "dso", "sym")]
        if not all(os.path.exists(listing) for listing in listings):
            continue
        w("")
        w(f"## Profile: {name} ({what}; `perf record -e cpu-clock -g` on the server)")
        w("")
        w("Where the server's CPU goes, by thread and library (`tokio-rt-worker` is the async runtime,")
        w("`infer-churn-v…` the version's inference worker), by library, then the hottest symbols:")
        w("")
        w("```text")
        for listing in listings:
            out.extend(line.rstrip() for line in open(listing))
            w("")
        out.pop()
        w("```")
    if shares("a64", "dso"):
        w("")
        w(f"ONNX Runtime is {ort_share('a64') * 100:.0f}% of the server's CPU for 1-row requests and {ort_share('b256') * 100:.0f}% for 256-row ones;")
        w("the kernel (TCP, epoll, futex wake-ups and the context switches between the async runtime and")
        w("the inference thread), the allocator and the gRPC/HTTP/2 stack take the rest.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
