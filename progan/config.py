"""Settings of a run: frozen dataclasses, named presets, JSON round-trip.

A `Config` has five sections (`model`, `schedule`, `loss`, `optimizer`, `training`).
`Config.from_dict` rejects unknown keys and impossible values with one clear line
naming the setting, so a typo in a JSON file never trains the wrong model for days.

Presets:
  celeba64  the thesis setup: CelebA 4x4 -> 64x64, batch 16, lr 0.001, 800k + 800k images
  paper     the official CelebA-HQ 1024x1024 settings (paper v1 minibatches)
  demo      small widths that train 4x4 -> 32x32 on a 2-core CPU in minutes
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from progan.errors import ProganError
from progan.resolution import is_power_of_two


class ConfigError(ProganError, ValueError):
    """A setting is unknown or has an impossible value."""





class _Section:
    """A section of the settings checks itself once, when it is made (every way of making one:
    a preset, ``from_dict``, ``replace`` or a direct call), so no user of it checks again."""

    def __post_init__(self):
        self.validate()


def _require(condition: bool, setting: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{setting}: expected {expected}, got {value!r}")


MAX_SEED = 2 ** 31 - 1  # what every seeded generator (NumPy, TensorFlow, Keras) accepts


def _require_finite(section) -> None:
    """Every float setting of a section is a finite number: a value set in Python (e.g.
    ``--kimg inf`` through fine-tuning) never passes through `Config.from_dict`'s check."""
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        if isinstance(value, float):
            _require(math.isfinite(value), f"{type(section).SECTION}.{field.name}",
                     "a finite number", value)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """Widths and details of the generator and discriminator (reference `G_paper`/`D_paper`)."""

    SECTION = "model"

    latent_size: int = 512
    fmap_base: int = 8192
    fmap_decay: float = 1.0
    fmap_max: int = 512
    max_resolution: int = 64
    num_channels: int = 3
    normalize_latents: bool = True
    pixelnorm_epsilon: float = 1e-8
    leaky_slope: float = 0.2
    mbstd_group_size: int = 4
    # Fuse upscale+conv / conv+downscale into one strided 4x4 convolution from this
    # resolution on (the reference fuses from 128); 0 disables fusing.
    fused_scale_from: int = 128
    spectral_norm: bool = False
    # Equalised-LR gains of the three layers where the reference departs from He's sqrt(2):
    # the generator's first (dense) layer sqrt(2)/4, toRGB 1, the discriminator's output 1.
    # Under Adam a gain is also the layer's learning-rate factor (its output moves gain x
    # faster), and at small widths the reference's toRGB 1 / D output 1 make fade-ins slow
    # and unstable (demo SWD at the end of the 8x8 fade 199 +- 77 with them,
    # 63 +- 9 with sqrt(2) on all three and no pixel norm after the dense layer; see
    # tools/bench_quality.py). The defaults are the reference's; the demo preset uses sqrt(2).
    g_dense_gain: float = math.sqrt(2.0) / 4.0
    to_rgb_gain: float = 1.0
    d_output_gain: float = 1.0
    # Pixel norm after the generator's first (dense) layer, as the reference does.
    pixelnorm_after_dense: bool = True
    # Conditioning (reference AC-GAN): labels [N, label_size] are concatenated to the latents
    # and the discriminator's last layer outputs 1 + label_size values (score, label logits).
    # 0 = unconditional. label_kind: "multi_label" (independent binary attributes, sigmoid
    # cross-entropy) or "one_hot" (classes, softmax cross-entropy); the data set says which.
    label_size: int = 0
    label_kind: str = "multi_label"

    def validate(self) -> None:
        _require_finite(self)
        _require(self.latent_size >= 1, "model.latent_size", "a positive integer", self.latent_size)
        _require(isinstance(self.label_size, int) and self.label_size >= 0, "model.label_size",
                 "0 (unconditional) or the number of labels", self.label_size)
        _require(self.label_kind in LABEL_KINDS, "model.label_kind", " or ".join(LABEL_KINDS),
                 self.label_kind)
        _require(is_power_of_two(self.max_resolution) and 4 <= self.max_resolution <= 1024,
                 "model.max_resolution", "a power of two from 4 to 1024", self.max_resolution)
        _require(self.fmap_base >= 1 and self.fmap_max >= 1, "model.fmap_base/fmap_max",
                 "positive integers", (self.fmap_base, self.fmap_max))
        _require(self.num_channels in (1, 3), "model.num_channels", "1 or 3", self.num_channels)
        _require(self.mbstd_group_size >= 0, "model.mbstd_group_size", "0 (off) or a group size",
                 self.mbstd_group_size)
        _require(self.pixelnorm_epsilon > 0, "model.pixelnorm_epsilon", "a positive number",
                 self.pixelnorm_epsilon)
        _require(self.fused_scale_from == 0 or is_power_of_two(self.fused_scale_from),
                 "model.fused_scale_from", "0 or a power of two", self.fused_scale_from)
        for name in ("g_dense_gain", "to_rgb_gain", "d_output_gain"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                     f"model.{name}", "a positive number", value)

    def num_features(self, stage: int) -> int:
        """nf(s) = min(fmap_base / 2^(s * fmap_decay), fmap_max), as in the reference."""
        return min(int(self.fmap_base / (2.0 ** (stage * self.fmap_decay))), self.fmap_max)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """Progressive-growing schedule; images seen is the clock (see `progan.schedule`)."""

    SECTION = "schedule"

    start_resolution: int = 4
    stable_kimg: float = 800.0
    fade_kimg: float = 800.0
    # None: stop when the last resolution has had its stable phase.
    total_kimg: float | None = None
    batch_size: int = 16
    batch_sizes: dict[int, int] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        _require_finite(self)
        _require(is_power_of_two(self.start_resolution) and self.start_resolution >= 4,
                 "schedule.start_resolution", "a power of two >= 4", self.start_resolution)
        _require(self.stable_kimg > 0, "schedule.stable_kimg", "a positive number", self.stable_kimg)
        _require(self.fade_kimg >= 0, "schedule.fade_kimg", "a number >= 0", self.fade_kimg)
        _require(self.total_kimg is None or self.total_kimg > 0, "schedule.total_kimg",
                 "a positive number or null", self.total_kimg)
        _require(self.batch_size >= 1, "schedule.batch_size", "a positive integer", self.batch_size)
        for resolution, batch in self.batch_sizes.items():
            _require(is_power_of_two(resolution), "schedule.batch_sizes", "power-of-two keys",
                     resolution)
            _require(isinstance(batch, int) and batch >= 1, f"schedule.batch_sizes[{resolution}]",
                     "a positive integer", batch)


