"""Bad inputs and faults against the `progan` command line: one line per case, OK / WEAK / BROKEN.

    python tools/attack.py [--work /tmp/progan-attack] [--only NAME[,NAME...]]

Each case does what a careless user or an unlucky machine does (edits config.json, damages
snapshots, fills the disk, interrupts evaluate, ...) with the public commands and judges the
outcome: OK when the command ends with one line naming the file or flag (exit 2 for a bad
input, 1 for a fault, 130 for an interruption) and leaves nothing behind that blocks a
retry; WEAK for a traceback, litter or a silent wrong choice; BROKEN when a run is lost or
restarted behind the user's back. Cases that mount a tmpfs (full disk, read-only folders)
need root; without it they print SKIP. About 4 minutes on a 2-core CPU (tiny runs of a few
hundred images).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"latent_size": 16, "fmap_base": 64, "fmap_max": 16, "max_resolution": 8},
    "schedule": {"stable_kimg": 0.2, "fade_kimg": 0.2, "batch_size": 8, "total_kimg": 0.3},
    "training": {"tick_kimg": 0.1, "snapshot_kimg": 0.1, "grid_size": 2, "seed": 1,
                 "strategy": "one", "keep_checkpoints": 10},
}
CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


class Outcome(Exception):
    def __init__(self, verdict: str, detail: str):
        super().__init__(detail)
        self.verdict, self.detail = verdict, detail


def progan(*args, env=None, timeout=600):
    """(exit status, stdout, the last line of stderr, every line of stderr)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "progan", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=environment)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, done.stdout, (lines[-1] if lines else ""), lines


def one_line(status, last, lines, expected_status=2, *words):
    """OK when the command failed with ``expected_status`` and its message is one line
    starting ``progan`` and holding ``words``; else WEAK with what happened."""
    if any("Traceback" in line for line in lines):
        raise Outcome("WEAK", f"traceback ({len(lines)} lines of stderr): {last[:150]}")
    if status != expected_status:
        raise Outcome("WEAK", f"exit {status}, expected {expected_status}: {last[:150]}")
    if not last.startswith("progan ") or any(word not in last for word in words):
        raise Outcome("WEAK", f"message lacks {words}: {last[:200]}")
    return last


class Work:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "tiny.json"
        self.config.write_text(json.dumps(TINY))
        self._data = self._run = None

    @property
    def data(self) -> Path:
        if self._data is None:
            sys.path.insert(0, str(REPO))
            from progan.dataset.synthetic import ensure_synthetic

            self._data = ensure_synthetic(self.root / "data", num_images=256, resolution=8, seed=0,
                                          workers=1, progress=False)
        return self._data

    @property
    def run(self) -> Path:
        """A finished tiny run (snapshots at 0, 0.104, 0.2, 0.304 kimg), trained once."""
        if self._run is None:
            run = self.root / "run"
            if not (run / "checkpoints").is_dir():
                shutil.rmtree(run, ignore_errors=True)
                status, _, last, _ = progan("train", "--config", self.config, "--data", self.data,
                                            "--out", run)
                assert status == 0, last
            self._run = run
        return self._run

    def copy(self, name: str, run: Path | None = None) -> Path:
        target = self.root / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run or self.run, target)
        return target

    def fresh(self, name: str) -> Path:
        target = self.root / name
        shutil.rmtree(target, ignore_errors=True)
        return target


def edit_config(run: Path, **model):
    data = json.loads((run / "config.json").read_text())
    data["config"]["model"].update(model)
    (run / "config.json").write_text(json.dumps(data))


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


class Tmpfs:
    """A small tmpfs mounted at ``path`` (root only), read-only with ``read_only``."""

    def __init__(self, path: Path, size: str = "1m", read_only: bool = False):
        self.path, self.size, self.read_only = path, size, read_only

    def __enter__(self):
        if os.geteuid() != 0:
            raise Outcome("SKIP", "needs root to mount a tmpfs")
        self.path.mkdir(parents=True, exist_ok=True)
        options = f"size={self.size}" + (",ro" if self.read_only else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.path)], check=True)
        return self.path

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.path)], check=False)


# -- runs are never lost --------------------------------------------------------------------------


@case
def config_edit_does_not_set_snapshots_aside(work: Work):
    run = work.copy("edited")
    before = names(run / "checkpoints")
    edit_config(run, mbstd_group_size=0)
    status, _, last, lines = progan("resume", run)
    one_line(status, last, lines, 2, "d_4_conv", "mbstd_group_size")
    if names(run / "checkpoints") != before:
        raise Outcome("BROKEN", "snapshots renamed after a config edit")
    edit_config(run, mbstd_group_size=4)
    status, out, last, _ = progan("resume", run)
    if status != 0 or "resumed from snapshot-000000000304" not in (run / "log.txt").read_text():
        raise Outcome("BROKEN", f"resume after putting the setting back: exit {status}, {last}")
    return "resume names d_4_conv and mbstd_group_size, renames nothing; fixed, it resumes"


