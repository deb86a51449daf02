#!/usr/bin/env python3
"""Prepare and score the Skoltech Anomaly Benchmark (SKAB) for fieldwatch (Python 3 stdlib only).

SKAB is a water-circulation test bed: a pump, valves and 8 sensors read at 1 Hz (two
accelerometers, motor current, pressure, temperature, a thermocouple, voltage, flow). Each of
its 34 runs (data/valve1, data/valve2, data/other) starts healthy and has one labelled fault
(valve closures, cavitation, rotor imbalance, ...); `anomaly` marks the faulty rows.

Usage:
  skab_score.py prepare SKAB_DATA_DIR OUT_DIR [--train-rows 400]
  skab_score.py score   OUT_DIR [--json OUT] [--within 60]

prepare: for every run writes OUT_DIR/runs/NAME.train.csv (the first --train-rows rows, which
  must all be healthy: a run whose fault begins inside them is left out, and said so),
  NAME.test.csv (the rest) and NAME.labels.csv (timestamp, anomaly) with the metric columns
  renamed to snake case. The replay learns from the train file and scores the test file.
score: reads OUT_DIR/incidents/NAME.jsonl (what `fieldwatch replay --incidents` wrote: one
  object per line with `opened_at`, optional `resolved_at`, RFC 3339 or the replay's own
  timestamps, lines sharing an `id` merged). A row is alarmed while an incident is open
  (opened_at <= t < resolved_at; unresolved: to the end of the run). Reported:
  - per-row precision, recall (1 - missed-alarm rate), F1 and false-alarm rate (alarmed
    healthy rows / healthy rows), summed over every scored row of every run, and the
    false-alarm rate of the healthy rows before each fault alone;
  - onsets opened fast: runs whose fault onset (first anomalous row) has an incident opened
    at or after the onset and within --within seconds of it; the median delay of those;
  - runs with an incident open before the fault began (a false ticket before the fault).
"""
import argparse
import csv
import datetime as dt
import glob
import json
import os
import statistics
import sys

COLUMNS = {
    "Accelerometer1RMS": "accel1_rms",
    "Accelerometer2RMS": "accel2_rms",
    "Current": "current",
    "Pressure": "pressure",
    "Temperature": "temperature",
    "Thermocouple": "thermocouple",
    "Voltage": "voltage",
    "Volume Flow RateRMS": "flow_rms",
}