LABEL_KINDS = ("multi_label", "one_hot")
LOSSES = ("wgan_gp", "nonsaturating_r1", "least_squares")
AUGMENT_OPS = ("translation", "cutout", "color")  # progan.training.augment


@dataclasses.dataclass(frozen=True)
class LossConfig(_Section):
    """Loss functions (`progan.losses`): WGAN-GP with drift, non-saturating + R1, least squares."""

    SECTION = "loss"

    name: str = "wgan_gp"
    gp_lambda: float = 10.0
    gp_gamma: float = 1.0
    drift: float = 0.001
    r1_gamma: float = 10.0
    # The generator step draws its own latents (reference); true reuses the discriminator
    # step's latents of the same iteration, as pro-gan-pth does.
    shared_latents: bool = False
    # Weight of the label cross-entropy terms of a conditional model (reference cond_weight).
    cond_weight: float = 1.0
    # Differentiable augmentation (DiffAugment) of every image D sees, reals and fakes
    # (`progan.training.augment`): some of translation, cutout, color; () = off. Each op is
    # applied per sample with probability augment_p, or, with augment_target set, with a p
    # that starts at 0 and every augment_interval iterations moves by batch x interval /
    # (augment_speed_kimg x 1000) towards E[sign(D(real))] = augment_target (StyleGAN2-ADA).
    augment: tuple[str, ...] = ()
    augment_p: float = 1.0
    augment_target: float | None = None
    augment_interval: int = 4
    augment_speed_kimg: float = 100.0

    def validate(self) -> None:
        _require_finite(self)
        _require(self.name in LOSSES, "loss.name", "one of " + ", ".join(LOSSES), self.name)
        _require(isinstance(self.augment, tuple) and all(op in AUGMENT_OPS for op in self.augment)
                 and len(set(self.augment)) == len(self.augment), "loss.augment",
                 "distinct names from " + ", ".join(AUGMENT_OPS), self.augment)
        _require(0 <= self.augment_p <= 1, "loss.augment_p", "a probability in [0, 1]",
                 self.augment_p)
        _require(self.augment_target is None or 0 < self.augment_target < 1,
                 "loss.augment_target", "null (fixed augment_p) or a value in (0, 1)",
                 self.augment_target)
        _require(self.augment_interval >= 1, "loss.augment_interval", "a positive integer",
                 self.augment_interval)
        _require(self.augment_speed_kimg > 0, "loss.augment_speed_kimg", "a positive number",
                 self.augment_speed_kimg)
        _require(self.cond_weight >= 0, "loss.cond_weight", "a number >= 0", self.cond_weight)
        _require(self.gp_lambda >= 0 and self.gp_gamma > 0 and self.drift >= 0 and self.r1_gamma >= 0,
                 "loss", "gp_lambda >= 0, gp_gamma > 0, drift >= 0, r1_gamma >= 0",
                 (self.gp_lambda, self.gp_gamma, self.drift, self.r1_gamma))


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """Adam for both networks: its learning rates (per network, per resolution, in fade-ins
    and at the end of stable phases; `progan.schedule` applies them per stage), its betas and
    epsilon, and its state reset as the reference does when a fade-in starts and ends."""

    SECTION = "optimizer"

    g_lr: float = 0.001
    d_lr: float = 0.001
    # Per-resolution learning rate for both networks, overriding g_lr/d_lr.
    lr_by_resolution: dict[int, float] = dataclasses.field(default_factory=dict)
    # Both learning rates are multiplied by this during fade-ins (1: the reference).
    fade_lr_scale: float = 1.0
    # The last fraction of every stable phase over which both learning rates fall linearly
    # to 0 (0 = off, the reference), so that a phase ends settled rather than mid-stride.
    # Measured: no gain at the demo's widths (end of the 8x8 stable phase 34.3 +- 3.8
    # with 0.25, 33.6 +- 1.5 without); an option for longer runs, not a preset's choice.
    stable_lr_rampdown: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.99
    epsilon: float = 1e-8
    reset_on_fade_start: bool = True
    reset_on_fade_end: bool = True
    # Frozen discriminator layers (FreezeD, Mo et al. 2020; StyleGAN2-ADA's freezed): the N
    # highest-resolution blocks of the current stage, the ones nearest the input, and their
    # fromRGB layers get no updates (at 32x32 with N=2: d_32_*, d_16_*, from_rgb_32 and
    # from_rgb_16). 0 = nothing frozen.
    freeze_d: int = 0

    def validate(self) -> None:
        _require_finite(self)
        _require(isinstance(self.freeze_d, int) and self.freeze_d >= 0, "optimizer.freeze_d",
                 "0 (nothing frozen) or a number of blocks", self.freeze_d)
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optimizer.beta1/beta2",
                 "values in [0, 1)", (self.beta1, self.beta2))
        _require(self.epsilon > 0, "optimizer.epsilon", "a positive number", self.epsilon)
        for name in ("g_lr", "d_lr"):
            _require(getattr(self, name) > 0, f"optimizer.{name}", "a positive number",
                     getattr(self, name))
        _require(self.fade_lr_scale > 0, "optimizer.fade_lr_scale", "a positive number",
                 self.fade_lr_scale)
        _require(0 <= self.stable_lr_rampdown <= 1, "optimizer.stable_lr_rampdown",
                 "a fraction of the stable phase in [0, 1]", self.stable_lr_rampdown)
        for resolution, lr in self.lr_by_resolution.items():
            _require(is_power_of_two(resolution) and lr > 0, f"optimizer.lr_by_resolution[{resolution}]",
                     "a positive number at a power-of-two resolution", lr)