@case
def all_snapshots_damaged_never_restart_silently(work: Work):
    run = work.copy("damaged")
    for folder in (run / "checkpoints").glob("snapshot-*"):
        data = next(folder.glob("ckpt.data-*"))
        data.write_bytes(data.read_bytes()[:100])
    status, _, last, lines = progan("resume", run)
    one_line(status, last, lines, 2, "--restart")
    status, _, last, lines = progan("resume", run)
    if status == 0:
        raise Outcome("BROKEN", "the second resume started the run again from kimg 0")
    one_line(status, last, lines, 2, "has trained before", "--restart")
    ticks = len((run / "stats.jsonl").read_text().splitlines())
    status, _, last, _ = progan("resume", run, "--restart")
    aside = list(run.glob("restart-*"))
    stats = [json.loads(line)["tick"] for line in (run / "stats.jsonl").read_text().splitlines()]
    if status != 0 or len(aside) != 1 or stats != list(range(ticks)):
        raise Outcome("BROKEN", f"--restart: exit {status}, {len(aside)} restart folders, ticks {stats}")
    return "refused twice with what it found; --restart moves the earlier start into restart-*"


# -- validated before the first write -------------------------------------------------------------


@case
def finetune_failure_leaves_no_out(work: Work):
    out = work.fresh("tuned")
    for flags in (["--kimg", "inf"], ["--kimg", "0.05", "--freeze-d", "99"]):
        status, _, last, lines = progan("finetune", work.run, "--out", out, *flags)
        one_line(status, last, lines, 2)
        if out.exists():
            raise Outcome("WEAK", f"finetune {' '.join(flags)} left {out}: {names(out)}")
    status, _, last, _ = progan("finetune", work.run, "--out", out, "--kimg", "0.05")
    if status != 0:
        raise Outcome("WEAK", f"the retry failed: {last}")
    return "--kimg inf and --freeze-d 99 are one line and leave no --out; the retry works"


@case
def train_bad_seed_leaves_nothing(work: Work):
    out = work.fresh("seeded")
    for seed in ("-1", str(2 ** 40)):
        status, _, last, lines = progan("train", "--config", work.config, "--data", work.data,
                                        "--out", out, "--seed", seed)
        one_line(status, last, lines, 2, "training.seed")
        if out.exists():
            raise Outcome("WEAK", f"--seed {seed} left {out}")
    return "--seed -1 / 2^40: one line naming training.seed, no folder"


