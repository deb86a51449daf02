#!/usr/bin/env bash
# Scores fieldwatch on the Skoltech Anomaly Benchmark (SKAB): a pump test bed, 8 sensors at
# 1 Hz, 34 runs each with one abrupt fault (valve closures, cavitation, rotor imbalance, ...).
#
#   benches/skab.sh SKAB_DATA_DIR [CONFIG]   (SKAB_DATA_DIR: the repository's data/ folder;
#                                             CONFIG defaults to config/fieldwatch.toml)
#
# Builds the release binary. Every run's first 400 rows (healthy; a run whose fault begins
# inside them is left out) commission the device through `fieldwatch replay --train`, the rest
# is replayed and scored: per-row F1 and false-alarm rate of the incidents a technician would
# get, and how many fault onsets opened an incident within 60 s. Each replay starts from a fresh
# state. Results are left in target/skab/. The data is read from where it lies, never copied
# into the repository (get it with `git clone https://github.com/waico/SKAB`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${1:-}"
config="${2:-$root/config/fieldwatch.toml}"
if [[ -z "$data" || ! -d "$data/valve1" ]]; then
    echo "SKAB data not found at '${data}' (expected its data/ folder with valve1/, valve2/, other/); nothing to benchmark."
    echo "Usage: benches/skab.sh SKAB_DATA_DIR [CONFIG]"
    exit 0
fi

echo "== building (release)"
(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/fieldwatch"

out="$root/target/skab"
rm -rf "$out"
mkdir -p "$out/scores" "$out/incidents"
: >"$out/replay.log"
python3 "$root/benches/skab_score.py" prepare "$data" "$out"

echo "== replaying with $(basename "$config")"
for train in "$out"/runs/*.train.csv; do
    name="$(basename "$train" .train.csv)"
    "$bin" replay --config "$config" --train "$train" --device pump --input "$out/runs/$name.test.csv" \
        --output "$out/scores/$name.csv" --incidents "$out/incidents/$name.jsonl" 2>>"$out/replay.log"
done

echo "== scoring incidents"
python3 "$root/benches/skab_score.py" score "$out" --json "$out/score.json" | tee "$out/score.txt"