STRATEGIES = ("auto", "one", "mirrored", "multiworker", "tpu")
PRECISIONS = ("off", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
    """How a run executes and reports; none of it changes the model's mathematics."""

    SECTION = "training"

    seed: int = 0
    mirror: bool = True
    ema_beta: float = 0.999
    # The EMA during fade-ins (None: ema_beta). While alpha moves, the generator changes
    # systematically and a long average lags behind it; a shorter one during fades and a
    # longer one in stable phases gives the best of both (docs/quality.md; the demo preset).
    ema_beta_fade: float | None = None
    tick_kimg: float = 20.0
    snapshot_kimg: float = 200.0
    keep_checkpoints: int = 5
    max_nonfinite_steps: int = 20
    strategy: str = "auto"
    mixed_precision: str = "off"
    xla: bool = False
    deterministic: bool = False
    grid_size: int = 8
    steps_per_call: int = 1
    metrics: tuple[str, ...] = ()
    metrics_kimg: float = 0.0
    metrics_num_images: int = 2048

    def validate(self) -> None:
        _require_finite(self)
        _require(isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED, "training.seed",
                 f"an integer from 0 to {MAX_SEED} (2^31 - 1)", self.seed)
        _require(0 <= self.ema_beta < 1, "training.ema_beta", "a value in [0, 1)", self.ema_beta)
        _require(self.ema_beta_fade is None or 0 <= self.ema_beta_fade < 1,
                 "training.ema_beta_fade", "null (= ema_beta) or a value in [0, 1)",
                 self.ema_beta_fade)
        _require(self.tick_kimg > 0, "training.tick_kimg", "a positive number", self.tick_kimg)
        _require(self.snapshot_kimg > 0, "training.snapshot_kimg", "a positive number",
                 self.snapshot_kimg)
        _require(self.keep_checkpoints >= 1, "training.keep_checkpoints", "at least 1",
                 self.keep_checkpoints)
        _require(self.max_nonfinite_steps >= 1, "training.max_nonfinite_steps", "at least 1",
                 self.max_nonfinite_steps)
        _require(self.strategy in STRATEGIES, "training.strategy", "one of " + ", ".join(STRATEGIES),
                 self.strategy)
        _require(self.mixed_precision in PRECISIONS, "training.mixed_precision",
                 "one of " + ", ".join(PRECISIONS), self.mixed_precision)
        _require(self.grid_size >= 1, "training.grid_size", "a positive integer", self.grid_size)
        _require(self.steps_per_call >= 1, "training.steps_per_call", "a positive integer",
                 self.steps_per_call)
        # The names are checked against the metric registry where a run is wired
        # (`progan.evaluation.run.training_metrics`): settings know no metric code.
        _require(self.metrics_kimg >= 0 and self.metrics_num_images >= 2,
                 "training.metrics_kimg/metrics_num_images", "kimg >= 0 and at least 2 images",
                 (self.metrics_kimg, self.metrics_num_images))


SECTIONS = {
    "model": ModelConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. `config.json` in a run directory is `Config.to_dict()`."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)

    def __post_init__(self):  # each section has checked itself; what spans sections:
        _require(self.schedule.start_resolution <= self.model.max_resolution,
                 "schedule.start_resolution", f"at most model.max_resolution "
                 f"({self.model.max_resolution})", self.schedule.start_resolution)
        blocks = self.model.max_resolution.bit_length() - 2  # 4x4 ... max_resolution
        _require(self.optimizer.freeze_d < blocks, "optimizer.freeze_d", f"fewer than the "
                 f"discriminator's {blocks} blocks at max_resolution {self.model.max_resolution} "
                 f"(at most {blocks - 1}; {blocks} or more freezes every one, so it never learns)",
                 self.optimizer.freeze_d)

    def to_dict(self) -> dict:
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "Config":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{source}: unknown section {unknown[0]!r}; expected "
                              + ", ".join(SECTIONS))
        data = _moved_settings(data, source)
        return cls(**{name: _section_from_dict(SECTIONS[name], data.get(name, {}), f"{source}:{name}")
                      for name in SECTIONS})

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> "Config":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{source}: not valid JSON ({error})") from None
        return cls.from_dict(data, source)

    def replace(self, **overrides: Any) -> "Config":
        """Copy with dotted overrides, e.g. ``replace(**{"schedule.batch_size": 32})``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = MOVED_SETTINGS.get(dotted, dotted).partition(".")
            if section not in SECTIONS or key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
                raise ConfigError(f"unknown setting {dotted!r}")
            data[section][key] = value
        return Config.from_dict(data, "override")

    def diff(self, other: "Config") -> list[str]:
        """Dotted names of the settings that differ between two configs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{section}.{key}" for section in SECTIONS for key in mine[section]
                if mine[section][key] != theirs[section][key]]


