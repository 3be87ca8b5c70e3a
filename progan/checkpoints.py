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

import re

from progan.backend import tf
from progan.run import RunError, Snapshot

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"  # what tf.train.Checkpoint appends to a variable's path


class SnapshotUnusable(RunError):
    """An intact snapshot that cannot be used here: not damage, so nothing sets it aside."""


class SnapshotMismatchError(SnapshotUnusable):
    """A readable snapshot whose variables do not fit the model built from the run's config
    (a setting of config.json changed since it was written)."""


def checkpoint_shapes(checkpoint: tf.train.Checkpoint) -> dict:
    """``{key: shape}`` of every variable a checkpoint reads or writes, keyed as in the file
    (``discriminator/d_4_conv/kernel``)."""
    view = tf.train.TrackableView(checkpoint)
    shapes, pending = {}, [("", checkpoint)]
    while pending:
        path, node = pending.pop()
        children = view.children(node)
        if not children and hasattr(node, "shape"):  # a variable (tf or Keras)
            shapes[path] = tuple(node.shape)
        for name, child in children.items():
            pending.append((f"{path}/{name}" if path else name, child))
    return shapes


def _likely_setting(key: str, saved: tuple, expected: tuple) -> str:
    """The model setting a differing shape most likely comes from, in words."""
    layer = key.split("/")[-2] if "/" in key else key
    if layer == "d_4_conv" and len(saved) == 4 and abs(saved[2] - expected[2]) == 1:
        return " (model.mbstd_group_size: the minibatch-stddev feature map comes and goes with it)"
    if layer == "g_4_dense" and saved[0] != expected[0]:
        return " (model.latent_size or model.label_size)"
    if (layer.startswith("to_rgb") and saved[-1] != expected[-1]) or (
            layer.startswith("from_rgb") and len(saved) == 4 and saved[2] != expected[2]):
        return " (model.num_channels)"
    if layer == "d_4_dense2" and saved[-1] != expected[-1]:
        return " (model.label_size)"
    return " (model.fmap_base, fmap_max or fmap_decay)"


def check_shapes(snapshot: Snapshot, checkpoint: tf.train.Checkpoint, saved: dict,
                 partial: bool) -> None:
    """Raise `SnapshotMismatchError` naming the first variable of ``checkpoint`` whose shape
    differs from the snapshot's (``saved``: `tf.train.list_variables` as a dict), or that one
    of them lacks; network weights are named before optimiser slots."""
    saved = {key[:-len(VALUE_SUFFIX)]: tuple(shape) for key, shape in saved.items()
             if key.endswith(VALUE_SUFFIX)}
    expected = checkpoint_shapes(checkpoint)
    order = sorted(set(expected) | set(saved),
                   key=lambda key: (key.split("/")[0].endswith("optimizer"), key))
    for key in order:
        if key in expected and key in saved and expected[key] != saved[key]:
            raise SnapshotMismatchError(
                f"{snapshot.path}: {key} is {list(saved[key])} in the snapshot but "
                f"{list(expected[key])} in the model built from config.json"
                f"{_likely_setting(key, saved[key], expected[key])}: config.json's model settings "
                "differ from the snapshots'; put back the settings the run was trained with "
                "(nothing was set aside)")
        missing = key in expected and key not in saved
        if missing or (key in saved and key not in expected and not partial):
            where = "the snapshot lacks" if missing else "the model built from config.json has no"
            raise SnapshotMismatchError(
                f"{snapshot.path}: {where} {key}: config.json's model settings differ from the "
                "snapshots'; put back the settings the run was trained with (nothing was set aside)")


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


LAYER_RESOLUTION = re.compile(r"^(?:g|d|to_rgb|from_rgb)_(\d+)_?")


