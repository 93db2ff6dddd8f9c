"""
Run every benchmark against its same-run baselines, print the table, and
write bench/results.json (figures, ratios, targets, the machine).

    python bench/run.py            # the full suite (~15 minutes on 2 cores)
    python bench/run.py --quick    # smaller counts, one run each (< 2 minutes)
    python bench/run.py --only idle,storm     # those again, the others kept

Each scenario is its own script in bench/ and can be run alone; see
docs/performance.md for what each measures and the latest figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import adaptive
import busy_links
import cluster
import datapath
import detection
import idle_fleet
import storm

FULL: dict[str, dict[str, Any]] = {
    "idle": {"connections": 10_000, "seconds": 30.0, "runs": 3},
    "busy": {"connections": 1_000, "seconds": 10.0, "rate": 10.0},
    "datapath": {"count": 500_000, "runs": 5},
    "detection": {"count": 100, "interval": 1.0, "timeout": 3.0},
    "storm": {"count": 5_000, "down": 5.0},
    "cluster": {"pushes": 2_000, "seconds": 5.0, "runs": 3},
    "adaptive": {"nat": 30.0, "interval": 5.0, "soak": 600.0},
}
QUICK: dict[str, dict[str, Any]] = {
    "idle": {"connections": 1_000, "seconds": 3.0, "runs": 1},
    "busy": {"connections": 200, "seconds": 2.0, "rate": 10.0},
    "datapath": {"count": 50_000, "runs": 1},
    "detection": {"count": 100, "interval": 0.2, "timeout": 0.6},
    "storm": {"count": 1_000, "down": 3.0},
    "cluster": {"pushes": 300, "seconds": 2.0, "runs": 1},
    "adaptive": {"nat": 3.0, "interval": 0.5, "soak": 60.0},
}
SCENARIOS: dict[str, Callable[..., Any]] = {
    "idle": idle_fleet.run,
    "busy": busy_links.run,
    "datapath": datapath.run,
    "detection": detection.run,
    "storm": storm.run,
    "cluster": cluster.run,
    "adaptive": adaptive.runInChild,
}


def row(
    scenario: str, metric: str, ours: float, baseline: Any, ratio: Any, target: str, met: bool
) -> dict[str, Any]:
    return {
        "scenario": scenario,
        "metric": metric,
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    idle = results.get("idle")
    if idle:
        ours = idle["ours"]
        for base, limit in (("floor", 0.8), ("stock", 0.7), ("autobahn", 1.0)):
            ratio = idle["ratios"][f"cpu vs {base}"]
            rows.append(
                row(
                    "idle fleet",
                    f"server CPU µs per heartbeat vs {base}",
                    ours["cpuPerRoundTripUs"],
                    idle[base]["cpuPerRoundTripUs"],
                    ratio,
                    f"<= {limit}" if base != "autobahn" else "< 1",
                    ratio <= limit if base != "autobahn" else ratio < 1,
                )
            )
        extra = idle["ratios"]["bytes/conn over floor"]
        rows.append(
            row(
                "idle fleet",
                "memory bytes per connection over a bare Protocol",
                ours["bytesPerConnection"],
                idle["floor"]["bytesPerConnection"],
                extra,
                "<= 512",
                extra <= 512,
            )
        )
    busy = results.get("busy")
    if busy:
        ours, stock = busy["ours"], busy["stock"]
        pings = ours["serverPings"] + ours["clientPings"]
        rows.append(
            row(
                "busy links",
                "PINGs sent while traffic flows",
                pings,
                stock["serverPings"] + stock["clientPings"],
                None,
                "0",
                pings == 0,
            )
        )
        key = "serverTimerOpsPerMessage"
        rows.append(
            row(
                "busy links",
                "server timer calls per message",
                ours[key],
                stock[key],
                None,
                "< 0.01",
                ours[key] < 0.01,
            )
        )
        key = "clientTimerOpsPerConnectionSecond"
        rows.append(
            row(
                "busy links",
                f"client heartbeat timer calls per connection-second "
                f"({busy['rate']:g} messages/s each)",
                ours[key],
                stock[key],
                None,
                # Re-armed once per interval (1 s), however many messages.
                "<= 1.05 (one per interval)",
                ours[key] <= 1.05,
            )
        )
    for entry in results.get("datapath") or []:
        small = entry["size"] == 100
        label = "100 B" if small else "64 KiB"
        rows.append(
            row(
                "data path",
                f"throughput msg/s, {label} vs Int32StringReceiver",
                entry["ours msg/s"],
                entry["baseline msg/s"],
                entry["ratio"],
                ">= 1.0",
                entry["ratio"] >= 1.0,
            )
        )
        for side in ("send", "recv"):
            key = f"{side} CPU ratio"
            if key in entry:
                rows.append(
                    row(
                        "data path",
                        f"{'sender' if side == 'send' else 'receiver'} CPU per message, "
                        f"{label} vs Int32StringReceiver",
                        entry[key],
                        1.0,
                        entry[key],
                        "<= 1.0",
                        entry[key] <= 1.0,
                    )
                )
        limit = 0.8 if small else 0.95
        rows.append(
            row(
                "data path",
                f"sessions: throughput msg/s, {label}, vs without",
                entry["resume msg/s"],
                entry["ours msg/s"],
                entry["resume ratio"],
                f">= {limit}",
                entry["resume ratio"] >= limit,
            )
        )
    ad = results.get("adaptive")
    if ad:
        rows.append(
            row(
                "adaptive interval",
                f"heartbeats per hour after learning, NAT {ad['nat']:g} s, base interval "
                f"{ad['interval']:g} s (learned {ad['learned_interval']} s in "
                f"{ad['learning_seconds']} s, {ad['learning_deaths']} deaths)",
                ad["heartbeats_per_hour"],
                ad["minimum_per_hour"],
                ad["ratio_to_minimum"],
                "<= 1.3",
                ad["ratio_to_minimum"] <= 1.3,
            )
        )
        rows.append(
            row(
                "adaptive interval",
                f"false deaths in a {ad['soak']:g} s soak after learning",
                ad["false_deaths_in_soak"],
                0,
                None,
                "0",
                ad["false_deaths_in_soak"] == 0,
            )
        )
    det = results.get("detection")
    if det:
        rows.append(
            row(
                "detection",
                f"worst of {det['trials']} blackholes to abort, s "
                f"(i={det['interval']}, t={det['timeout']}); median {det['median']}",
                det["max"],
                det["osKeepaliveSeconds"],
                round(det["max"] / det["timeout"], 3),
                "<= t + 0.05 s",
                det["max"] <= det["timeout"] + 0.05,
            )
        )
    st = results.get("storm")
    if st:
        for policy in st["policies"]:
            full = policy["jitter"] == "full"
            rows.append(
                row(
                    "reconnect storm",
                    f"{policy['jitter']} jitter: peak / mean attempts per 100 ms; "
                    f"all back after {policy['allBackAfter']} s",
                    policy["attemptPeakPer100ms"],
                    policy["attemptMeanPer100ms"],
                    policy["attemptPeakOverMean"],
                    "<= 2" if full else "-",
                    policy["attemptPeakOverMean"] <= 2 if full else True,
                )
            )
            rows.append(
                row(
                    "reconnect storm",
                    f"{policy['jitter']} jitter: longest wait after restart, s",
                    policy["longestWait"],
                    policy["waitBound"],
                    None,
                    "<= max delay + interval",
                    policy["longestWait"] <= policy["waitBound"],
                )
            )
    cl = results.get("cluster")
    if cl:
        local, cross = cl["latency_local"], cl["latency_cross"]
        rows.append(
            row(
                "cluster",
                f"push latency p50, ms: to a client on another node vs this node "
                f"(p99 {cross['p99_ms']} vs {local['p99_ms']})",
                cross["p50_ms"],
                local["p50_ms"],
                cl["ratios"]["cross_vs_local_latency_p50"],
                "-",
                True,
            )
        )
        rows.append(
            row(
                "cluster",
                "confirmed pushes per s: through Redis vs local",
                cl["rate_cross"],
                cl["rate_local"],
                cl["ratios"]["cross_vs_local_rate"],
                "-",
                True,
            )
        )
        rows.append(
            row(
                "cluster",
                "session echo round trips per s: saved in Redis vs in memory",
                cl["echo_redis"],
                cl["echo_memory"],
                cl["ratios"]["sessions_redis_vs_memory"],
                "-",
                True,
            )
        )
        w = cl["workers"]
        for what, key, ratio in (
            ("echo messages per s", "echo_per_s", "echo_ratio"),
            ("handshakes per s", "handshakes_per_s", "handshake_ratio"),
        ):
            rows.append(
                row(
                    "cluster",
                    f"--workers 2 vs 1: {what}",
                    w["workers2"][key],
                    w["workers1"][key],
                    w[ratio],
                    ">= 1.6",
                    w[ratio] >= 1.6,
                )
            )
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | metric | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["scenario"], r["metric"], r["ours"], r["baseline"], r["ratio"], r["target"]]
        cells.append("yes" if r["met"] else "**no**")
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import twisted

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "platform": platform.platform(),
    }
    try:
        import autobahn

        info["autobahn"] = autobahn.__version__
    except ImportError:
        info["autobahn"] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument(
        "--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")
    )
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}")
    params = QUICK if args.quick else FULL
    if "idle" in chosen:
        try:
            import autobahn  # noqa: F401
        except ImportError:
            parser.error("the idle fleet compares with autobahn: pip install autobahn")
    results: dict[str, Any] = {}
    if args.only and os.path.exists(args.output):
        # Some scenarios again: the others keep their last figures.
        with open(args.output) as f:
            results = json.load(f)
    results.update(
        {
            "quick": args.quick,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
        }
    )
    results.setdefault("parameters", {}).update({name: params[name] for name in chosen})
    results.setdefault("dates", {}).update({name: results["date"] for name in chosen})
    for name in chosen:
        started = time.monotonic()
        print(f"{name}: {params[name]} ...", file=sys.stderr, flush=True)
        results[name] = SCENARIOS[name](**params[name])
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    results["table"] = table(results)
    print(render(results["table"]))
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"\nwritten to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