# Settings that moved to another section, by their old dotted name: config files and
# config.json of earlier versions still read, and the old names still work in ``replace``.
MOVED_SETTINGS = {f"schedule.{name}": f"optimizer.{name}" for name in
                  ("g_lr", "d_lr", "lr_by_resolution", "fade_lr_scale", "stable_lr_rampdown")}


def _moved_settings(data: dict, source: str) -> dict:
    """``data`` with every setting of `MOVED_SETTINGS` in its current section."""
    moved = {old: new for old, new in MOVED_SETTINGS.items()
             if isinstance(data.get(old.split(".")[0]), dict) and old.split(".")[1] in data[old.split(".")[0]]}
    if not moved:
        return data
    data = {name: dict(section) if isinstance(section, dict) else section
            for name, section in data.items()}
    for old, new in moved.items():
        (old_section, key), (new_section, new_key) = old.split("."), new.split(".")
        value = data[old_section].pop(key)
        target = data.setdefault(new_section, {})
        if not isinstance(target, dict):
            break  # the section's own check names the problem
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{source}: {old} and {new} disagree ({value!r} vs "
                              f"{target[new_key]!r}); {new} is its place now")
        target[new_key] = value
    return data


def _section_to_dict(section) -> dict:
    data = dataclasses.asdict(section)
    for key, value in data.items():
        if isinstance(value, tuple):
            data[key] = list(value)
        elif isinstance(value, dict):
            data[key] = {str(k): v for k, v in value.items()}
    return data


