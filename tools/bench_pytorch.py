"""Our training loop against pro-gan-pth 3.4's, the same way, interleaved in one process.

    pip install torch==2.13.0 && pip install --no-deps pro-gan-pth==3.4   # the PyTorch port
    python tools/bench_pytorch.py --widths demo                   # the demo preset's widths
    python tools/bench_pytorch.py --widths pytorch                # latent 128, 128 maps everywhere
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python tools/bench_pytorch.py
        # as on an AVX2-only CPU: oneDNN (TensorFlow's and torch's convolutions) and MKL
        # (torch's matrix products) capped at AVX2

Both sides run their whole training iteration at the same batch, stage and thread count:
the real batch fed from memory (ours: the TFRecord reader's tf.data pipeline at the stage's
resolution; theirs: uint8 images at the top resolution, converted and faded by
``ProGAN.progressive_downsample_batch`` as its own loop does), the discriminator step with
the WGAN-GP penalty and drift, the generator's moving average, the generator step. Ours runs
``training.steps_per_call`` iterations per compiled call, as training does.

Each stage is timed in rounds, ours then theirs then ours ... (theirs in a process of its
own, waiting on a pipe while ours runs); the median images/s of each
side and their ratio are printed, with the CPU and its instruction set. pro-gan-pth imports
torchvision and TensorBoard only for its own ``train`` method and image files; this script
gives it empty stand-ins for those, and sets its feature-map function to our widths (its
``nf`` has the same formula: min(fmap_base / 2^stage, fmap_max)). Nothing on disk changes.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

WIDTHS = {  # (latent_size, fmap_base, fmap_max)
    "demo": (64, 256, 64),
    "pytorch": (128, 8192, 128),
}


def import_pro_gan_pth(fmap_base: int, fmap_max: int):
    """pro_gan_pytorch's (gan, networks, losses, custom_layers) modules, networks at our widths,
    with in-memory stand-ins for what a newer torch changed or what only its ``train`` uses."""
    for name in ("torchvision", "torchvision.utils", "torchvision.transforms"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                stub = types.ModuleType(name)
                for attribute in ("save_image", "Compose", "RandomHorizontalFlip", "Resize",
                                  "ToTensor"):
                    setattr(stub, attribute, lambda *args, **kwargs: None)
                sys.modules[name] = stub
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = None
        sys.modules["torch.utils.tensorboard"] = stub
    try:
        from pro_gan_pytorch import custom_layers, gan, losses, networks
    except ImportError as error:
        raise SystemExit(f"{error}: install the PyTorch port with `pip install torch==2.13.0` and "
                         "`pip install --no-deps pro-gan-pth==3.4`") from None
    networks.nf = functools.partial(networks.nf, fmap_base=fmap_base, fmap_max=fmap_max)
    # torch >= 2.1 added num_spatial_dims to _output_padding; pro-gan-pth 3.4 predates it
    transpose = custom_layers.EqualizedConvTranspose2d
    output_padding = transpose.__mro__[2]._output_padding  # torch's _ConvTransposeNd

    def _output_padding(self, input, output_size, stride, padding, kernel_size, *rest):
        return output_padding(self, input, output_size, stride, padding, kernel_size, 2, *rest)

    transpose._output_padding = _output_padding
    return gan, networks, losses, custom_layers


class Theirs:
    """pro-gan-pth's iteration: D step (WGAN-GP), EMA update, G step, on in-memory reals."""

    def __init__(self, images_uint8, latent_size, fmap_base, fmap_max, ema_beta, lr, threads):
        import contextlib
        import io

        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        gan, networks, losses, custom_layers = import_pro_gan_pth(fmap_base, fmap_max)
        depth = int(images_uint8.shape[1]).bit_length() - 1
        generator = networks.Generator(depth=depth, latent_size=latent_size)
        discriminator = networks.Discriminator(depth=depth, latent_size=latent_size)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints both networks
            self.gan = gan.ProGAN(generator, discriminator, ema_beta=ema_beta)
        self.loss = losses.WganGP()
        self.update_average = custom_layers.update_average
        self.ema_beta = ema_beta
        adam = dict(betas=(0.0, 0.99), eps=1e-8, lr=lr)  # its (0, 0.99), as floats for torch 2.13
        self.g_optim = torch.optim.Adam(self.gan.gen.parameters(), **adam)
        self.d_optim = torch.optim.Adam(self.gan.dis.parameters(), **adam)
        self.images = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).contiguous()
        self.latent_size = latent_size

    def iterations(self, count, resolution, batch, alpha):
        torch = self.torch
        depth = resolution.bit_length() - 1
        for _ in range(count):
            rows = torch.randint(0, len(self.images), (batch,))
            reals = self.images[rows].float() / 127.5 - 1.0  # its loader: ToTensor, drange [-1, 1]
            noise = torch.randn(batch, self.latent_size)
            self.gan.optimize_discriminator(self.loss, self.d_optim, noise, reals, depth, alpha)
            self.update_average(self.gan.gen_shadow, self.gan.gen, beta=self.ema_beta)
            self.gan.optimize_generator(self.loss, self.g_optim, noise, reals, depth, alpha)


