"""Choosing a `tf.distribute` strategy and feeding it the global batch.

The trainer always works on *global* batches: the input pipeline yields the same global
batch whatever the number of replicas, and replica r of R takes samples r, r + R, r + 2R, ...
Strided (not contiguous) slices keep the reference's minibatch-stddev groups: on one device
sample i is in group i mod (N / G), and with R replicas each replica's groups are exactly
those groups whenever N / G is a multiple of R. So a run's mathematics do not depend on how
many devices share it.
"""

from __future__ import annotations

import json
import os
import re

from progan.backend import tf
from progan.dataset import reader
from progan.errors import ProganError


class DistributeError(ProganError, RuntimeError):
    """The requested strategy cannot run here."""


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError:
        raise DistributeError("TF_CONFIG: not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _slurm_tasks() -> int:
    """The number of tasks of the Slurm job step this process is one of (0 outside `srun`)."""
    if "SLURM_PROCID" not in os.environ:
        return 0
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0"))
    except ValueError:
        raise DistributeError(f"SLURM_STEP_NUM_TASKS={os.environ['SLURM_STEP_NUM_TASKS']!r}: "
                              "not a number") from None


def _tpu_configured() -> bool:
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def _accelerators() -> list:
    """This process's logical GPUs (one function, so that tests can stand in for them)."""
    return tf.config.list_logical_devices("GPU")


def _too_few_gpus(gpus: int, found: int, where: str = "here") -> DistributeError:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={hidden})" if hidden is not None else ""
    advice = f"use --gpus {found}" if found else "leave out --gpus to train on the CPU"
    if gpus < 1:
        return DistributeError(f"--gpus {gpus}: expected a positive number")
    return DistributeError(f"--gpus {gpus}: only {found} GPU(s) visible {where}{seen}; {advice}")


def _chosen_gpus(gpus: int | None) -> list[str]:
    """The names of the first ``gpus`` visible GPUs (all of them when None)."""
    found = [device.name for device in _accelerators()]
    if gpus is not None and not 1 <= gpus <= len(found):
        raise _too_few_gpus(gpus, len(found))
    return found if gpus is None else found[:gpus]


def _limit_physical_gpus(gpus: int | None) -> None:
    """Make only the first ``gpus`` physical GPUs visible to TensorFlow (before it starts)."""
    physical = tf.config.list_physical_devices("GPU")
    if gpus is None:
        return
    if not 1 <= gpus <= len(physical):
        raise _too_few_gpus(gpus, len(physical))
    if gpus < len(physical):
        tf.config.set_visible_devices(physical[:gpus], "GPU")


# TensorFlow's Slurm resolver puts task i of a node on port base + i. Jobs sharing a node must
# not collide, so the default base depends on the job id (and a requeued job, whose id is the
# same, gets the same ports); PROGAN_SLURM_PORT_BASE sets it.
SLURM_PORT_RANGE = (20000, 60000, 16)  # first port, end, ports per job (tasks per node)


def slurm_port_base() -> int:
    """The first port of this Slurm job's tasks on each node."""
    if os.environ.get("PROGAN_SLURM_PORT_BASE"):
        try:
            return int(os.environ["PROGAN_SLURM_PORT_BASE"])
        except ValueError:
            raise DistributeError(f"PROGAN_SLURM_PORT_BASE={os.environ['PROGAN_SLURM_PORT_BASE']!r}: "
                                  "expected a port number") from None
    first, end, width = SLURM_PORT_RANGE
    job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
    return first + job % ((end - first) // width) * width


def slurm_resolver(gpus: int | None = None):
    """The cluster of this Slurm job step, as TensorFlow's `SlurmClusterResolver` reads it
    (hosts from SLURM_STEP_NODELIST, tasks per node, this task's rank from SLURM_PROCID),
    with this task's GPUs: those Slurm bound to it, or its share of its node's GPUs when the
    tasks of a node all see them all (``gpus``: use only the first this many).

    TensorFlow's resolver also hands out GPUs itself, but cannot give a task none (a CPU-only
    step), so progan takes the cluster from it and chooses the GPUs here."""
    try:
        slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=slurm_port_base(), gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False)
        cluster = slurm.cluster_spec()
    except (RuntimeError, ValueError) as error:
        raise DistributeError(f"Slurm: {error}") from None
    task_type, task_id = slurm.task_type, slurm.task_id
    addresses = cluster.job_tasks(task_type)
    host = addresses[task_id].rpartition(":")[0]
    on_this_node = [index for index, address in enumerate(addresses)
                    if address.rpartition(":")[0] == host]
    physical = tf.config.list_physical_devices("GPU")
    mine = physical
    if len(on_this_node) > 1 and len(physical) >= len(on_this_node) and \
            "SLURM_GPUS_PER_TASK" not in os.environ:  # every task sees the node's GPUs: share
        share = len(physical) // len(on_this_node)
        local = on_this_node.index(task_id)
        mine = physical[local * share:(local + 1) * share]
    if gpus is not None:
        if not 1 <= gpus <= len(mine):
            raise _too_few_gpus(gpus, len(mine), f"to Slurm task {task_id}")
        mine = mine[:gpus]
    if len(mine) < len(physical):
        tf.config.set_visible_devices(mine, "GPU")
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type=task_type, task_id=task_id, num_accelerators={"GPU": len(mine)},
        rpc_layer="grpc")


