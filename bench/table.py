#!/usr/bin/env python3
"""Aggregates the runs `bench/run` made into one table.

Reads DIR/passes.jsonl (one line per bench run: bench, pass, seconds, exit status) and
DIR/raw/BENCH.PASS.jsonl (one line per figure, written by the benches' `support::Report`);
PASS is `warmup` or 1..N. For each figure: the median of the measured runs for the
orchestrator and for the reference, their min-max spread, the ratio of the medians, and the
median held to the target (a target marked `every_run` must hold in every run). Prints the
markdown table, writes it to DIR/results.md and everything, raw per-run figures included, to
DIR/results.json. Standard library only.
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys


def number(value):
    """Three significant figures (whole numbers as they are), thousands grouped: the same
    as `support::number`."""
    magnitude = abs(value)
    if magnitude >= 1000 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    decimals = 2 - math.floor(math.log10(magnitude))
    return f"{value:.{decimals}f}"


def with_unit(value, unit):
    if value is None:
        return "not measured"
    return number(value) if not unit else f"{number(value)} {unit}"


def met(kind, target, value, reference):
    """Whether the figure meets its target; None when not measured or informational."""
    if kind == "info" or value is None:
        return None
    if kind == "max":
        return value <= target
    if kind == "below":
        return value < target
    if kind == "min":
        return value >= target
    if reference is None:
        return None
    if kind == "ratio_max":
        return value <= target * reference
    if kind == "ratio_min":
        return value >= target * reference
    if kind == "faster":
        return reference >= target * value
    if kind == "equal":
        return value == reference
    raise ValueError(f"unknown target kind {kind!r}")


def summary(values):
    """Median, min, max and relative spread of the values measured (None: not measured)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "spread_percent": None,
                "values": values}
    median = statistics.median(present)
    low, high = min(present), max(present)
    spread = (high - low) / abs(median) * 100 if median else None
    return {"median": median, "min": low, "max": high, "spread_percent": spread,
            "values": values}


def read_jsonl(path):
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def aggregate(out, benches, runs):
    passes = read_jsonl(os.path.join(out, "passes.jsonl")) if os.path.exists(
        os.path.join(out, "passes.jsonl")) else []
    labels = [str(n) for n in range(1, runs + 1)]
    metrics = {}
    order = []
    for bench in benches:
        for label in ["warmup"] + labels:
            path = os.path.join(out, "raw", f"{bench}.{label}.jsonl")
            if not os.path.exists(path):
                continue
            for record in read_jsonl(path):
                key = (record["bench"], record["metric"])
                if key not in metrics:
                    order.append(key)
                    metrics[key] = {"first": record, "by_pass": {}}
                metrics[key]["by_pass"][label] = record
    results = []
    for key in order:
        entry = metrics[key]
        first = entry["first"]
        target = first["target"]
        kind, target_value = target["kind"], target.get("value")
        measured = [entry["by_pass"].get(label) for label in labels]
        ours = summary([r["orchestrator"] if r else None for r in measured])
        has_reference = first.get("reference_name") is not None
        theirs = summary([r["reference"] if r else None for r in measured]) \
            if has_reference else None
        warmup = entry["by_pass"].get("warmup")
        ours["warmup"] = warmup["orchestrator"] if warmup else None
        if theirs is not None:
            theirs["warmup"] = warmup["reference"] if warmup else None
        ratio = None
        if theirs and ours["median"] is not None and theirs["median"]:
            ratio = ours["median"] / theirs["median"]
        per_run = [met(kind, target_value, r["orchestrator"], r["reference"]) if r else None
                   for r in measured]
        runs_with = sum(1 for r in measured if r is not None)
        runs_met = sum(1 for m in per_run if m)
        if kind == "info":
            result = "info"
        elif target.get("every_run"):
            judged = [m for m in per_run if m is not None]
            result = "not measured" if not judged else ("pass" if all(judged) else "miss")
        else:
            verdict = met(kind, target_value, ours["median"],
                          theirs["median"] if theirs else None)
            result = "not measured" if verdict is None else ("pass" if verdict else "miss")
        results.append({
            "bench": first["bench"],
            "metric": first["metric"],
            "unit": first["unit"],
            "target": target,
            "reference_name": first.get("reference_name"),
            "orchestrator": ours,
            "reference": theirs,
            "ratio": ratio,
            "result": result,
            "runs_measured": runs_with,
            "runs_met": runs_met if kind != "info" else None,
            "bound": first.get("bound"),
            "note": first.get("note"),
        })
    return passes, results


def spread_text(s, runs):
    if s["median"] is None or runs < 2:
        return "—"
    text = f"{number(s['min'])}–{number(s['max'])}"
    if s["spread_percent"] is not None:
        text += f" ({s['spread_percent']:.0f} %)"
    return text


