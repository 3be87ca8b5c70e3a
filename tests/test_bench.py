"""`progan bench`'s FLOP count, `progan summary`, and the strategy `auto` picks."""

import json

import pytest
import tensorflow as tf

from progan import cli
from progan.config import ModelConfig
from progan.networks import ProGAN
from progan.training import bench, distribute

TINY = ModelConfig(latent_size=16, fmap_base=64, fmap_max=16, max_resolution=8)


def test_flops_of_the_4x4_stage_match_a_hand_count():
    networks = ProGAN(TINY)
    g_forward, d_forward = bench.forward_flops(networks, 4, False)
    # G: dense 16 -> 16*16 features, conv 3x3 16->16 at 4x4, toRGB 1x1 16->3 at 4x4
    hand_g = 2 * 16 * 256 + 2 * 9 * 16 * 16 * 16 + 2 * 16 * 3 * 16
    # D: fromRGB 1x1 3->16, conv 3x3 (16 + stddev map)->16 at 4x4, dense 256->16, dense 16->1
    hand_d = 2 * 3 * 16 * 16 + 2 * 9 * 17 * 16 * 16 + 2 * 256 * 16 + 2 * 16 * 1
    assert (g_forward, d_forward) == (hand_g, hand_d)
    assert bench.iteration_flops(g_forward, d_forward) == 4 * hand_g + 14 * hand_d
    # 8x8 fading adds the upscaling conv pair, both toRGBs and both fromRGBs
    g8, d8 = bench.forward_flops(networks, 8, True)
    up = 2 * 9 * 16 * 16 * 64 + 2 * 9 * 16 * 16 * 64  # conv0_up and conv1 at 8x8 (nf(2) = 16)
    assert g8 == hand_g + up + 2 * 16 * 3 * 64
    assert bench.parse_resolutions("4,8,16") == [4, 8, 16]
    with pytest.raises(ValueError, match="powers of two"):
        bench.parse_resolutions("4,6")


def test_summary_prints_every_stage_and_the_official_counts(capsys):
    assert cli.main(["summary", "--config", "paper", "--max-resolution", "1024", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["parameters"] == {"generator": 23_079_115, "discriminator": 23_087_249}
    stages = {(s["network"], s["resolution"], s["fading"]) for s in summary["stages"]}
    assert len(stages) == 2 * (1 + 2 * 8) and ("discriminator", 1024, True) in stages
    assert cli.main(["summary", "--config", "demo"]) == 0
    text = capsys.readouterr().out
    assert "generator 32x32 fading" in text and "Trainable parameters" in text


def test_auto_strategy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    assert isinstance(distribute.make_strategy("auto"), tf.distribute.OneDeviceStrategy)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert distribute._tf_config_workers() == 2  # auto would pick MultiWorkerMirroredStrategy
    with pytest.raises(distribute.DistributeError, match="--strategy warp"):
        distribute.make_strategy("warp")


def test_the_bench_names_the_machine_it_measured():
    assert bench.instruction_set({"avx2", "fma", "avx512f", "amx_tile", "amx_bf16"}) == "AMX"
    assert bench.instruction_set({"avx2", "fma", "avx512f"}) == "AVX-512"
    assert bench.instruction_set({"avx2", "fma", "sse4_2"}) == "AVX2"
    assert bench.instruction_set({"sse4_2"}) == "below AVX2"
    info = bench.machine()
    assert {"cpu", "instruction_set", "cores", "onednn_max_cpu_isa", "load_average"} <= info.keys()
    assert info["cores"] >= 1
    line = bench.format_machine({**info, "cpu": "Test CPU", "instruction_set": "AMX",
                                 "onednn_max_cpu_isa": "AVX2", "cores": 2})
    assert line.startswith("CPU Test CPU, AMX, oneDNN capped at AVX2, 2 core(s)")
