"""Jobs of several processes, as clusters run them: two local workers (TF_CONFIG on
127.0.0.1) sharing one run directory, and the same under a real single-node Slurm.

A lost worker — killed, or hung (SIGSTOP: what an unreachable machine looks like to the
others) — ends every other in one line; SIGTERM to any one worker stops all after one
snapshot; launching the same job again resumes, bitwise equal to an uninterrupted job."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG
from test_trainer import list_snapshots, snapshot_arrays

LOST_SECONDS = 90  # every other worker ends within this after one is lost
STOP_SECONDS = 30  # every worker ends within this after SIGTERM to one


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for probe in sockets:
        probe.bind(("127.0.0.1", 0))
    ports = [probe.getsockname()[1] for probe in sockets]
    for probe in sockets:
        probe.close()
    return ports


def worker_env(**extra) -> dict:
    """The environment of a worker process: this checkout first on the path."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


class Job:
    """Two workers running the same `progan train` command, as a cluster launches them."""

    def __init__(self, command, log_dir, name, worker_1_extra=()):
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
        self.addresses = cluster["worker"]
        self.logs = [log_dir / f"{name}-{index}.log" for index in range(2)]
        self.workers = []
        for index, log in enumerate(self.logs):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            extra = list(worker_1_extra) if index == 1 else []
            with open(log, "w") as output:
                self.workers.append(subprocess.Popen(
                    [sys.executable, "-m", "progan", *map(str, command), *map(str, extra)],
                    cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                    env=worker_env(TF_CONFIG=tf_config)))

    def output(self, index: int) -> str:
        return self.logs[index].read_text()

    def wait(self, index: int, limit: float) -> float:
        """Seconds until worker ``index`` ends (fails the test after ``limit``)."""
        start = time.time()
        try:
            self.workers[index].wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {index} still running {limit} s later:\n{self.output(index)[-3000:]}")
        return time.time() - start

    def kill(self):
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def wait_for_snapshot_after(job: Job, run_dir, images_seen: int, limit: float = 180) -> int:
    deadline = time.time() + limit
    while time.time() < deadline and all(worker.poll() is None for worker in job.workers):
        snapshots = list_snapshots(run_dir / "checkpoints")
        if snapshots and snapshots[-1][0] > images_seen:
            return snapshots[-1][0]
        time.sleep(0.02)
    pytest.fail(f"no snapshot after {images_seen} images:\n{job.output(0)[-3000:]}")


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_lost_workers_end_the_job_in_one_line_and_stops_agree_and_relaunches_resume_exactly(
        tmp_path, tiny_dataset, request):
    config = tmp_path / "two.json"
    config.write_text(json.dumps({**TINY_CONFIG, "training": {**TINY_CONFIG["training"],
                                                              "strategy": "auto"}}))
    # 4x4 only: what is tested here is how workers end, stop and resume, not growth (resuming
    # across stage switches is the killed-and-resumed trainer test's); one traced stage per
    # launch keeps it short.
    common = ["train", "--config", config, "--data", tiny_dataset, "--deterministic",
              "--max-resolution", "4", "--total-kimg", "0.6"]
    jobs = []
    request.addfinalizer(lambda: [job.kill() for job in jobs])
    straight = tmp_path / "straight"  # the uninterrupted job runs alongside
    jobs.append(Job([*common, "--out", straight], tmp_path, "straight"))
    run_dir = tmp_path / "run"
    command = [*common, "--out", run_dir]
    timings = {}

    # A hung worker 1 (stopped: no heartbeats), then a killed worker 0 (the chief).
    resumed_at = 0
    for lost, how in ((1, signal.SIGSTOP), (0, signal.SIGKILL)):
        job = Job(command, tmp_path, f"lost{lost}")
        jobs.append(job)
        resumed_at = wait_for_snapshot_after(job, run_dir, resumed_at)
        job.workers[lost].send_signal(how)
        survivor = 1 - lost
        timings[f"{how.name} worker {lost}"] = seconds = job.wait(survivor, LOST_SECONDS)
        output = job.output(survivor)
        assert job.workers[survivor].returncode not in (0, None), output[-3000:]
        line = last_line(output)
        assert line.startswith("progan train: error: ") and "Traceback" not in output, output[-3000:]
        assert f"worker {lost} ({job.addresses[lost]})" in line, line
        assert "launch the same job again (every worker) to resume" in line, line
        job.kill()
        if lost == 1:  # nothing of the run is lost: its newest snapshot is complete
            resumed_at = list_snapshots(run_dir / "checkpoints")[-1][0]
    assert "stopped sending heartbeats" in job.logs[0].with_name("lost1-0.log").read_text()

    # SIGTERM to one worker (the cluster may signal only some): one snapshot, all exit 0.
    job = Job(command, tmp_path, "stop")
    jobs.append(job)
    wait_for_snapshot_after(job, run_dir, resumed_at)
    job.workers[1].send_signal(signal.SIGTERM)
    timings["SIGTERM worker 1"] = max(job.wait(index, STOP_SECONDS) for index in (0, 1))
    for index in (0, 1):
        assert job.workers[index].returncode == 0, job.output(index)[-3000:]
    stopped = job.output(0)
    assert "on request; continue with: launch the same job again (every worker)" in stopped
    assert "done: kimg" not in stopped

    # Worker 1 on a disk of its own (its --out empty): it would start from kimg 0 while the
    # chief resumes; both stop at once, in one line, before any step.
    newest = list_snapshots(run_dir / "checkpoints")[-1][0]
    job = Job(command, tmp_path, "apart", worker_1_extra=["--out", tmp_path / "own-disk"])
    jobs.append(job)
    for index in (0, 1):
        job.wait(index, LOST_SECONDS)
        output = job.output(index)
        line = last_line(output)
        assert job.workers[index].returncode == 2 and "Traceback" not in output, output[-3000:]
        assert line.startswith("progan train: error: the workers start from different snapshots "
                               f"(kimg 0 to {newest / 1000:g}"), line
        assert "launch the same job again (every worker)" in line, line

    job = Job(command, tmp_path, "final")  # the same job again: it resumes and finishes
    jobs.append(job)
    for index in (0, 1):
        job.wait(index, 300)
        assert job.workers[index].returncode == 0, job.output(index)[-3000:]
    jobs[0].wait(0, 300)
    jobs[0].wait(1, 300)
    print("seconds until the job ended:", json.dumps(timings))

    seen_straight, straight_arrays = snapshot_arrays(straight)
    seen_resumed, resumed_arrays = snapshot_arrays(run_dir)
    assert seen_straight == seen_resumed >= 600
    assert straight_arrays.keys() == resumed_arrays.keys() and len(straight_arrays) > 20
    for name, array in straight_arrays.items():
        np.testing.assert_array_equal(resumed_arrays[name], array, err_msg=name)
    log = (run_dir / "log.txt").read_text()
    assert log.count("resumed from snapshot") == 4
    assert log.count("run        ") == 5  # the chief alone wrote the log: one summary per launch
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 5
    ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    straight_ticks = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert [t["tick"] for t in ticks] == list(range(len(ticks)))
    # a launch counts its ticks from where it resumed (after a stop, not on the straight
    # run's grid): the same end, no tick repeated or lost
    seen = [t["images_seen"] for t in ticks]
    assert seen == sorted(set(seen)) and seen[-1] == straight_ticks[-1]["images_seen"] == 600
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


