"""progan-dataset never destroys a folder, never hangs, leaves no litter.

The failure tests run the real command with two workers in its own process group and
send real signals; each asserts: exit within 5 s of the fault, one line naming the
cause, no staging folder left, OUT unchanged, input untouched.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import (children, make_celeba_like_images, start_tool, tool_lines,
                              tree_digest, wait_for_records)

from progan.dataset.cli import main
from progan.dataset.sources import ImageFolderSource, reference_order
from progan.dataset.synthetic import SyntheticSource
from progan.dataset.writer import write_dataset

SLOW = ["--num-images", "3000", "--size", "64", "--workers", "2"]  # ~1 min of work


def old_dataset(path):
    """A small complete data set of ours at ``path``; returns its digest."""
    write_dataset(path, SyntheticSource(6, 8, seed=7), workers=1, progress=False)
    return tree_digest(path)


def finish(process, fault_time, limit=5.0, every_line=False):
    """Wait for a process; assert it ended within ``limit`` s of the fault; (rc, tool lines),
    or with ``every_line`` every line of its stderr."""
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("the build hung") from None
    elapsed = time.monotonic() - fault_time
    print(f"exit {elapsed:.2f} s after the fault: {tool_lines(err)[-1:]}", file=sys.__stdout__, flush=True)
    assert elapsed < limit, f"took {elapsed:.1f} s to end after the fault"
    return process.returncode, err.splitlines() if every_line else tool_lines(err)


def staging_left(parent):
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# -- overwrite safety -------------------------------------------------------------------------


def test_overwrite_refuses_anything_but_a_dataset_of_ours(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("\\documentclass{book}")
    before = tree_digest(precious)
    for flags in ([], ["--overwrite"]):
        assert main(["create_synthetic", str(precious), "--num-images", "8", "--size", "8",
                     "--quiet", *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"progan-dataset: error: OUT {precious}: exists and is not a data set "
                         "written by progan-dataset (no dataset.json); not replacing it, "
                         "choose another folder"]
    assert tree_digest(precious) == before

    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["create_synthetic", str(notes), "--num-images", "8", "--size", "8",
                 "--overwrite", "--quiet"]) == 2
    assert "is a file, not a data set folder" in capsys.readouterr().err
    assert notes.read_text() == "keep me"

    # A data set of ours that also holds a user's file is not replaced either.
    mixed = tmp_path / "mixed"
    old_dataset(mixed)
    (mixed / "todo.md").write_text("x")
    before = tree_digest(mixed)
    assert main(["create_synthetic", str(mixed), "--num-images", "8", "--size", "8",
                 "--overwrite", "--quiet"]) == 2
    assert "holds todo.md, which is not part of its data set" in capsys.readouterr().err
    assert tree_digest(mixed) == before

    # A data set of ours is replaced with --overwrite, and only then.
    ours = tmp_path / "ours"
    old = old_dataset(ours)
    assert main(["create_synthetic", str(ours), "--num-images", "8", "--size", "8",
                 "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert tree_digest(ours) == old
    assert main(["create_synthetic", str(ours), "--num-images", "8", "--size", "8",
                 "--overwrite", "--quiet"]) == 0
    assert json.loads((ours / "dataset.json").read_text())["image_count"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "notes.txt", "ours", "precious"]


def test_out_may_not_be_contain_or_sit_inside_the_input(tmp_path, capsys):
    images = tmp_path / "imgs"
    make_celeba_like_images(images, 3, suffix=".jpg")
    before = tree_digest(tmp_path)
    cases = [
        (images, images, "is the input"),
        (tmp_path, images, "contains the input"),
        (images / "out", images, "is inside the input folder"),
        (images / "sub" / "out", images, "is inside the input folder"),
    ]
    for out, source, message in cases:
        assert main(["create_from_images", str(out), str(source), "--size", "16",
                     "--overwrite", "--quiet"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith(
            f"progan-dataset: error: OUT {out}: "), lines
    # CelebA: the folder of files is scanned, the zip is the input itself.
    assert main(["create_celeba", str(images / "c"), str(images), "--max-images", "3", "--quiet"]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


# -- messages and validation ------------------------------------------------------------------


def test_arguments_are_checked_before_the_build(tmp_path, capsys):
    images = tmp_path / "imgs"
    make_celeba_like_images(images, 4, size=(24, 24))
    for flags, message in ((["--train-count", "10"], "--train-count 10: the source has only 4 images"),
                           (["--workers", "0"], "--workers 0: expected 1 or more")):
        started = time.monotonic()
        assert main(["create_from_images", str(tmp_path / "out"), str(images), "--size", "16",
                     "--quiet", *flags]) == 2
        assert time.monotonic() - started < 2.0  # before any image is read
        assert capsys.readouterr().err.strip().splitlines() == [f"progan-dataset: error: {message}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]


def test_each_skipped_file_has_a_short_reason_and_enlargements_are_counted(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    photo = PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    photo.save(folder / "good.png")
    photo.resize((12, 12)).save(folder / "small.png")
    photo.save(folder / "cut.jpg", quality=90)
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    photo.save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:40])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not a picture")
    PIL.Image.fromarray(rng.integers(0, 65536, (32, 32)).astype(np.uint16)).save(folder / "deep.png")
    assert main(["create_from_images", str(tmp_path / "out"), str(folder), "--size", "32",
                 "--workers", "2"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    reasons = {os.path.basename(entry["file"]): entry["reason"] for entry in manifest["skipped"]}
    assert reasons == {"cut.jpg": "truncated JPEG", "cut.png": "truncated PNG",
                       "empty.png": "empty file", "notes.txt": "not an image"}
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning: skipped")]
    assert sorted(warnings) == sorted(f"warning: skipped {folder / name}: {reason}"
                                      for name, reason in reasons.items())
    assert manifest["notes"]["enlarged"]["count"] == 1
    assert manifest["notes"]["16-bit converted"]["count"] == 1
    assert "note: enlarged 1 images smaller than 32x32 (e.g. " in captured.err
    assert "small.png (12x12)" in captured.err
    assert "skipped 4, 16-bit converted 1, enlarged 1" in captured.out


# -- no hangs, one line, no staging left (real processes, two workers) ------------------------
# The builds of a test run side by side: each start-up imports TensorFlow (seconds here).


def test_signals_worker_crash_and_sigkill_mid_build(tmp_path, capsys):
    builds = {}
    for case in ("SIGINT", "SIGTERM", "crash", "SIGKILL"):
        parent = tmp_path / case
        parent.mkdir()
        old = old_dataset(parent / "faces") if case != "crash" else None
        process = start_tool("create_synthetic", parent / "faces", *SLOW, "--overwrite", "--quiet")
        builds[case] = parent, old, process
    try:
        stagings = {case: wait_for_records(parent, "faces", process)
                    for case, (parent, _, process) in builds.items()}
        workers = {case: children(process.pid) for case, (_, _, process) in builds.items()}
        assert all(len(pids) == 2 for pids in workers.values()), workers

        for case in ("SIGINT", "SIGTERM"):  # Ctrl-C / kill to the whole process group
            parent, old, process = builds[case]
            os.killpg(process.pid, getattr(signal, case))
            code, lines = finish(process, time.monotonic())
            assert code == (130 if case == "SIGINT" else 128 + signal.SIGTERM)
            assert lines == [f"progan-dataset: interrupted by {case}; stopped the workers and "
                             f"removed the partial data set, OUT {parent / 'faces'} is unchanged"]
            assert staging_left(parent) == [] and tree_digest(parent / "faces") == old
            assert not any(os.path.exists(f"/proc/{pid}") for pid in workers[case])

        parent, _, process = builds["crash"]
        victim = workers["crash"][0]
        os.kill(victim, signal.SIGKILL)
        code, lines = finish(process, time.monotonic())
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"progan-dataset: error: worker process {victim} was killed by "
                                   "SIGKILL while encoding item ")
        assert os.listdir(parent) == []

        # SIGKILL of the main process alone: its workers follow it, its staging folder stays
        # until the next build in that folder removes it.
        parent, old, process = builds["SIGKILL"]
        os.kill(process.pid, signal.SIGKILL)
        finish(process, time.monotonic())
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") for pid in workers["SIGKILL"]) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(os.path.exists(f"/proc/{pid}") for pid in workers["SIGKILL"]), "orphans"
        assert stagings["SIGKILL"].is_dir() and tree_digest(parent / "faces") == old
    finally:
        for _, _, process in builds.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
    stranger = parent / ".stranger.partial-999999999"  # not ours: no marker, no data set
    stranger.mkdir()
    assert main(["create_synthetic", str(parent / "small"), "--num-images", "4", "--size", "8",
                 "--workers", "2", "--quiet"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        f"removed {stagings['SIGKILL']}, left by an earlier build (process {process.pid}) that is "
        "no longer running",
        f"warning: left {stranger} alone: named like a staging folder but not made by progan-dataset"]
    assert sorted(p.name for p in parent.iterdir()) == [stranger.name, "faces", "small"]
    assert tree_digest(parent / "faces") == old


def _mount_tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"these tests mount a small tmpfs (run as root): {result.stderr}"


def test_strict_bad_file_early_in_600_and_disk_full_mid_build(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(600):
        PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{index:04d}.png")
    files = sorted(str(p) for p in folder.iterdir())
    bad = files[reference_order(600)[20]]  # record 20
    with open(bad, "r+b") as handle:
        handle.truncate(60)
    before = tree_digest(folder)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "24m")
    try:
        # Up front: the estimate (600 images, 32..4) does not fit in the 2 MB left free.
        filler = disk / "other-users-file"
        filler.write_bytes(b"\0" * (22 * 2**20))
        assert main(["create_synthetic", str(disk / "tiny"), "--num-images", "600",
                     "--size", "32", "--quiet"]) == 2
        line = capsys.readouterr().err.strip()
        assert line.startswith(f"progan-dataset: error: OUT {disk / 'tiny'}: the data set needs about "
                               "3.") and line.endswith("MB free") and "600 images, levels 32..4" in line
        filler.write_bytes(b"")  # kept, empty: on a full tmpfs even creating a file can fail

        strict = start_tool("create_from_images", tmp_path / "out", folder, "--size", "16",
                            "--workers", "2", "--strict", "--quiet")
        full = start_tool("create_synthetic", disk / "faces", "--num-images", "3000",
                          "--size", "32", "--workers", "2", "--quiet")
        seen = None
        while strict.poll() is None and seen is None:
            if list(tmp_path.glob(".out.partial-*")):
                seen = time.monotonic()
            time.sleep(0.005)
        code, lines = finish(strict, seen or time.monotonic())
        assert code == 2
        assert lines == [f"progan-dataset: error: {bad}: truncated PNG (--strict stops at the first "
                         "unreadable input)"]
        assert sorted(os.listdir(tmp_path)) == ["disk", "in"] and tree_digest(folder) == before

        # Mid-build: another program fills the disk while the workers write.
        wait_for_records(disk, "faces", full)
        # unbuffered: a buffered file could fail again when closed, with the bytes it still held
        with open(filler, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
            except OSError:
                pass
        size = filler.stat().st_size
        code, lines = finish(full, time.monotonic())
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"progan-dataset: error: OUT {disk / 'faces'}: no space left on "
                                   f"device in {disk}")
        assert sorted(os.listdir(disk)) == ["other-users-file"] and filler.stat().st_size == size
    finally:
        for process in ("strict", "full"):
            process = locals().get(process)
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_out_dot_is_the_current_folder_and_refused_when_not_a_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "paper.pdf").write_bytes(b"%PDF")
    assert main(["create_synthetic", ".", "--num-images", "4", "--size", "8", "--overwrite",
                 "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"progan-dataset: error: OUT {tmp_path}: exists and is not a data set written by "
        "progan-dataset (no dataset.json); not replacing it, choose another folder")
    assert sorted(os.listdir(tmp_path)) == ["paper.pdf"]
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert main(["create_synthetic", str(link), "--num-images", "4", "--size", "8",
                 "--overwrite", "--quiet"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err


def _linked_copies(image, folder, count, suffix):
    """``count`` hard links to one encoded image, named 000001<suffix>...: many inputs to
    decode for the price of writing one."""
    folder.mkdir(parents=True)
    first = folder / f"{1:06d}{suffix}"
    image.save(first)
    for index in range(2, count + 1):
        os.link(first, folder / f"{index:06d}{suffix}")


def _has_records(parent, process):
    """Whether a build has appended records to its staging folder (it must still be running)."""
    for staging in parent.glob(".out.partial-*"):
        try:
            if any(file.stat().st_size > 0 for file in staging.glob("*.tfrecords")):
                return True
        except FileNotFoundError:
            pass
    assert process.poll() is None, f"{parent.name} ended before writing records: {process.communicate()}"
    return False


def test_ctrl_c_and_sigterm_stop_every_source_with_any_worker_count(tmp_path):
    """Each source, started as a script's ``cmd &`` starts it (SIGINT inherited ignored), is
    still building when its process group gets the signal; it must end within seconds, print
    one line and nothing else (no TensorFlow line either), and leave nothing behind."""
    rng = np.random.default_rng(5)
    photo = PIL.Image.fromarray(rng.integers(0, 256, (360, 360, 3), dtype=np.uint8))
    _linked_copies(photo, tmp_path / "inputs" / "photos", 3000, ".png")
    face = PIL.Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8))
    _linked_copies(face, tmp_path / "inputs" / "img_align_celeba", 6000, ".jpg")
    builds = {  # name: (signal, create arguments, extra start_tool arguments)
        "synthetic": ("SIGINT", ["create_synthetic", *SLOW], {}),
        "images": ("SIGINT", ["create_from_images", tmp_path / "inputs" / "photos", "--size", "64",
                              "--workers", "1"], {}),
        "celeba": ("SIGINT", ["create_celeba", tmp_path / "inputs", "--max-images", "6000",
                              "--no-attributes", "--workers", "2"], {}),
        "tfds": ("SIGINT", ["create_tfds", "celeb_a", "--workers", "1"], {"tfds_examples": 3000}),
        "tfds-term": ("SIGTERM", ["create_tfds", "celeb_a", "--workers", "2"], {"tfds_examples": 3000}),
    }
    processes = {}
    try:
        for name, (_, (command, *flags), extra) in builds.items():
            (tmp_path / name).mkdir()
            processes[name] = start_tool(command, tmp_path / name / "out", *flags, "--quiet",
                                         sigint_ignored=True, **extra)
        signalled, ended = {}, {}  # each is signalled as soon as it has written records
        deadline = time.monotonic() + 120
        while len(ended) < len(builds) and time.monotonic() < deadline:
            for name, process in processes.items():
                if name not in signalled and _has_records(tmp_path / name, process):
                    os.killpg(process.pid, getattr(signal, builds[name][0]))
                    signalled[name] = time.monotonic()
                elif name in signalled and name not in ended and process.poll() is not None:
                    ended[name] = time.monotonic()
            time.sleep(0.01)
        took = {name: round(ended[name] - signalled[name], 2) for name in ended}
        print(f"seconds from the signal to the end: {took}", file=sys.__stdout__, flush=True)
        assert set(ended) == set(builds) and max(took.values()) < 5.0, (took, set(signalled))
        for name, (case, _, _) in builds.items():
            code, lines = finish(processes[name], signalled[name], limit=60, every_line=True)
            err = "\n".join(lines)
            assert code == (130 if case == "SIGINT" else 128 + signal.SIGTERM), (name, err)
            assert lines == [f"progan-dataset: interrupted by {case}; stopped the workers and "
                             f"removed the partial data set, OUT {tmp_path / name / 'out'} is "
                             "unchanged"], (name, err)
            assert os.listdir(tmp_path / name) == [], name
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
