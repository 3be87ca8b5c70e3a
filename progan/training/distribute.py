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

from progan.backend import tf
from progan.errors import ProganError



class DistributeError(ProganError, RuntimeError):
    """The requested strategy cannot run here."""


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError:
        raise DistributeError("TF_CONFIG: not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_configured() -> bool:
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"))


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A strategy by name: auto, one, mirrored, multiworker or tpu.

    ``auto`` picks MultiWorkerMirrored when TF_CONFIG names several workers, TPU when a TPU
    is configured (TPU_NAME / COLAB_TPU_ADDR), Mirrored when there are several GPUs, and
    otherwise one device.
    """
    if name == "auto":
        if _tf_config_workers() > 1:
            name = "multiworker"
        elif _tpu_configured():
            name = "tpu"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one"
    if name == "one":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.OneDeviceStrategy(devices[0].name)
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        if _tf_config_workers() < 1:
            raise DistributeError("--strategy multiworker: TF_CONFIG names no workers")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(os.environ.get("TPU_NAME", ""))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise DistributeError(f"--strategy {name}: expected auto, one, mirrored, multiworker or tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes files (the single worker, or the chief of a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


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
    """A distributed dataset whose replica r receives samples r, r + R, ... of every global batch.

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
        return strategy.experimental_distribute_dataset(
            make_dataset(), tf.distribute.InputOptions(experimental_fetch_to_device=True))
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
        return share.flat_map(slices).prefetch(2)

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