def strategy_name(name: str = "auto", gpus: int | None = None) -> str:
    """What ``auto`` means here: multiworker when TF_CONFIG names several workers or this
    process is one of several tasks of a Slurm job step (`srun`), tpu when a TPU is configured
    (TPU_NAME / COLAB_TPU_ADDR), mirrored with several GPUs (or ``gpus`` > 1), else one.
    Other names are returned as they are."""
    if name != "auto":
        return name
    if _tf_config_workers() > 1 or _slurm_tasks() > 1:
        return "multiworker"
    if _tpu_configured():
        return "tpu"
    return "mirrored" if len(_chosen_gpus(gpus)) > 1 else "one"


def make_strategy(name: str = "auto", gpus: int | None = None) -> tf.distribute.Strategy:
    """A strategy by name: auto (`strategy_name`), one, mirrored, multiworker or tpu;
    ``gpus``: use the first this many visible GPUs (of each worker), as StyleGAN2-ADA's
    ``--gpus``. Under Slurm no TF_CONFIG is needed: `slurm_resolver`.
    """
    name = strategy_name(name, gpus)
    if name == "one":
        if gpus is not None and gpus > 1:
            raise DistributeError(f"--gpus {gpus} --strategy one: one device; use --strategy "
                                  "mirrored (or auto)")
        devices = _chosen_gpus(gpus) or [tf.config.list_logical_devices("CPU")[0].name]
        return tf.distribute.OneDeviceStrategy(devices[0])
    if name == "mirrored":
        devices = _chosen_gpus(gpus) or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        if _tf_config_workers() >= 1:
            _limit_physical_gpus(gpus)
            return tf.distribute.MultiWorkerMirroredStrategy()
        if _slurm_tasks() >= 1:
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_resolver(gpus))
        raise DistributeError("--strategy multiworker: neither TF_CONFIG nor a Slurm job step "
                              "(srun) names the workers")
    if name == "tpu":
        if gpus is not None:
            raise DistributeError(f"--gpus {gpus}: not with --strategy tpu")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"--strategy {name}: expected auto, one, mirrored, multiworker or tpu")


def _multiworker_resolver(strategy):
    """The cluster resolver of a strategy spanning several processes, else None."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return None
    return resolver


def is_multiworker(strategy: tf.distribute.Strategy) -> bool:
    """Whether the strategy spans several processes."""
    return _multiworker_resolver(strategy) is not None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes files (the single worker, or the chief of a cluster)."""
    resolver = _multiworker_resolver(strategy)
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def stop_agreement(strategy: tf.distribute.Strategy):
    """``agree(stop) -> bool``: whether any worker asks to stop. Every worker must call it at
    the same points (between compiled calls), so that all stop after the same iteration even
    when the cluster signalled only some of them. One process: ``stop`` itself.

    The reduction carries no timeout: workers wait here while the chief writes snapshots and
    evaluates metrics, however long that takes."""
    if _multiworker_resolver(strategy) is None:
        return bool

    @tf.function
    def any_stop(stop):
        requests = strategy.run(lambda: tf.identity(stop))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, requests, axis=None) > 0

    return lambda stop: bool(any_stop(tf.constant(float(stop))).numpy())


def position_agreement(strategy: tf.distribute.Strategy):
    """``spread(images_seen) -> (lowest, highest)`` over every worker's replicas: where each
    worker starts. Each worker reads the newest snapshot it sees itself, so workers that do not
    share the run directory (a local disk each, a stale network cache) would each resume from
    another point and train on silently with different weights; the trainer checks that all
    start together. One process: ``(images_seen, images_seen)``."""
    if _multiworker_resolver(strategy) is None:
        return lambda images_seen: (images_seen, images_seen)

    @tf.function
    def gather(position):
        positions = strategy.run(lambda: tf.reshape(tf.identity(position), [1]))
        return strategy.gather(positions, axis=0)

    def spread(images_seen: int) -> tuple[int, int]:
        # float64 holds every count of images exactly (below 2^53)
        values = gather(tf.constant(float(images_seen), tf.float64)).numpy()
        return int(values.min()), int(values.max())

    return spread


# The failures a collective reports when a peer is gone: killed (connection reset), hung or
# cut off (no heartbeats: TensorFlow's coordination service declares it unhealthy after ten
# seconds), or a collective that timed out.
PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                 tf.errors.AbortedError, tf.errors.CancelledError)