# -- a real Slurm: slurmctld, slurmd and munged on this machine --------------------------------

SLURM_DAEMONS = ("munged", "slurmctld", "slurmd", "srun")


def _slurm_binary(name: str) -> str | None:
    import shutil

    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm cluster on localhost (the node "localhost", 127.0.0.1), started for
    these tests and stopped after; yields the environment its commands need (SLURM_CONF).
    .ci/run installs Debian's slurm-wlm and munge; elsewhere the tests are skipped without them."""
    missing = [name for name in SLURM_DAEMONS if _slurm_binary(name) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} missing: .ci/run installs slurm-wlm and munge")
        pytest.skip(f"no Slurm here ({', '.join(missing)} missing; apt-get install slurm-wlm munge)")
    root = tmp_path_factory.mktemp("slurm")
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    (munge / "key").write_bytes(os.urandom(1024))
    (munge / "key").chmod(0o600)
    for folder in ("state", "spool"):
        (root / folder).mkdir()
    controller_port, node_port = free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=progantest", "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={controller_port}", f"SlurmdPort={node_port}",
        "AuthType=auth/munge", f"AuthInfo=socket={munge / 'socket'}", "CryptoType=crypto/munge",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SwitchType=switch/none",
        "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE",
        ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    for command in (
            [_slurm_binary("munged"), "--force", "--foreground", f"--socket={munge / 'socket'}",
             f"--key-file={munge / 'key'}", f"--log-file={munge / 'log'}",
             f"--pid-file={munge / 'pid'}", f"--seed-file={munge / 'seed'}"],
            [_slurm_binary("slurmctld"), "-D", "-i"],
            [_slurm_binary("slurmd"), "-D", "-N", "localhost"]):
        daemons.append(subprocess.Popen(command, env=env, cwd=root, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        time.sleep(0.5)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run([_slurm_binary("sinfo"), "-h", "-o", "%T"], env=env,
                                   capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test Slurm did not come up: {(root / 'slurmctld.log').read_text()[-2000:]}")
        yield env
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()


def consecutive_free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free on 127.0.0.1."""
    for _ in range(100):
        base = free_ports(1)[0]
        try:
            probes = [socket.socket() for _ in range(count)]
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError("no consecutive free ports")


def test_srun_tasks_train_one_run_and_the_same_command_continues_it_after_sigterm(
        slurm, tmp_path, tiny_dataset):
    """`srun -n 2 progan train ...` with no TF_CONFIG: --strategy auto resolves the cluster
    from Slurm; both tasks get the same --out, the chief alone writes it; SIGTERM to the tasks
    (what a preempted or timed-out job's tasks get) stops both after one snapshot, and the same
    command again continues the run to its end."""
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({**TINY_CONFIG, "training": {**TINY_CONFIG["training"],
                                                              "strategy": "auto"}}))
    run_dir = tmp_path / "run"
    command = [_slurm_binary("srun"), "--ntasks=2", "--oversubscribe", "--kill-on-bad-exit=1",
               sys.executable, "-m", "progan", "train", "--config", str(config),
               "--data", str(tiny_dataset), "--out", str(run_dir),
               "--stable-kimg", "0.1", "--fade-kimg", "0.1"]  # 0.3 kimg: what it shows is at the start
    env = worker_env(**slurm, PROGAN_SLURM_PORT_BASE=str(consecutive_free_ports(2)))
    env.pop("TF_CONFIG", None)
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while first.poll() is None and time.time() < deadline and not [
                seen for seen, _ in list_snapshots(run_dir / "checkpoints") if seen > 0]:
            time.sleep(0.05)
        # What `#SBATCH --signal=TERM@120` (or a batch script's `scancel --signal=TERM`) does:
        # SIGTERM to the tasks of the job's steps. (SIGTERM to srun itself makes it SIGKILL them.)
        job_id = subprocess.run([_slurm_binary("squeue"), "-h", "-o", "%i"], env=env,
                                capture_output=True, text=True).stdout.split()[0]
        subprocess.run([_slurm_binary("scancel"), "--signal=TERM", job_id], env=env, check=True)
        output = first.communicate(timeout=120)[0]
    finally:
        first.kill()
    assert first.returncode == 0, output[-3000:]
    assert output.count("on request; continue with: launch the same job again") == 1, output[-3000:]
    second = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    log = (run_dir / "log.txt").read_text()
    assert log.count("strategy   CollectiveAllReduceStrategy, 2 replica(s)") == 2, log
    assert log.count("resumed from snapshot") == 1 and "done: kimg 0.3" in log
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2  # one per launch: the chief's
    ticks = [json.loads(line)["tick"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert ticks == list(range(len(ticks)))
