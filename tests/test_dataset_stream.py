"""progan.dataset.reader past RAM and across workers: streaming with a memory budget below
the level, the same stream as in memory, disjoint shards whose union is the global batch."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_CONFIG

from progan.dataset import reader
from progan.dataset.format import DatasetError
from progan.dataset.reader import load, read_images, shard_slots, uses_memory
from progan.dataset.synthetic import SyntheticSource
from progan.dataset.writer import write_dataset

COUNT, TRAIN, RES = 40, 30, 16
LEVEL_BYTES = TRAIN * RES * RES * 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "faces"
    write_dataset(path, SyntheticSource(COUNT, RES, seed=2), workers=1, train_count=TRAIN, progress=False)
    return path


@pytest.fixture
def reads(monkeypatch):
    """Record numbers read through os.preadv by the streaming reader, per file name."""
    seen = []
    real = reader.os.preadv

    def spy(fd, buffers, offset):
        got = real(fd, buffers, offset)
        seen.append((offset, sum(len(b) for b in buffers)))
        return got

    monkeypatch.setattr(reader.os, "preadv", spy)
    return seen


def record_numbers(reads, record_size):
    numbers = []
    for offset, size in reads:
        assert offset % record_size == 0 and size % record_size == 0
        numbers += range(offset // record_size, (offset + size) // record_size)
    return numbers


def take(dataset, batches):
    return [batch.numpy() for batch in dataset.take(batches)]


def to_records(batch, records):
    """Record index (within ``records``) of each image of a float batch."""
    as_uint8 = np.rint((batch + 1.0) * 127.5).astype(np.uint8).reshape(len(batch), -1)
    flat = records.reshape(len(records), -1)
    flipped = records[:, :, ::-1].reshape(len(records), -1)
    found = []
    for image in as_uint8:
        match = np.flatnonzero((flat == image).all(axis=1) | (flipped == image).all(axis=1))
        assert len(match) == 1
        found.append(int(match[0]))
    return found


@pytest.mark.parametrize("split, shuffle, mirror, start", [("train", True, True, 0),
                                                           ("train", True, False, 13),
                                                           ("test", False, True, 3)])
def test_streaming_serves_the_in_memory_stream_with_a_budget_below_the_level(
        dataset, reads, split, shuffle, mirror, start):
    budget = LEVEL_BYTES // 4
    assert uses_memory(dataset, RES, split) and not uses_memory(dataset, RES, split, budget)
    kwargs = dict(split=split, batch_size=8, mirror=mirror, seed=5, start_image=start, shuffle=shuffle)
    in_memory = take(load(dataset, RES, **kwargs), 9)  # more than two epochs of the train split
    assert reads == []
    streamed = take(load(dataset, RES, memory_budget=budget, **kwargs), 9)
    assert reads, "the streaming reader read nothing from disk"
    for expected, got in zip(in_memory, streamed):
        np.testing.assert_array_equal(expected, got)
    # Exact resume in the streaming mode: from image 21 on, with another batch size.
    resumed = np.concatenate(take(load(dataset, RES, memory_budget=budget, **dict(
        kwargs, start_image=start + 21, batch_size=5)), 6))
    np.testing.assert_array_equal(np.concatenate(streamed)[21:51], resumed)


def test_environment_budget_and_bad_values(dataset, monkeypatch):
    monkeypatch.setenv(reader.BUDGET_ENV, "1K")
    assert not uses_memory(dataset, RES)
    monkeypatch.setenv(reader.BUDGET_ENV, "1G")
    assert uses_memory(dataset, RES)
    for bad in ("lots", "inf", "nan", "1e30G"):  # never an OverflowError or a NaN budget
        monkeypatch.setenv(reader.BUDGET_ENV, bad)
        with pytest.raises(DatasetError, match=f"PROGAN_DATA_MEMORY_BUDGET '{bad}': expected a "
                                               "number of bytes"):
            load(dataset, RES)
    monkeypatch.delenv(reader.BUDGET_ENV)
    with pytest.raises(DatasetError, match="batch_size a multiple of shard_count"):
        load(dataset, RES, batch_size=6, shard_index=0, shard_count=4)
    with pytest.raises(DatasetError, match="expected 0 <= shard_index < shard_count"):
        load(dataset, RES, batch_size=8, shard_index=2, shard_count=2)


@pytest.mark.parametrize("block", [1, 2])
def test_two_shards_read_disjoint_halves_whose_union_is_the_global_batch(dataset, reads, block):
    batch, steps = 8, COUNT // 8  # one epoch of the 'all' split
    records = read_images(dataset, RES, "all")
    size = reader.RecordFile(dataset / "faces-r04.tfrecords", 0, COUNT).record_size
    slots = [shard_slots(batch, index, 2, block) for index in range(2)]
    assert sorted(np.concatenate(slots).tolist()) == list(range(batch))
    for start in (0, 4):  # an epoch from its start, and batches that straddle epochs
        kwargs = dict(split="all", batch_size=batch, mirror=True, seed=11, start_image=start)
        reads.clear()
        whole = take(load(dataset, RES, **kwargs), steps)
        assert reads == []  # one worker, small level: in memory
        shares, read_by = [], []
        for index in range(2):
            reads.clear()
            shares.append(take(load(dataset, RES, shard_index=index, shard_count=2,
                                    shard_block=block, **kwargs), steps))
            read_by.append(record_numbers(reads, size))
        for step in range(steps):
            assert shares[0][step].shape == shares[1][step].shape == (batch // 2, RES, RES, 3)
            union = np.empty_like(whole[step])
            union[slots[0]], union[slots[1]] = shares[0][step], shares[1][step]
            np.testing.assert_array_equal(union, whole[step])
        # Each worker read from disk exactly the records of its own slots, batch by batch
        # (the prefetch may have read further ahead).
        mine = [[to_records(share, records) for share in shares[index]] for index in range(2)]
        for index in range(2):
            expected = [r for step in mine[index] for r in sorted(step)]
            assert read_by[index][:len(expected)] == expected
        if start == 0:  # over one epoch: two disjoint halves of the records
            first, second = (set(r for step in mine[i] for r in step) for i in range(2))
            assert len(first) == len(second) == COUNT // 2
            assert not first & second and first | second == set(range(COUNT))


def test_damaged_record_layout_is_named(tmp_path):
    path = tmp_path / "bad"
    write_dataset(path, SyntheticSource(6, 8, seed=0), workers=1, progress=False)
    level = path / "bad-r03.tfrecords"
    data = bytearray(level.read_bytes())
    size = len(data) // 6
    data[3 * size + 2] ^= 0x40  # record 3's length field
    level.write_bytes(bytes(data))
    iterator = iter(load(path, 8, "all", batch_size=6, shuffle=False, memory_budget=1))
    with pytest.raises(tf.errors.OpError, match="bad-r03.tfrecords: record 3 does not have the layout"):
        next(iterator)


def test_trainer_runs_on_a_streamed_level(tmp_path, tiny_dataset, monkeypatch, reads):
    from progan.config import Config
    from progan.training import trainer as training

    monkeypatch.setenv(reader.BUDGET_ENV, "1K")  # the trainer calls reader.load without a budget
    assert not uses_memory(tiny_dataset, 8)
    config = Config.from_dict(TINY_CONFIG)
    run = training.Trainer(config, tiny_dataset, tmp_path / "run")
    run.state.images_seen.assign(run.schedule.start_of(8, fading=True))
    before = [v.numpy() for v in run.state.generator_variables]
    run.run_iterations(2)
    assert reads, "the trainer's batches did not come from the streaming reader"
    after = [v.numpy() for v in run.state.generator_variables]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))


def test_training_pipelines_run_without_a_tuning_thread(dataset):
    """tf.data's autotuning thread outlives a dropped iterator (dropping one waited for it,
    seconds to a minute): the training input, from memory or streamed, has no autotuning,
    and on one device the loop iterates it directly, with no strategy wrapper (whose
    per-device pipeline would be autotuned again)."""
    from progan.training.distribute import distribute_global_batches

    for budget in (None, LEVEL_BYTES - 1):  # in memory, streamed
        assert load(dataset, RES, batch_size=4, memory_budget=budget).options().autotune.enabled is False
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    served = distribute_global_batches(strategy, lambda **_: load(dataset, RES, batch_size=4), 4)
    assert isinstance(served, tf.data.Dataset) and served.options().autotune.enabled is False
    first = next(iter(served)).numpy()
    np.testing.assert_array_equal(first, take(load(dataset, RES, batch_size=4), 1)[0])