@case
def one_channel_data_set(work: Work):
    """A 1-channel data set described by dataset.json, and one in the reference tool's
    format (no dataset.json)."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from progan.dataset.format import level_filename, serialize_example
    from progan.backend import tf

    described = work.fresh("grey-described")
    shutil.copytree(work.data, described)
    manifest = json.loads((described / "dataset.json").read_text())
    (described / "dataset.json").write_text(json.dumps({**manifest, "channels": 1}))
    out = work.fresh("grey-run")
    status, _, last, lines = progan("train", "--config", work.config, "--data", described, "--out", out)
    one_line(status, last, lines, 2, "1-channel")
    if out.exists():
        raise Outcome("WEAK", "a refused train left its --out")
    reference = work.fresh("grey")
    reference.mkdir()
    rng = np.random.default_rng(0)
    for resolution in (4, 8):
        with tf.io.TFRecordWriter(str(reference / level_filename("grey", resolution))) as writer:
            for _ in range(64):
                writer.write(serialize_example(rng.integers(0, 255, (1, resolution, resolution), np.uint8)))
    status, _, last, lines = progan("train", "--config", work.config, "--data", reference, "--out", out)
    try:
        one_line(status, last, lines, 2)
    except Outcome as outcome:
        raise Outcome("WEAK", "dataset.json path OK; reference format (no dataset.json): "
                      + outcome.detail + " (needs the reader's channels attribute)") from None
    return "both refused in one line"


@case
def train_accepts_a_runs_config_json(work: Work):
    out = work.fresh("from-config-json")
    status, _, last, _ = progan("train", "--config", work.run / "config.json", "--data", work.data,
                                "--out", out)
    if status != 0:
        raise Outcome("WEAK", f"train --config RUN/config.json: exit {status}: {last}")
    return "train --config RUN/config.json trains"


# -- one line for every bad input ------------------------------------------------------------------


@case
def bad_numbers_and_strategies(work: Work):
    checks = [
        (("finetune", work.run, "--out", work.fresh("inf"), "--kimg", "inf"), "kimg"),
        (("train", "--config", work.config, "--data", work.data, "--out", work.fresh("tpu"),
          "--strategy", "tpu"), "--strategy tpu"),
        (("train", "--config", work.config, "--data", work.data, "--out", work.fresh("frozen"),
          "--freeze-d", "99"), "freeze_d"),
        (("generate", work.run, "--seeds", "0-9999999", "--out", work.fresh("many")), "--seeds"),
        (("evaluate", work.root / "no-such-run"), "does not exist"),
    ]
    for args, word in checks:
        status, _, last, lines = progan(*args)
        one_line(status, last, lines, 2, word)
    status, _, last, lines = progan("train", "--config", work.config, "--data", work.data,
                                    "--out", work.fresh("budget"),
                                    env={"PROGAN_DATA_MEMORY_BUDGET": "inf"})
    try:
        one_line(status, last, lines, 2, "PROGAN_DATA_MEMORY_BUDGET")
    except Outcome as outcome:
        raise Outcome("WEAK", "PROGAN_DATA_MEMORY_BUDGET=inf (progan.dataset.reader): "
                      + outcome.detail) from None
    return "--kimg inf, --strategy tpu, --freeze-d 99, --seeds 0-9999999, a missing run: one line each"


def weak_unless_one_line(label: str, result, name: str) -> None:
    """A command's (status, output, last line, lines) must be one line, exit 2, naming
    ``name``; otherwise the case is WEAK, said with ``label``."""
    status, _, last, lines = result
    try:
        one_line(status, last, lines, 2, name)
    except Outcome as outcome:
        raise Outcome("WEAK", f"{label}: {outcome.detail}") from None


@case
def damaged_labels_npz(work: Work):
    conditional = work.root / "conditional"
    if not (conditional / "labels.npz").exists():
        shutil.rmtree(conditional, ignore_errors=True)
        status, _, last, _ = progan("train", "--config", work.config, "--data", work.data,
                                    "--out", conditional, "--conditional")
        assert status == 0, last
    import numpy as np

    run = work.copy("labels", conditional)
    table = dict(np.load(conditional / "labels.npz"))
    damages = {
        "deleted": lambda path: path.unlink(),
        "cut in half": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
        "wrong columns": lambda path: np.savez(path, **{**table, "values": table["values"][:, :1]}),
        "1-D": lambda path: np.savez(path, **{**table, "values": table["values"][:, 0]}),
        "0 rows": lambda path: np.savez(path, **{**table, "values": table["values"][:0]}),
    }
    for how, damage in damages.items():
        shutil.copy(conditional / "labels.npz", run / "labels.npz")
        damage(run / "labels.npz")
        weak_unless_one_line(f"labels.npz {how}", progan(
            "generate", run, "--seeds", "0-3", "--out", work.root / "labels.png"), "labels.npz")
    return "labels.npz deleted, cut, wrong columns, 1-D, 0 rows: one line naming it"


@case
def wrong_shaped_best_json(work: Work):
    run = work.copy("best")
    best = run / "checkpoints" / "best.json"
    for content in ("null", '{"metrics": {"swd": 3}}', '{"primary": "swd", "metrics": {"swd": {"value": "low"}}}',
                    '{"primary": 3, "metrics": []}'):
        best.write_text(content)
        weak_unless_one_line(f"best.json {content}", progan(
            "generate", run, "--snapshot", "best", "--out", work.root / "best.png"), "best.json")
    best.write_text('{"primary": "swd", "metrics": {"swd": null}}')
    status, _, last, _ = progan("resume", run, "--total-kimg", "0.5")
    log = (run / "log.txt").read_text()
    if status != 0 or "best.json" not in log:
        raise Outcome("WEAK", f"training with a broken best.json: exit {status}: {last}")
    status, _, last, _ = progan("evaluate", run, "--num-images", "16")
    latest = max(int(path.name[-12:]) for path in (run / "checkpoints").glob("snapshot-*"))
    if status != 0 or json.loads(best.read_text())["metrics"]["swd"]["images_seen"] != latest:
        raise Outcome("WEAK", f"evaluate did not rebuild best.json: exit {status}: {last}")
    return "--snapshot best names best.json; training warns and goes on; evaluate rebuilds it"


@case
def evaluate_after_the_data_set_moved(work: Work):
    run = work.copy("moved-run")
    moved = work.fresh("moved-data")
    shutil.copytree(work.data, moved)
    data = json.loads((run / "config.json").read_text())
    data["data"]["path"] = str(work.root / "gone")
    (run / "config.json").write_text(json.dumps(data))
    status, _, last, lines = progan("evaluate", run, "--num-images", "16")
    one_line(status, last, lines, 2, "--data")
    status, _, last, _ = progan("evaluate", run, "--num-images", "16", "--data", moved)
    if status != 0:
        raise Outcome("WEAK", f"evaluate --data: exit {status}: {last}")
    return "the message offers --data, and --data works"


# -- faults -----------------------------------------------------------------------------------------


@case
def read_only_outputs(work: Work):
    with Tmpfs(work.root / "read-only", read_only=True) as folder:
        for args in (("generate", work.run, "--seeds", "0-3", "--out", folder / "grid.png"),
                     ("generate", work.run, "--seeds", "0-3", "--out", folder / "pngs"),
                     ("export", work.run, "--out", folder / "export"),
                     ("train", "--config", work.config, "--data", work.data, "--out", folder / "run")):
            status, _, last, lines = progan(*args)
            one_line(status, last, lines, 2, "not writable")
    return "generate, export and train into a read-only folder: one line"


@case
def disk_full_during_a_snapshot(work: Work):
    with Tmpfs(work.root / "small-disk", size="3m") as disk:
        run = disk / "run"
        status, _, last, lines = progan("train", "--config", work.config, "--data", work.data,
                                        "--out", run, "--total-kimg", "2")
        one_line(status, last, lines, 1, "MiB free")
        kept = sorted(path.name for path in (run / "checkpoints").glob("snapshot-*"))
        if not kept:
            raise Outcome("WEAK", "no snapshot survived")
        for network in (run / "checkpoints").glob("network-*"):
            shutil.rmtree(network)
        for fakes in run.glob("fakes*.png"):
            fakes.unlink()
        status, _, last, _ = progan("resume", run, "--total-kimg", str(int(kept[-1][-12:]) / 1000 + 0.1))
        if status not in (0, 1) or f"resumed from {kept[-1]}" not in (run / "log.txt").read_text():
            raise Outcome("WEAK", f"resume after freeing space: exit {status}: {last}")
    return f"one line, exit 1, {kept[-1]} kept and resumed from"


@case
def level_file_cut_while_training(work: Work):
    data = work.fresh("cut-data")
    shutil.copytree(work.data, data)
    out = work.fresh("cut-run")
    script = f"""