def parse_ts(s):
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = dt.datetime.fromisoformat(s.replace(" ", "T"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def run_name(path):
    return "%s-%s" % (os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0])


def prepare(data_dir, out_dir, train_rows):
    runs = os.path.join(out_dir, "runs")
    os.makedirs(runs, exist_ok=True)
    kept = 0
    for path in sorted(glob.glob(os.path.join(data_dir, "*", "*.csv"))):
        if "anomaly-free" in path:
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        if not rows or "anomaly" not in rows[0]:
            print("skipped %s: no anomaly column" % path, file=sys.stderr)
            continue
        labels = [float(r["anomaly"]) >= 0.5 for r in rows]
        if any(labels[:train_rows]) or len(rows) <= train_rows:
            print("left out %s: its fault begins inside the first %d rows" % (path, train_rows))
            continue
        name = run_name(path)
        head = ["timestamp"] + list(COLUMNS.values())

        def write(suffix, part):
            with open(os.path.join(runs, name + suffix), "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(head)
                for r in part:
                    w.writerow([r["datetime"]] + [r[c] for c in COLUMNS])

        write(".train.csv", rows[:train_rows])
        write(".test.csv", rows[train_rows:])
        with open(os.path.join(runs, name + ".labels.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "anomaly"])
            for r, a in zip(rows[train_rows:], labels[train_rows:]):
                w.writerow([r["datetime"], int(a)])
        kept += 1
    print("prepared %d runs in %s" % (kept, runs))


def read_incidents(path):
    merged = {}
    order = []
    with open(path) as f:
        for n, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            obj = json.loads(line)
            if not obj.get("opened_at"):
                continue
            key = obj.get("id") or obj.get("incident_id") or ("line%d" % n)
            o = parse_ts(obj["opened_at"])
            r = parse_ts(obj["resolved_at"]) if obj.get("resolved_at") else None
            if key not in merged:
                merged[key] = [o, r, obj.get("kind") or obj.get("fault") or ""]
                order.append(key)
            else:
                m = merged[key]
                m[0] = min(m[0], o)
                if r is not None:
                    m[1] = r if m[1] is None else max(m[1], r)
    return [tuple(merged[k]) for k in order]


def score(out_dir, within, json_out):
    runs = os.path.join(out_dir, "runs")
    tp = fp = fn = tn = 0
    pre_fp = pre_n = 0
    fast, delays, early, per_run = 0, [], 0, []
    names = sorted(os.path.basename(p)[: -len(".labels.csv")] for p in glob.glob(os.path.join(runs, "*.labels.csv")))
    if not names:
        sys.exit("no runs in %s (run prepare first)" % runs)
    for name in names:
        with open(os.path.join(runs, name + ".labels.csv"), newline="") as f:
            rows = [(parse_ts(r["timestamp"]), r["anomaly"] == "1") for r in csv.DictReader(f)]
        inc_path = os.path.join(out_dir, "incidents", name + ".jsonl")
        if not os.path.exists(inc_path):
            sys.exit("missing %s (write an empty file for a run with no incidents)" % inc_path)
        incidents = read_incidents(inc_path)
        onset = next(t for t, a in rows if a)
        alarmed_rows = 0
        for t, a in rows:
            alarmed = any(o <= t and (r is None or t < r) for o, r, _ in incidents)
            alarmed_rows += alarmed
            if a and alarmed:
                tp += 1
            elif a:
                fn += 1
            elif alarmed:
                fp += 1
            else:
                tn += 1
            if t < onset:
                pre_n += 1
                pre_fp += alarmed
        opened = sorted(o for o, _, _ in incidents if onset <= o <= onset + within)
        before = any(o < onset for o, _, _ in incidents)
        early += before
        delay = opened[0] - onset if opened else None
        if delay is not None:
            fast += 1
            delays.append(delay)
        per_run.append({"run": name, "incidents": len(incidents), "opened_within": delay, "open_before_onset": before})
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    far = fp / (fp + tn) if fp + tn else 0.0
    res = {
        "runs": len(names),
        "rows": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "false_alarm_rate": far,
        "false_alarm_rate_before_fault": pre_fp / pre_n if pre_n else 0.0,
        "onsets_opened_within": fast,
        "within_s": within,
        "median_delay_s": statistics.median(delays) if delays else None,
        "runs_with_an_incident_before_onset": early,
        "per_run": per_run,
    }
    for r in per_run:
        d = "-" if r["opened_within"] is None else "%.0f s" % r["opened_within"]
        print("%-12s incidents %2d  opened within %ds: %-6s%s" % (
            r["run"], r["incidents"], within, d, "  (an incident before the fault)" if r["open_before_onset"] else ""))
    print("rows: F1 %.3f (precision %.3f, recall %.3f), false alarms %.1f %% of healthy rows (%.1f %% of those before the fault; after it, an incident stays open until its quiet period ends)" % (
        f1, precision, recall, 100 * far, 100 * pre_fp / max(pre_n, 1)))
    print("onsets opened within %d s: %d of %d (median %s s); runs with an incident before their fault: %d" % (
        within, fast, len(names), "-" if not delays else "%.0f" % statistics.median(delays), early))
    if json_out:
        with open(json_out, "w") as f:
            json.dump(res, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p.add_argument("--train-rows", type=int, default=400)
    s = sub.add_parser("score")
    s.add_argument("out_dir")
    s.add_argument("--json")
    s.add_argument("--within", type=float, default=60.0)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.data_dir, a.out_dir, a.train_rows)
    else:
        score(a.out_dir, a.within, a.json)


if __name__ == "__main__":
    main()
