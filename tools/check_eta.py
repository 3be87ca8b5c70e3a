"""How a finished run's tick lines did: each stage's speed and each tick's ETA against the
time that was actually left.

    python tools/check_eta.py runs/demo

Speed per stage: the median images/s of the stage's tick lines that neither traced a step
nor wrote a snapshot (what `progan bench` measures). ETA: ``eta_sec`` of every tick in
stats.jsonl against the seconds from that tick's line in log.txt to the run's last ``done``
line. The worst error is taken from the first tick of the 8x8 fade-in on, up to the last
tick but one.
"""

import argparse
import collections
import datetime
import json
import re
import statistics
from pathlib import Path

TICK_LINE = re.compile(r"^(\S+ \S+) tick +(\d+) ")


def when(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory that has ended")
    args = parser.parse_args()
    stats = [json.loads(line) for line in (args.run / "stats.jsonl").read_text().splitlines() if line]
    log = (args.run / "log.txt").read_text().splitlines()
    done = [line for line in log if " done: kimg " in line]
    if not done:
        raise SystemExit(f"{args.run / 'log.txt'}: no 'done' line: the run has not ended")
    end = when(done[-1])
    tick_times = {}  # the last session's line of each tick (a resumed run repeats none)
    for line in log:
        match = TICK_LINE.match(line)
        if match:
            tick_times[int(match.group(2))] = when(line)

    speeds = collections.defaultdict(list)
    for record in stats:
        if record["compile_sec"] == 0 and record["maintenance_sec"] < 0.05 * record["sec_per_tick"]:
            speeds[(record["resolution"], record["phase"])].append(record["images_per_sec"])
    print("images/s per stage (median of the ticks without tracing or snapshot):")
    for (resolution, phase), values in speeds.items():
        print(f"  {resolution:>4d}x{resolution:<4d} {phase:<7s} {statistics.median(values):8.1f}"
              f"  ({len(values)} ticks)")

    print(f"ETA against the time left until the 'done' line ({done[-1][:19]}):")
    worst, counting = 0.0, False
    for record in stats:
        tick = record["tick"]
        if tick not in tick_times:
            continue
        left = (end - tick_times[tick]).total_seconds()
        counting = counting or (record["resolution"] >= 8)
        if record is stats[-1] or left <= 0:  # nothing left but the end (log times are whole seconds)
            print(f"  tick {tick:4d} {record['resolution']:>4d} {record['phase']:<7s} "
                  f"ETA {record['eta_sec']:7.0f} s  (the last tick)")
            continue
        error = record["eta_sec"] / left - 1
        if counting:
            worst = max(worst, abs(error))
        print(f"  tick {tick:4d} {record['resolution']:>4d} {record['phase']:<7s} "
              f"ETA {record['eta_sec']:7.0f} s  left {left:7.0f} s  {100 * error:+6.1f}%")
    print(f"worst |error| from the first tick at 8x8 on: {100 * worst:.1f}%")
    print(f"training time (the last tick's elapsed): {stats[-1]['elapsed_sec']:.0f} s")


if __name__ == "__main__":
    main()