import sys
from progan import cli
from progan.dataset import reader
original = reader.load
def load(path, resolution, *args, **kwargs):
    dataset = original(path, resolution, *args, **kwargs)
    if resolution == 8:  # cut the level the stage streams from, after it was opened
        level = reader.open_dataset(path).level_files[8]
        level.write_bytes(level.read_bytes()[:3000])
    return dataset
reader.load = load
sys.exit(cli.main(["train", "--config", {str(work.config)!r}, "--data", {str(data)!r}, "--out", {str(out)!r}]))
"""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PROGAN_DATA_MEMORY_BUDGET": "1K"}  # stream from disk
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env=environment, timeout=600)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    one_line(done.returncode, lines[-1] if lines else "", lines, 1, "data-r03.tfrecords")
    return "one line naming the level file, exit 1"


@case
def sigint_during_evaluate(work: Work):
    run = work.copy("interrupted-evaluate")
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "-m", "progan", "evaluate", run, "--snapshot", "all",
                                "--num-images", "200"], cwd=REPO, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if process.returncode != 0:
        one_line(process.returncode, lines[-1] if lines else "", lines, 130, "interrupted")
    sys.path.insert(0, str(REPO))
    from progan.run import RunDir

    RunDir(run).read_metrics(), RunDir(run).read_best()  # both parse
    return f"exit {process.returncode}, metrics.jsonl and best.json readable"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/progan-attack"),
                        help="scratch folder (default /tmp/progan-attack; reused between calls)")
    parser.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    work = Work(args.work)
    chosen = args.only.split(",") if args.only else list(CASES)
    worst = 0
    for name in chosen:
        started = time.time()
        try:
            verdict, detail = "OK", CASES[name](work)
        except Outcome as outcome:
            verdict, detail = outcome.verdict, outcome.detail
        except Exception as error:  # noqa: BLE001 - a case that crashes is a finding too
            verdict, detail = "BROKEN", f"{type(error).__name__}: {error}"
        worst = max(worst, {"OK": 0, "SKIP": 0, "WEAK": 1, "BROKEN": 2}[verdict])
        print(f"{verdict:<6} {name:<46} {time.time() - started:5.1f}s  {detail}", flush=True)
    return worst


if __name__ == "__main__":
    sys.exit(main())
