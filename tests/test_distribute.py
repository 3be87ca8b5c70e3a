"""Strategy choice without a cluster: Slurm's environment read by TensorFlow's resolver,
--gpus on a faked device list, which worker a collective failure names."""

import pytest
import tensorflow as tf

from progan.training import distribute

SLURM_STEP = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[07-08]",
              "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "4242"}


@pytest.fixture
def slurm_step(monkeypatch):
    for name in ("TF_CONFIG", "PROGAN_SLURM_PORT_BASE", "SLURM_GPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in SLURM_STEP.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_auto_is_multiworker_in_a_slurm_step_and_the_resolver_reads_it(slurm_step):
    assert distribute.strategy_name("auto") == "multiworker"
    base = distribute.slurm_port_base()
    first, end, width = distribute.SLURM_PORT_RANGE
    assert first <= base < end - width and (base - first) % width == 0
    resolver = distribute.slurm_resolver()
    assert resolver.cluster_spec().as_dict() == {
        "worker": [f"gpu07:{base}", f"gpu07:{base + 1}", f"gpu08:{base}", f"gpu08:{base + 1}"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert resolver.num_accelerators() == {"GPU": 0}  # this machine has none
    slurm_step.setenv("PROGAN_SLURM_PORT_BASE", "31000")
    assert distribute.slurm_resolver().cluster_spec().as_dict()["worker"][3] == "gpu08:31001"
    slurm_step.setenv("SLURM_STEP_NUM_TASKS", "1")  # one task: not a cluster
    assert distribute.strategy_name("auto") == "one"


@pytest.mark.parametrize("bound, gpus, expected", [(False, None, [2, 3]), (False, 1, [2]),
                                                    (True, None, [0, 1, 2, 3])])
def test_a_slurm_task_takes_its_share_of_the_node_gpus(slurm_step, bound, gpus, expected):
    """Tasks that all see the node's 4 GPUs take 2 each (task 1: the second pair); GPUs Slurm
    bound to the task (--gpus-per-task) are all its own."""
    physical = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(4)]
    chosen = []
    slurm_step.setattr(tf.config, "list_physical_devices", lambda kind=None: physical if kind == "GPU" else [])
    slurm_step.setattr(tf.config, "set_visible_devices", lambda devices, kind=None: chosen.extend(devices))
    if bound:
        slurm_step.setenv("SLURM_GPUS_PER_TASK", "4")
    resolver = distribute.slurm_resolver(gpus)
    assert resolver.num_accelerators() == {"GPU": len(expected)}
    assert [physical.index(device) for device in chosen] == (expected if len(expected) < 4 else [])
    with pytest.raises(distribute.DistributeError, match=r"--gpus 5: only \d GPU\(s\) visible to Slurm task 1"):
        distribute.slurm_resolver(5)


def test_gpus_takes_the_first_n_devices_or_says_in_one_line_there_are_fewer(monkeypatch):
    """The CPU's two logical devices (tests/conftest.py) stand in for two GPUs."""
    devices = tf.config.list_logical_devices("CPU")
    monkeypatch.setattr(distribute, "_accelerators", lambda: devices)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    two = distribute.make_strategy("auto", gpus=2)
    assert isinstance(two, tf.distribute.MirroredStrategy) and two.num_replicas_in_sync == 2
    one = distribute.make_strategy("auto", gpus=1)
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.extended.worker_devices[0].endswith(devices[0].name)
    assert distribute.make_strategy("mirrored", gpus=1).num_replicas_in_sync == 1
    for gpus, strategy in ((3, "auto"), (0, "mirrored"), (2, "one")):
        with pytest.raises(distribute.DistributeError) as error:
            distribute.make_strategy(strategy, gpus=gpus)
        assert str(error.value).startswith(f"--gpus {gpus}") and "\n" not in str(error.value)
    assert "only 2 GPU(s) visible here; use --gpus 2" in str(pytest.raises(
        distribute.DistributeError, distribute.make_strategy, "auto", 3).value)


def test_a_collective_failure_names_the_lost_worker():
    """The messages TensorFlow gives for a killed peer, a hung one (no heartbeats) and a
    lost coordination leader; the worker reading them is never the one named."""
    cluster = tf.train.ClusterSpec({"worker": ["10.0.0.1:2000", "10.0.0.2:2000", "10.0.0.3:2000"]})

    def resolver(task):
        return tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, task_type="worker", task_id=task)

    killed = tf.errors.UnavailableError(None, None, (
        "Collective ops is aborted by: recvmsg:Connection reset by peer\nAdditional GRPC error "
        "information from remote target /job:worker/replica:0/task:2 while calling "
        "/tensorflow.WorkerService/RecvBuf"))
    hung = tf.errors.UnavailableError(None, None, (
        "Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
        "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"))
    leader = tf.errors.DeadlineExceededError(None, None, (
        "Collective ops is aborted by: Deadline Exceeded\nRPC: /tensorflow.CoordinationService/Heartbeat"))
    assert distribute.lost_peer(killed, resolver(0)) == (
        "worker 2 (10.0.0.3:2000) closed its connections (the process ended)")
    assert distribute.lost_peer(hung, resolver(0)) == (
        "worker 1 (10.0.0.2:2000) stopped sending heartbeats (hung, killed or cut off)")
    assert distribute.lost_peer(leader, resolver(2)).startswith("worker 0 (10.0.0.1:2000) ")
    assert distribute.lost_peer(tf.errors.ResourceExhaustedError(None, None, "OOM"), resolver(0)) is None
    assert distribute.lost_peer(killed, None) is None  # one process: not a lost worker


def test_the_kubernetes_manifest_builds_the_tf_config_of_each_worker():
    """docs/kubernetes/progan-job.yaml (shown in docs/cluster.md): its shell snippet gives pod
    i the TF_CONFIG the two-process tests give worker i (tests/test_cluster.py), naming the
    pods by the headless Service; and every pod runs the same `progan train`."""
    import json
    import subprocess

    import yaml
    from conftest import REPO

    manifest_path = REPO / "docs" / "kubernetes" / "progan-job.yaml"
    text = manifest_path.read_text()
    assert text.strip() in (REPO / "docs" / "cluster.md").read_text()
    service, job = yaml.safe_load_all(text)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    container = pod["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert int(env["WORKERS"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    assert int(env["PORT"]) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    script = container["args"][0]
    launch = script.strip().splitlines()[-1]
    assert launch.startswith("exec progan train ") and "--out /shared/" in launch
    name = job["metadata"]["name"]
    for index in range(int(env["WORKERS"])):
        printed = subprocess.run(["sh", "-c", script.replace(launch, 'printf "%s" "$TF_CONFIG"')],
                                 env={**env, "JOB_COMPLETION_INDEX": str(index), "PATH": "/usr/bin:/bin"},
                                 capture_output=True, text=True, check=True).stdout
        assert json.loads(printed) == {
            "cluster": {"worker": [f"{name}-{i}.{pod['subdomain']}:{env['PORT']}" for i in range(2)]},
            "task": {"type": "worker", "index": index}}