def grown_layers(keys, layers) -> frozenset:
    """The ``layers`` of resolutions above every one a snapshot holds (``keys``: its variable
    names): what a run grown to a higher ``model.max_resolution`` has added since (they start
    from their initial values, their Adam state from zero)."""
    def resolution(layer):
        found = LAYER_RESOLUTION.match(layer)
        return int(found.group(1)) if found else 0

    held = [resolution(key.split("/")[1]) for key in keys
            if key.split("/")[0] in ("generator", "ema") and key.count("/") > 1]
    top = max(held, default=0)
    return frozenset(layer for layer in layers if top and resolution(layer) > top)


def _without(named: dict, skip) -> dict:
    return {layer: weights for layer, weights in named.items() if layer not in skip}


def full_checkpoint(networks, ema, g_optimizer, d_optimizer, counters: dict,
                    skip=frozenset()) -> tf.train.Checkpoint:
    """The full training state (see the module docstring for its keys), without the layers
    in ``skip`` (`grown_layers`)."""
    generator = _without(networks.named_weights("generator"), skip)
    discriminator = _without(networks.named_weights("discriminator"), skip)
    return tf.train.Checkpoint(
        generator=generator, discriminator=discriminator,
        ema=_without(ema.named_weights("generator"), skip),
        g_optimizer=optimizer_slots(g_optimizer, generator),
        d_optimizer=optimizer_slots(d_optimizer, discriminator), counters=dict(counters))


def network_checkpoint(ema, skip=frozenset()) -> tf.train.Checkpoint:
    """The EMA generator alone (what evaluation, generation and export read), without the
    layers in ``skip``."""
    return tf.train.Checkpoint(ema=_without(ema.named_weights("generator"), skip))


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

    Every variable of that checkpoint must receive a value of its shape (and, unless
    ``partial``, every value in the snapshot must find its variable): a snapshot that does
    not fit is a `SnapshotMismatchError` (the config changed; the snapshot is fine). File
    sizes are checked against ``snapshot.json`` first, and TensorFlow checks each tensor's
    CRC as it reads: damage is one `RunError` naming the snapshot. Returns ``snapshot.json``.
    A value of ``checkpoints`` may be a function of the snapshot's set of keys returning the
    checkpoint (counters that older snapshots lack).
    """
    info = snapshot.verify()
    checkpoint = checkpoints.get(info["format_version"])
    if checkpoint is None:
        raise RunError(f"{snapshot.path}: format {info['format_version']} cannot be read here")
    try:
        saved = dict(tf.train.list_variables(str(snapshot.prefix)))
    except Exception as error:  # noqa: BLE001 - an index that does not parse is damage
        raise _read_error(snapshot, error) from None
    if not isinstance(checkpoint, tf.train.Checkpoint):  # built for the keys it holds
        checkpoint = checkpoint(set(saved))
    check_shapes(snapshot, checkpoint, saved, partial)
    try:
        status = checkpoint.read(str(snapshot.prefix))
        status.assert_existing_objects_matched()
        if partial:
            status.expect_partial()
        else:
            status.assert_consumed()
    except Exception as error:  # noqa: BLE001 - the shapes fit, so anything else is damage
        raise _read_error(snapshot, error) from None
    return info


def _read_error(snapshot: Snapshot, error: Exception) -> RunError:
    """Damage (`RunError`), or `SnapshotUnusable` when the files could not be opened at all
    (permissions), which says nothing about their state."""
    first = (str(error).strip().splitlines() or [""])[0][:200]
    if isinstance(error, (tf.errors.PermissionDeniedError, PermissionError)):
        return SnapshotUnusable(f"{snapshot.path}: permission denied ({first})")
    return RunError(f"{snapshot.path}: cannot be read ({type(error).__name__}: {first})")


def read_ema(snapshot: Snapshot, ema) -> dict:
    """Read only the EMA generator of a full or network snapshot into ``ema`` (a
    ``ProGAN(..., with_discriminator=False)``)."""
    def for_keys(keys):  # a snapshot from before the run grew lacks the new layers
        return network_checkpoint(ema, grown_layers(keys, ema.named_weights("generator")))

    return read_snapshot(snapshot, {2: for_keys,
                                    1: tf.train.Checkpoint(ema=list(ema.generator_variables()))},
                         partial=True)