def _section_from_dict(section_class, data: dict, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    fields = {field.name: field for field in dataclasses.fields(section_class)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown setting {unknown[0]!r}; expected one of "
                          + ", ".join(fields))
    values = {}
    for key, value in data.items():
        default = fields[key].default
        if key in ("batch_sizes", "lr_by_resolution"):
            try:
                value = {int(k): v for k, v in value.items()}
            except (AttributeError, ValueError):
                raise ConfigError(f"{source}.{key}: expected an object keyed by resolution, "
                                  f"got {value!r}") from None
        elif key in ("metrics", "augment"):
            _require(isinstance(value, list) and all(isinstance(m, str) for m in value),
                     f"{source}.{key}", "a list of " + ("metric" if key == "metrics" else "op")
                     + " names", value)
            value = tuple(value)
        elif default is None:  # optional numbers (schedule.total_kimg)
            _require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                       and math.isfinite(value)), f"{source}.{key}",
                     "a number or null", value)
        elif isinstance(default, bool):
            _require(isinstance(value, bool), f"{source}.{key}", "true or false", value)
        elif isinstance(default, int) and not isinstance(default, bool):
            _require(isinstance(value, int) and not isinstance(value, bool), f"{source}.{key}",
                     "an integer", value)
        elif isinstance(default, float):
            _require(isinstance(value, (int, float)) and not isinstance(value, bool)
                     and math.isfinite(value), f"{source}.{key}", "a number", value)
            value = float(value)
        elif isinstance(default, str):
            _require(isinstance(value, str), f"{source}.{key}", "a string", value)
        values[key] = value
    return section_class(**values)


