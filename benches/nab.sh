#!/usr/bin/env bash
# Scores fieldwatch on the Numenta Anomaly Benchmark.
#
#   benches/nab.sh [NAB_DIR] [CONFIG]   (defaults: ../shared/nab, config/nab.toml)
#
# Builds the release binary, replays every NAB data file through `fieldwatch replay` with the one
# committed config (config/nab.toml), then scores
#   - the incidents opened (one alert per incident) with `nab_score.py alerts`, and
#   - the per-row anomaly_score column with `nab_score.py scores` at a fixed threshold,
# and prints the lead time of the first incident before each labelled failure of
# realKnownCause/machine_temperature_system_failure.csv. Only the scorer and the lead-time report
# read the labels. Results are left in target/nab/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nab="${1:-$root/../shared/nab}"
config="${2:-$root/config/nab.toml}"
if [[ ! -d "$nab/data" ]]; then
    echo "NAB corpus not found at $nab (expected $nab/data); nothing to benchmark."
    echo "Usage: benches/nab.sh [NAB_DIR]"
    exit 0
fi
nab="$(cd "$nab" && pwd)"
scorer="$nab/../tools/nab_score.py"
if [[ ! -f "$scorer" ]]; then
    echo "NAB scorer not found at $scorer; nothing to benchmark."
    exit 0
fi
windows="$nab/labels/combined_windows.json"
profiles_arg=()
[[ -f "$nab/config/profiles.json" ]] && profiles_arg=(--profiles "$nab/config/profiles.json")
score_threshold="${NAB_SCORE_THRESHOLD:-0.5}"

echo "== building (release)"
(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/fieldwatch"

out="$root/target/nab"
rm -rf "$out"
mkdir -p "$out/results" "$out/incidents"
: >"$out/replay.log"

echo "== replaying $nab/data with $(basename "$config")"
mapfile -t files < <(cd "$nab/data" && find . -name '*.csv' | sed 's|^\./||' | sort)
start=$(date +%s.%N)
for rel in "${files[@]}"; do
    mkdir -p "$out/results/$(dirname "$rel")" "$out/incidents/$(dirname "$rel")"
    "$bin" replay --config "$config" --input "$nab/data/$rel" \
        --output "$out/results/$rel" --incidents "$out/incidents/${rel%.csv}.jsonl" 2>>"$out/replay.log"
done
end=$(date +%s.%N)
wall=$(python3 -c "print(f'{$end - $start:.1f}')")
rows=$(python3 - "$out/results" <<'PY'
import sys, pathlib
print(sum(sum(1 for _ in open(p)) - 1 for p in pathlib.Path(sys.argv[1]).rglob("*.csv")))
PY
)
echo "replayed ${#files[@]} files, $rows rows in $wall s (wall, one process per file)"

# One alert row per incident opened: file,timestamp (the timestamp as written in the data file).
# The incidents file also has update and resolve lines; only openings are alerts.
python3 - "$out/incidents" "$out/alerts.csv" <<'PY'
import csv, json, pathlib, sys
root, dest = pathlib.Path(sys.argv[1]), sys.argv[2]
with open(dest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "timestamp"])
    for p in sorted(root.rglob("*.jsonl")):
        rel = str(p.relative_to(root).with_suffix(".csv"))
        for line in open(p):
            if line.strip() and json.loads(line).get("event", "open") == "open":
                w.writerow([rel, json.loads(line)["timestamp"]])
PY
echo "$(($(wc -l <"$out/alerts.csv") - 1)) incidents opened"

echo
echo "== NAB score of the incidents (alerts)"
python3 "$scorer" alerts --data "$nab/data" --windows "$windows" "${profiles_arg[@]}" \
    --json "$out/alerts_score.json" "$out/alerts.csv"

echo
echo "== NAB score of the raw anomaly_score column (detection iff score >= $score_threshold)"
python3 "$scorer" scores --data "$nab/data" --windows "$windows" "${profiles_arg[@]}" \
    --threshold "$score_threshold" --json "$out/scores_score.json" "$out/results"

echo
echo "== lead time: realKnownCause/machine_temperature_system_failure.csv"
python3 - "$nab/labels" "$out/incidents/realKnownCause/machine_temperature_system_failure.jsonl" <<'PY'
import json, sys
from datetime import datetime
labels_dir, incidents = sys.argv[1], sys.argv[2]
key = "realKnownCause/machine_temperature_system_failure.csv"
parse = lambda s: datetime.strptime(s.split(".")[0], "%Y-%m-%d %H:%M:%S")
windows = [(parse(a), parse(b)) for a, b in json.load(open(f"{labels_dir}/combined_windows.json"))[key]]
labels = [parse(t) for t in json.load(open(f"{labels_dir}/combined_labels.json"))[key]]
events = [json.loads(l) for l in open(incidents) if l.strip()]
opened = sorted(parse(e["timestamp"]) for e in events if e.get("event", "open") == "open")
prev_end = datetime.min
for (a, b), failure in zip(windows, labels):
    hours = lambda t: (failure - t).total_seconds() / 3600
    rel = lambda t: f"{hours(t):.1f} h before the failure" if hours(t) >= 0 else f"{-hours(t):.1f} h after the failure"
    since_prev = next((t for t in opened if prev_end < t <= b), None)
    in_window = next((t for t in opened if a <= t <= b), None)
    line = f"failure {failure} (window {a} .. {b}):"
    if since_prev is not None and since_prev < a:
        line += f" first incident since the previous window {since_prev} ({rel(since_prev)}, before the window);"
    if in_window is None:
        line += " no incident in the window"
    else:
        line += f" first incident in the window {in_window} ({rel(in_window)})"
    print(line)
    prev_end = b
PY
