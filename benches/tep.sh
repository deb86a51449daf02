#!/usr/bin/env bash
# Scores fieldwatch on the Tennessee Eastman Process benchmark (52 variables, 22 test runs).
#
#   benches/tep.sh [TEP_DIR] [CONFIG]   (defaults: ../shared/tep, config/fieldwatch.toml)
#
# Builds the release binary, then replays every test run `test/dNN.csv` through
# `fieldwatch replay --train train/normal.csv` with the shipped default configuration: the
# detectors learn their healthy references and the device model is fitted on the normal run
# only, never on a test file. Each replay starts from a fresh state (nothing is carried from one
# test file to the next). The incidents written (open, update, resolve in event time) are scored
# with `tep_score.py incidents`: detection rate per fault over the 800 post-onset samples and
# the false-alarm rate over d00 and the 160 pre-onset samples of every faulty run. Results are
# left in target/tep/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tep="${1:-$root/../shared/tep}"
config="${2:-$root/config/fieldwatch.toml}"
if [[ ! -f "$tep/train/normal.csv" ]]; then
    echo "TEP kit not found at $tep (expected $tep/train/normal.csv); nothing to benchmark."
    echo "Usage: benches/tep.sh [TEP_DIR] [CONFIG]"
    exit 0
fi
tep="$(cd "$tep" && pwd)"
scorer="${TEP_SCORER:-$tep/../tools/tep_score.py}"
if [[ ! -f "$scorer" ]]; then
    echo "TEP scorer not found at $scorer; nothing to benchmark."
    exit 0
fi

echo "== building (release)"
(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/fieldwatch"

out="$root/target/tep"
rm -rf "$out"
mkdir -p "$out/scores" "$out/incidents"
: >"$out/replay.log"

echo "== replaying $tep/test with --train train/normal.csv and $(basename "$config")"
start=$(date +%s.%N)
for f in "$tep"/test/d*.csv; do
    name="$(basename "$f" .csv)"
    "$bin" replay --config "$config" --train "$tep/train/normal.csv" --device tep --input "$f" \
        --output "$out/scores/$name.csv" --incidents "$out/incidents/$name.jsonl" 2>>"$out/replay.log"
done
end=$(date +%s.%N)
echo "replayed 22 runs in $(echo "$end - $start" | bc) s"

echo "== scoring incidents"
python3 "$scorer" incidents "$out/incidents" --json "$out/score.json" | tee "$out/score.txt"