def _preset_celeba64() -> Config:
    return Config(
        model=ModelConfig(latent_size=512, fmap_base=8192, fmap_max=512, max_resolution=64),
        schedule=ScheduleConfig(stable_kimg=800, fade_kimg=800, batch_size=16),
        optimizer=OptimizerConfig(g_lr=0.001, d_lr=0.001),
        training=TrainingConfig(mirror=True, tick_kimg=20, snapshot_kimg=200),
    )


def _preset_paper() -> Config:
    return Config(
        model=ModelConfig(latent_size=512, fmap_base=8192, fmap_max=512, max_resolution=1024),
        schedule=ScheduleConfig(stable_kimg=800, fade_kimg=800, batch_size=16,
                                batch_sizes={256: 14, 512: 6, 1024: 3}),
        optimizer=OptimizerConfig(g_lr=0.001, d_lr=0.001),
        training=TrainingConfig(mirror=True, tick_kimg=160, snapshot_kimg=1600),
    )


def _preset_demo() -> Config:
    he_gain = math.sqrt(2.0)
    return Config(
        # Fused resampling from 32x32: fewer FLOPs for the same function, faster on a CPU
        # from 32 on (below, the strided convolutions' overhead outweighs the saving).
        # He gains (sqrt 2) on the generator's dense and toRGB layers and the discriminator's
        # output, no pixel norm after the dense layer (pro-gan-pth's choices): the reference's
        # gains fade in 3x worse at these widths (docs/quality.md, tools/bench_quality.py).
        model=ModelConfig(latent_size=64, fmap_base=256, fmap_max=64, max_resolution=32,
                          fused_scale_from=32, g_dense_gain=he_gain, to_rgb_gain=he_gain,
                          d_output_gain=he_gain, pixelnorm_after_dense=False),
        # The discriminator learns 3x faster than the generator (G 0.002, D 0.006 in stable
        # phases, x0.75 in fade-ins), both 0.0015 at 4x4: a calmer 4x4 phase and fade end each
        # fade-in better and with less spread, and the faster critic gives G better gradients
        # (SWD at every phase end over three seeds, 1.5x, 2x and 3x: docs/quality.md).
        schedule=ScheduleConfig(stable_kimg=20, fade_kimg=20, batch_size=16),
        optimizer=OptimizerConfig(g_lr=0.002, d_lr=0.006, lr_by_resolution={4: 0.0015},
                                  fade_lr_scale=0.75),
        # The EMA's half-life (ln 2 / (1 - beta) steps) must be short against 20-kimg phases:
        # 0.995 at batch 16 is ~2 kimg (the paper's 0.999 would be ~11 kimg); in fade-ins,
        # where G moves systematically with alpha, 0.99 (~1 kimg) lags less behind it.
        training=TrainingConfig(mirror=True, tick_kimg=4, snapshot_kimg=20, grid_size=6,
                                ema_beta=0.995, ema_beta_fade=0.99, keep_checkpoints=10,
                                steps_per_call=8),
    )


PRESETS = {"celeba64": _preset_celeba64, "paper": _preset_paper, "demo": _preset_demo}