def row(m, runs):
    unit = m["unit"]
    ours = m["orchestrator"]
    orchestrator = with_unit(ours["median"], unit)
    if m["reference"] is None:
        reference = "—"
    else:
        theirs = m["reference"]
        reference = f"{m['reference_name']}: {with_unit(theirs['median'], unit)}"
        if theirs["median"] is not None and runs > 1:
            reference += f" ({number(theirs['min'])}–{number(theirs['max'])})"
    ratio = "—"
    if m["ratio"] is not None:
        if m["target"]["kind"] == "faster" and m["ratio"] > 0:
            ratio = f"{number(1 / m['ratio'])}× faster"
        else:
            ratio = f"{number(m['ratio'])}×"
    target = m["target"]["text"] + (", every run" if m["target"].get("every_run") else "")
    result = {"pass": "pass", "miss": "**miss**"}.get(m["result"], m["result"])
    if m["result"] in ("pass", "miss") and m["runs_met"] is not None \
            and 0 < m["runs_met"] < m["runs_measured"]:
        result += f" ({m['runs_met']}/{m['runs_measured']} runs met)"
    if m["runs_measured"] < runs:
        result += f" ({m['runs_measured']} of {runs} runs)"
    cells = [m["bench"], m["metric"], orchestrator, spread_text(ours, runs), reference,
             ratio, target, result]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def git(*args):
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--benches", required=True)
    parser.add_argument("--started")
    parser.add_argument("--load-before")
    parser.add_argument("--monitor-idle-seconds")
    args = parser.parse_args()
    benches = [b for b in args.benches.split(",") if b]
    passes, results = aggregate(args.out, benches, args.runs)

    commit = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    load_after = " ".join(open("/proc/loadavg").read().split()[:3])
    cores = os.cpu_count()
    meta = {
        "started": args.started,
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit,
        "dirty": dirty,
        "host": platform.node(),
        "kernel": platform.release(),
        "cores": cores,
        "load_average_before": args.load_before,
        "load_average_after": load_after,
        "runs": args.runs,
        "warmup_runs": 1,
        "benches": benches,
        "monitor_idle_seconds": args.monitor_idle_seconds,
    }

    lines = [
        f"Benchmarks: commit {commit or '?'}{' (with local changes)' if dirty else ''}, "
        f"{cores} cores, release build, loopback. Each bench ran once as a warm-up and "
        f"{args.runs} time{'s' if args.runs != 1 else ''} measured; figures are medians of the "
        f"measured runs, references measured in the same runs. Load average "
        f"{args.load_before or '?'} before, {load_after} after.",
        "",
        "| bench | metric | orchestrator | spread | reference (same runs) | ratio | target | result |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    lines += [row(m, args.runs) for m in results]
    lines += [
        "",
        f"Spread: min–max of the orchestrator's figure over the {args.runs} measured "
        f"run{'s' if args.runs != 1 else ''}, and "
        "(max − min) ÷ median in percent; the reference's min–max follows its median. Ratio: "
        "orchestrator ÷ reference of the medians (for “faster”, reference ÷ orchestrator). A "
        "target marked “every run” (counts that must match) must hold in each run, the others "
        "are judged on the median.",
    ]
    missed = [m for m in results if m["result"] == "miss"]
    if missed:
        lines += ["", "Targets missed, what bounds them and what would move them:", ""]
        for m in missed:
            figure = with_unit(m["orchestrator"]["median"], m["unit"])
            if m["reference"] is not None:
                figure += (f" beside {m['reference_name']} "
                           f"{with_unit(m['reference']['median'], m['unit'])}")
            bound = m["bound"] or (
                "a count that must match in every run: a miss is a defect to find in the "
                f"runs' output (logs/{m['bench']}.N.log), not a bound.")
            lines.append(f"- **{m['bench']}: {m['metric']}**: {figure}, target "
                         f"{m['target']['text']}. {bound[0].upper()}{bound[1:]}")
    notes = [m for m in results if m["note"]]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {m['bench']}: {m['metric']}: {m['note']}" for m in notes]
    unmeasured = [m for m in results if m["result"] == "not measured"]
    if unmeasured:
        lines += ["", "Not measured (a reference missing, or the runs failed): "
                  + "; ".join(f"{m['bench']}: {m['metric']}" for m in unmeasured) + "."]

    lines += ["", "| bench | warm-up | measured runs, s each | failed runs |", "|---|---:|---|---|"]
    for bench in benches:
        mine = [p for p in passes if p["bench"] == bench]
        warm = next((p for p in mine if p["pass"] == "warmup"), None)
        measured = [p for p in mine if p["pass"] != "warmup"]
        failed = [f"{p['pass']} (exit {p['status']}, logs/{bench}.{p['pass']}.log)"
                  for p in mine if p["status"] != 0]
        warm_text = f"{warm['seconds']:.0f} s" if warm else "—"
        measured_text = ", ".join(f"{p['seconds']:.0f}" for p in measured) or "—"
        failed_text = "; ".join(failed) or "none"
        lines.append(f"| {bench} | {warm_text} | {measured_text} | {failed_text} |")
    if any(not any(m["bench"] == b for m in results) for b in benches):
        lines += ["", "No figures from: " + ", ".join(
            b for b in benches if not any(m["bench"] == b for m in results)) + "."]

    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as file:
        file.write(text)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as file:
        json.dump({"meta": meta, "passes": passes, "metrics": results}, file, indent=2,
                  ensure_ascii=False)
        file.write("\n")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