def lost_worker(error: Exception, strategy: tf.distribute.Strategy) -> str | None:
    """Which worker ``error`` says was lost and how (e.g. ``worker 1 (10.0.0.2:20000) stopped
    sending heartbeats``), or None when it is not a lost peer of a multi-worker strategy."""
    return lost_peer(error, _multiworker_resolver(strategy))


def lost_peer(error: Exception, resolver) -> str | None:
    """`lost_worker` for this process's cluster ``resolver`` (None: not a cluster)."""
    text = str(getattr(error, "message", error))
    if resolver is None or not (isinstance(error, PEER_FAILURES) or "Collective ops is aborted" in text):
        return None
    cluster = resolver.cluster_spec().as_dict()
    me = (resolver.task_type, resolver.task_id)
    named = text.split("unhealthy", 1)[-1]  # the coordination service lists the lost after this
    found = [(job, int(task)) for job, task in re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", named)
             if job in cluster and (job, int(task)) != me]
    if not found and "CoordinationService" in text:  # its leader (the chief, or worker 0) is gone
        leader = ("chief", 0) if "chief" in cluster else ("worker", 0)
        found = [leader] if leader != me else []
    if "heartbeat" in text.lower():
        how = "stopped sending heartbeats (hung, killed or cut off)"
    elif "connection reset" in text.lower() or "connection refused" in text.lower():
        how = "closed its connections (the process ended)"
    elif isinstance(error, tf.errors.DeadlineExceededError):
        how = "did not answer in time"
    else:
        how = "failed"
    if not found:
        return f"another worker {how}"
    job, task = found[0]
    tasks = cluster[job]
    address = (tasks[task] if isinstance(tasks, list) else tasks.get(task)) if task < len(tasks) else None
    return f"{job} {task}" + (f" ({address})" if address else "") + f" {how}"


def check_global_batch(strategy: tf.distribute.Strategy, global_batch: int, group_size: int) -> None:
    """The global batch must split evenly over replicas, and each slice over mbstd groups."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise DistributeError(f"batch size {global_batch} does not split over {replicas} replicas; "
                              f"use a multiple of {replicas}")
    per_replica = global_batch // replicas
    group = min(group_size, per_replica) if group_size else 1
    if per_replica % group:
        raise DistributeError(f"per-replica batch {per_replica} is not divisible by the "
                              f"minibatch-stddev group size {group}")


def distribute_global_batches(strategy: tf.distribute.Strategy, make_dataset, global_batch: int):
    """A distributed dataset whose replica r receives samples r, r + R, ... of every global batch
    (with one replica, the dataset itself).

    Args:
        strategy: the strategy.
        make_dataset: (shard_index=0, shard_count=1, shard_block=1) -> tf.data.Dataset of this
            input pipeline's share of every global batch: the samples i with
            (i // shard_block) % shard_count == shard_index, in increasing i (see
            progan.dataset.reader.load). Each worker reads only its share.
        global_batch: size of those batches.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        # The plain dataset: the strategy's input wrapper would fetch batches to the device
        # through a second pipeline per device, autotuned whatever the input's options, whose
        # tuning thread delays the drop of every iterator by seconds (see
        # reader.without_autotune). A step copies its batch to the device itself; a batch is
        # small beside a step's work.
        return make_dataset()
    per_replica = global_batch // replicas

    def dataset_fn(context: tf.distribute.InputContext):
        local = replicas // context.num_input_pipelines
        # Pipeline p's share is the samples of replicas p*local .. p*local + local - 1, in the
        # order (k, j) of sample k*replicas + p*local + j: local replica j takes j, j + local, ...

        def by_replica(tensor):
            split = tf.reshape(tensor, [per_replica, local, *tensor.shape[1:]])
            return tf.transpose(split, [1, 0, *range(2, tensor.shape.rank + 1)])

        def slices(*share):  # images, or (images, labels) for a conditional run
            parts = tuple(by_replica(tensor) for tensor in share)
            return tf.data.Dataset.from_tensor_slices(parts if len(parts) > 1 else parts[0])

        share = make_dataset(shard_index=context.input_pipeline_id,
                             shard_count=context.num_input_pipelines, shard_block=local)
        return reader.without_autotune(share.flat_map(slices).prefetch(2))

    options = tf.distribute.InputOptions(experimental_replication_mode=
                                         tf.distribute.InputReplicationMode.PER_WORKER)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def replica_slice(global_tensor, global_batch: int):
    """This replica's strided slice (samples r, r + R, ...) of a tensor computed identically
    on every replica."""
    context = tf.distribute.get_replica_context()
    replicas = context.num_replicas_in_sync
    if replicas == 1:
        return global_tensor
    return global_tensor[context.replica_id_in_sync_group::replicas]