def theirs_worker(connection, images_uint8, latent, fmap_base, fmap_max, ema_beta, lr, threads):
    """pro-gan-pth in its own process: TensorFlow's thread pools and tf.data threads in the
    same process slow torch's OpenMP threads down by up to 6x. Serves ("stage", resolution,
    batch, alpha) -> warmed up, ("time", seconds) -> (iterations, seconds), ("stop",)."""
    theirs = Theirs(images_uint8, latent, fmap_base, fmap_max, ema_beta, lr, threads)
    stage = None
    while True:
        command = connection.recv()
        if command[0] == "stage":
            stage = command[1:]
            theirs.iterations(2, *stage)
            connection.send("ready")
        elif command[0] == "time":
            connection.send(timed(lambda: theirs.iterations(2, *stage) or 2, command[1]))
        else:
            return


def timed(function, minimum_seconds):
    """images/s-ready (iterations, seconds) of repeated calls lasting at least minimum_seconds."""
    count, begin = 0, time.perf_counter()
    while True:
        count += function()
        elapsed = time.perf_counter() - begin
        if elapsed >= minimum_seconds:
            return count, elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", choices=sorted(WIDTHS), default="demo")
    parser.add_argument("--resolutions", default="4,8,16,32")
    parser.add_argument("--phases", choices=("fading", "stable", "both"), default="both")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="both sides (default 2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per stage")
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args(argv)

    import os

    # torch's OpenMP threads busy-wait at every barrier; on a machine others are using, a
    # waiting thread holds a core the other needs and a step takes 50x longer. Waiting
    # passively is what a shared machine needs (the header says which policy ran).
    if os.getloadavg()[0] > 1.0 and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    from progan import api
    from progan.backend import tf
    from progan.dataset import reader
    from progan.dataset.synthetic import ensure_synthetic
    from progan.training.bench import machine, format_machine
    from progan.training.loop import Trainer

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    top = max(resolutions)
    latent, fmap_base, fmap_max = WIDTHS[args.widths]
    config = api.make_config("demo", settings={
        "model.latent_size": latent, "model.fmap_base": fmap_base, "model.fmap_max": fmap_max,
        "model.max_resolution": top, "schedule.batch_size": args.batch})
    phases = {"fading": (True,), "stable": (False,), "both": (True, False)}[args.phases]
    print(format_machine(machine()))
    print(f"widths {args.widths}: latent {latent}, fmap_base {fmap_base}, fmap_max {fmap_max}; "
          f"batch {args.batch}, {args.threads} threads each; {args.rounds} rounds of "
          f"{args.seconds:g} s per side and stage, interleaved; OMP_WAIT_POLICY "
          f"{os.environ.get('OMP_WAIT_POLICY', 'default')}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pytorch-") as scratch:
        data = ensure_synthetic(Path(scratch) / "data", num_images=1024, resolution=top,
                                progress=False)
        ours = Trainer(config, data, Path(scratch) / "run")
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        connection, child = context.Pipe()
        worker = context.Process(target=theirs_worker, args=(
            child, reader.read_images(data, top, "train"), latent, fmap_base, fmap_max,
            config.training.ema_beta, config.schedule.g_lr, args.threads))
        worker.start()
        per_call = config.training.steps_per_call
        for resolution in resolutions:
            for fading in sorted({f and resolution > 4 for f in phases}, reverse=True):
                start = ours.schedule.start_of(resolution, fading)
                ours.state.images_seen.assign(start)
                stage, step, iterator = ours.enter(start)

                def run_ours():
                    step(iterator, tf.constant(per_call, tf.int64))
                    ours.state.images_seen.numpy()
                    return per_call

                def time_theirs(seconds):
                    connection.send(("time", seconds))
                    return connection.recv()

                run_ours(), run_ours()  # trace, warm up
                connection.send(("stage", resolution, args.batch, 0.5 if fading else 1.0))
                connection.recv()
                speeds = {"ours": [], "theirs": []}
                for _ in range(args.rounds):
                    for name, function in (("ours", lambda s: timed(run_ours, s)),
                                           ("theirs", time_theirs)):
                        count, seconds = function(args.seconds)
                        speeds[name].append(count * args.batch / seconds)
                row = {"resolution": resolution, "phase": stage.phase, "batch": args.batch,
                       **{name: statistics.median(v) for name, v in speeds.items()},
                       "rounds": speeds}
                row["ratio"] = row["ours"] / row["theirs"]
                rows.append(row)
                print(f"{resolution:>5d} {stage.phase:<7s} ours {row['ours']:8.1f} img/s   "
                      f"pro-gan-pth {row['theirs']:8.1f} img/s   ratio {row['ratio']:.2f}x", flush=True)
        connection.send(("stop",))
        worker.join()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "widths": args.widths,
                                         "threads": args.threads, "stages": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
