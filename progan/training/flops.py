"""FLOPs of one training iteration per image, per stage, counted from the layers.

FLOPs count 2 per multiply-add of every convolution and dense layer. Per image, with F_G
and F_D the forward costs of the stage's networks:

  D step: G forward (F_G), D forward on reals, fakes and the mixed images (3 F_D), the
          penalty's input gradient (F_D), the backward of the real/fake terms (2 x 2 F_D)
          and the double backward through the penalty (2 x (F_D + F_D))   = F_G + 12 F_D
  G step: G forward, D forward, D input-backward, G backward (2 F_G)      = 3 F_G + 2 F_D
  total                                                                  = 4 F_G + 14 F_D

`progan bench` relates them to the speed it measures; the training ETA divides the FLOPs
left by the FLOP rate measured (`progan.training.report.TickTimer`).
"""

from __future__ import annotations

import numpy as np

from progan.layers import EqualizedConv2D, EqualizedDense


def _layer_flops(layer, output_shape) -> int:
    """2 x multiply-adds of one equalised layer for one image."""
    inner = getattr(layer, "layer", layer)  # SpectralNormalization wraps the real layer
    if isinstance(inner, EqualizedDense):
        return 2 * int(np.prod(inner.kernel.shape))
    if isinstance(inner, EqualizedConv2D):
        height, width = output_shape[1], output_shape[2]
        kernel = inner.kernel.shape
        taps = kernel[0] * kernel[1] * kernel[2]
        if inner.fused:  # the fused 4x4 kernel: 16/9 the taps, on the strided grid
            taps = taps * 16 // 9
            if inner.resample == "down":
                return 2 * taps * kernel[3] * height * width
            return 2 * taps * kernel[3] * height * width // 4
        if inner.resample == "down":  # the convolution runs before pooling, at 2x the size
            height, width = height * 2, width * 2
        return 2 * taps * kernel[3] * height * width
    return 0


def forward_flops(networks, resolution: int, fading: bool) -> tuple[int, int]:
    """(generator, discriminator) forward FLOPs per image of one stage."""
    totals = []
    for network in ("generator", "discriminator"):
        table = networks.layer_table(network, resolution, fading)
        totals.append(sum(_layer_flops(layer, shape) for layer, shape in table))
    return totals[0], totals[1]


def iteration_flops(g_forward: int, d_forward: int) -> int:
    """Analytic FLOPs of one training iteration per image (see the module docstring)."""
    return 4 * g_forward + 14 * d_forward


def stage_flops(networks, schedule) -> dict:
    """``{stage.key: iteration FLOPs per image}`` of every stage of ``schedule``."""
    return {stage.key: iteration_flops(*forward_flops(networks, stage.resolution, stage.fading))
            for stage in schedule.stages()}
