"""What a snapshot holds and how it is read back, for every format version.

A *full* snapshot holds everything a resume needs, keyed by stable names::

    generator/<layer>/<weight>             e.g. generator/g_8_conv1/kernel
    discriminator/<layer>/<weight>         e.g. discriminator/from_rgb_8/bias
    ema/<layer>/<weight>                   the moving-average generator
    g_optimizer/iterations, g_optimizer/m/<layer>/<weight>, g_optimizer/v/<layer>/<weight>
    d_optimizer/...                        the same for the discriminator's Adam
    counters/<name>                        images seen, optimiser stage, loss scale, ...
                                           (augment_p, augment_signs, augment_count,
                                           augment_rt when loss.augment is set)

A *network* snapshot holds only ``ema/...``. Random numbers (latents, mixing factors, data
order, flips) are pure functions of the seed and images seen, so no RNG state is saved.
Snapshots of progan 0.1.0 (format 1) keyed the same variables by list position; they are
read through `legacy_checkpoint`, which lists the variables in that version's order.
"""

from __future__ import annotations

from progan.backend import tf
from progan.run import RunError, Snapshot


def optimizer_slots(optimizer, named_weights: dict) -> dict:
    """An Adam optimiser's state keyed like the weights it updates: ``iterations``, and
    ``m``/``v`` (first and second moments) as ``{layer: {weight: slot}}``.

    Keras 3's Adam keeps the moments in lists indexed like the variables it was built with;
    ``_get_variable_index`` is how Keras itself finds a variable's slot.
    """
    moments: dict = {"m": {}, "v": {}}
    for layer, weights in named_weights.items():
        for name, variable in weights.items():
            if not variable.trainable:
                continue
            index = optimizer._get_variable_index(variable)
            moments["m"].setdefault(layer, {})[name] = optimizer._momentums[index]
            moments["v"].setdefault(layer, {})[name] = optimizer._velocities[index]
    return {"iterations": optimizer.iterations, **moments}


def full_checkpoint(networks, ema, g_optimizer, d_optimizer, counters: dict) -> tf.train.Checkpoint:
    """The full training state (see the module docstring for its keys)."""
    generator = networks.named_weights("generator")
    discriminator = networks.named_weights("discriminator")
    return tf.train.Checkpoint(
        generator=generator, discriminator=discriminator, ema=ema.named_weights("generator"),
        g_optimizer=optimizer_slots(g_optimizer, generator),
        d_optimizer=optimizer_slots(d_optimizer, discriminator), counters=dict(counters))


def network_checkpoint(ema) -> tf.train.Checkpoint:
    """The EMA generator alone (what evaluation, generation and export read)."""
    return tf.train.Checkpoint(ema=ema.named_weights("generator"))


def legacy_checkpoint(networks, ema, g_optimizer, d_optimizer, counters: dict,
                      full: bool = True) -> tf.train.Checkpoint:
    """Format 1 (progan 0.1.0): the same variables keyed by their position in that version's
    lists (``generator/0``, ...); counters at the top level. ``full=False``: the EMA only."""
    ema_list = list(ema.generator_variables())
    if not full:
        return tf.train.Checkpoint(ema=ema_list)
    return tf.train.Checkpoint(
        generator=list(networks.generator_variables()),
        discriminator=list(networks.discriminator_variables()), ema=ema_list,
        g_optimizer=list(g_optimizer.variables), d_optimizer=list(d_optimizer.variables),
        **{name: counters[name] for name in ("images_seen", "optimizer_stage", "loss_scale",
                                             "finite_streak", "nonfinite_streak", "skipped_steps")})


def read_snapshot(snapshot: Snapshot, checkpoints: dict, partial: bool = False) -> dict:
    """Verify a snapshot and read it into the variables of ``checkpoints[format_version]``.

    Every variable of that checkpoint must receive a value (and, unless ``partial``, every
    value in the snapshot must find its variable); file sizes are checked against
    ``snapshot.json`` first, and TensorFlow checks each tensor's CRC as it reads. Any
    failure is one `RunError` naming the snapshot. Returns ``snapshot.json``. A value of
    ``checkpoints`` may be a function of the snapshot's set of keys returning the checkpoint
    (counters that older snapshots lack). 
    """
    info = snapshot.verify()
    checkpoint = checkpoints.get(info["format_version"])
    if checkpoint is None:
        raise RunError(f"{snapshot.path}: format {info['format_version']} cannot be read here")
    try:
        if not isinstance(checkpoint, tf.train.Checkpoint):  # built for the keys it holds
            checkpoint = checkpoint({name for name, _ in tf.train.list_variables(str(snapshot.prefix))})
        status = checkpoint.read(str(snapshot.prefix))
        status.assert_existing_objects_matched()
        if partial:
            status.expect_partial()
        else:
            status.assert_consumed()
    except Exception as error:  # noqa: BLE001 - any damage means: not this snapshot
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise RunError(f"{snapshot.path}: cannot be read ({type(error).__name__}: {first})") from None
    return info


def read_ema(snapshot: Snapshot, ema) -> dict:
    """Read only the EMA generator of a full or network snapshot into ``ema`` (a
    ``ProGAN(..., with_discriminator=False)``)."""
    return read_snapshot(snapshot, {2: network_checkpoint(ema),
                                    1: tf.train.Checkpoint(ema=list(ema.generator_variables()))},
                         partial=True)