def load_config(name_or_path: str | Path) -> Config:
    """A preset by name, or a JSON file (a whole config or a run's config.json)."""
    if str(name_or_path) in PRESETS:
        return PRESETS[str(name_or_path)]()
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--config {name_or_path}: expected a preset ({', '.join(PRESETS)}) "
                          "or a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--config {path}: not a readable JSON file ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "data" in data:
        return Config.from_dict(data["config"], f"{path}:config")  # a run's config.json
    return Config.from_dict(data, str(path))


# What every setting means (and its unit): the settings reference (`docs/settings.md`, made
# by `progan config --reference`) and the help line of every override flag are built from this
# table and the dataclasses' defaults, and a test checks that every field has its line.
SETTING_DOCS = {
    "model.latent_size": "length of the latent vector z",
    "model.fmap_base": "feature maps: nf(stage) = min(fmap_base / 2^(stage x fmap_decay), fmap_max)",
    "model.fmap_decay": "how fast the feature maps shrink per resolution doubling (see fmap_base)",
    "model.fmap_max": "the most feature maps of any layer",
    "model.max_resolution": "the top resolution in pixels (a power of two, 4 to 1024)",
    "model.num_channels": "image channels: 3 (RGB) or 1 (grey)",
    "model.normalize_latents": "pixel-normalise the latents before the first layer",
    "model.pixelnorm_epsilon": "epsilon of the pixelwise feature normalisation",
    "model.leaky_slope": "negative slope of the leaky ReLUs",
    "model.mbstd_group_size": "minibatch-stddev group size (0: no minibatch-stddev layer)",
    "model.fused_scale_from": "resolution from which upscale+conv and conv+downscale are one "
                              "strided 4x4 convolution (the same function, fewer FLOPs; 0: never)",
    "model.spectral_norm": "spectral normalisation of the discriminator's layers",
    "model.g_dense_gain": "equalised-LR gain of the generator's first (dense) layer",
    "model.to_rgb_gain": "equalised-LR gain of the toRGB layers",
    "model.d_output_gain": "equalised-LR gain of the discriminator's output layer",
    "model.pixelnorm_after_dense": "pixel norm after the generator's first (dense) layer",
    "model.label_size": "labels the networks are conditioned on (0: unconditional; "
                        "train --conditional sets it from the data)",
    "model.label_kind": "multi_label (independent attributes, sigmoid) or one_hot (classes, softmax)",
    "schedule.start_resolution": "the resolution training starts at, in pixels",
    "schedule.stable_kimg": "thousands of images shown in each stable phase",
    "schedule.fade_kimg": "thousands of images over which each new resolution fades in",
    "schedule.total_kimg": "thousands of images of the whole run (null: the end of the last "
                           "stable phase)",
    "schedule.batch_size": "images per iteration (over all replicas)",
    "schedule.batch_sizes": "per-resolution batch sizes, e.g. {\"64\": 8}, overriding batch_size",
    "optimizer.g_lr": "the generator's Adam learning rate",
    "optimizer.d_lr": "the discriminator's Adam learning rate",
    "optimizer.lr_by_resolution": "per-resolution learning rate of both networks, e.g. "
                                 "{\"4\": 0.0015}, overriding g_lr and d_lr",
    "optimizer.fade_lr_scale": "factor on both learning rates during fade-ins",
    "optimizer.stable_lr_rampdown": "fraction of each stable phase over which both learning rates "
                                   "fall linearly to 0 (0: off)",
    "loss.name": "the loss: wgan_gp, nonsaturating_r1 or least_squares",
    "loss.gp_lambda": "weight of WGAN-GP's gradient penalty (lambda)",
    "loss.gp_gamma": "the gradient-norm target of WGAN-GP's penalty (gamma)",
    "loss.drift": "weight of the drift term epsilon x D(real)^2",
    "loss.r1_gamma": "weight of the R1 penalty (nonsaturating_r1)",
    "loss.shared_latents": "the generator step reuses the discriminator step's latents",
    "loss.cond_weight": "weight of the label cross-entropy of a conditional run",
    "loss.augment": "differentiable augmentation of every image D sees: a list of "
                    "translation, cutout, color (empty: none)",
    "loss.augment_p": "probability of each augmentation op (fixed p)",
    "loss.augment_target": "target of E[sign(D(real))] for an adaptive p (null: fixed p)",
    "loss.augment_interval": "iterations between updates of an adaptive p",
    "loss.augment_speed_kimg": "thousands of images for an adaptive p to move from 0 to 1",
    "optimizer.beta1": "Adam's beta1",
    "optimizer.beta2": "Adam's beta2",
    "optimizer.epsilon": "Adam's epsilon",
    "optimizer.reset_on_fade_start": "reset both Adam states when a fade-in starts",
    "optimizer.reset_on_fade_end": "reset both Adam states when a fade-in ends",
    "optimizer.freeze_d": "discriminator blocks nearest the image (and their fromRGB) kept "
                          "fixed (FreezeD; 0: none)",
    "training.seed": "seed of the weights, the latents and the data order (0 to 2^31 - 1)",
    "training.mirror": "left-right mirror augmentation of the reals",
    "training.ema_beta": "decay of the generator's moving average per iteration",
    "training.ema_beta_fade": "the same during fade-ins (null: ema_beta)",
    "training.tick_kimg": "thousands of images between tick lines",
    "training.snapshot_kimg": "thousands of images between snapshots",
    "training.keep_checkpoints": "newest full snapshots kept (besides the best ones)",
    "training.max_nonfinite_steps": "non-finite steps in a row before rolling back to the "
                                    "last snapshot",
    "training.strategy": "tf.distribute strategy: auto, one, mirrored, multiworker or tpu",
    "training.mixed_precision": "off, bf16 or fp16 (with dynamic loss scaling)",
    "training.xla": "jit-compile the train steps with XLA",
    "training.deterministic": "deterministic ops (a bitwise-exact resume on the CPU)",
    "training.grid_size": "the fakes*.png grids are grid_size x grid_size images",
    "training.steps_per_call": "iterations per compiled call (fewer host round trips)",
    "training.metrics": "metrics evaluated during training, e.g. [\"swd\"] (the first is the "
                        "run's primary metric)",
    "training.metrics_kimg": "thousands of images between metric evaluations (0: every snapshot)",
    "training.metrics_num_images": "images per metric evaluation during training",
}


