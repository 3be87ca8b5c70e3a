"""The one resolution check of the package: powers of two, and their level (log2)."""


def is_power_of_two(value: int) -> bool:
    """Whether ``value`` is an int 1, 2, 4, 8, ... (resolutions, group sizes)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 \
        and value & (value - 1) == 0


def level_of(resolution: int) -> int:
    """log2 of a power-of-two resolution >= 4 (level 2 is the 4x4 block); a clear error otherwise."""
    if not is_power_of_two(resolution) or resolution < 4:
        raise ValueError(f"resolution: expected a power of two >= 4, got {resolution}")
    return resolution.bit_length() - 1