def setting_default(setting: str):
    """The default of a dotted setting (``schedule.batch_size`` -> 16)."""
    section, key = setting.split(".")
    field = {f.name: f for f in dataclasses.fields(SECTIONS[section])}[key]
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def describe_setting(setting: str) -> str:
    """One line: what a setting means, and its default."""
    default = setting_default(setting)
    shown = json.dumps(list(default) if isinstance(default, tuple) else default)
    return f"sets {setting}: {SETTING_DOCS[setting]} (default {shown})"


def settings_reference() -> str:
    """The settings reference as Markdown: every setting, its meaning and unit, its default
    and its value in each preset."""
    presets = {name: load_config(name).to_dict() for name in PRESETS}
    lines = ["# Settings reference", "",
             "Every setting of a run's `config.json` (`progan config --dump NAME` prints a preset;",
             "edit it and pass it with `--config FILE.json`). Made by `progan config --reference`;",
             "a test keeps it equal to the code.", ""]
    for section, cls in SECTIONS.items():
        lines += [f"## {section}", "", "| setting | meaning | default | "
                  + " | ".join(presets) + " |", "|---|---|---|" + "---|" * len(presets)]
        for field in dataclasses.fields(cls):
            setting = f"{section}.{field.name}"
            default = setting_default(setting)
            values = [presets[name]["config"][section][field.name] if "config" in presets[name]
                      else presets[name][section][field.name] for name in presets]
            cells = [json.dumps(list(v) if isinstance(v, tuple) else v) for v in [default, *values]]
            lines.append(f"| `{field.name}` | {SETTING_DOCS[setting]} | "
                         + " | ".join(f"`{cell}`" for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)
