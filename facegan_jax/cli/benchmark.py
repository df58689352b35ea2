r"""Benchmarks: train-step, input-pipeline and FID-feature throughput, FLOPs and fraction of peak.

  python -m facegan_jax.benchmark --config=configs/dcgan64.py [--only=train,pipeline,fid]
      [--steps=10] [--peak-gflops=0] [--config.train.batch_size=64]

`--only=layers` is the profile behind the train figure: every convolution and
dense layer of G and D, captured with its real input shape at the config's
batch size, timed alone for its forward pass, input gradient and weight
gradient, with XLA's FLOP count and GFLOP/s per part (a layer's share of the
step, and which part of which layer runs far from peak), and for the fast
stride-2 layers the formulation each part took on this CPU (`models/fast_conv.py`).
`--only=fid_layers` does the same for the Inception convs of the FID features (forward only).

Figures are measured after warm-up and exclude compilation. The train step runs
on a fixed random batch already on the devices (like the peers in
../shared/peers/, which time no data loading); its images/s counts real images
consumed per second (`batch_size * n_critic` per step), the median over
`--steps` individually timed steps. FLOPs per training image come from XLA's
cost analysis of the compiled step. The last lines are in the peers' format:

  RESULT name=<train|pipeline|fid> img_per_s=<float> batch=<int>
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any

from facegan_jax import errors, models, runtime
from facegan_jax.cli import args as args_lib

PROG = "benchmark"
WHAT = ("train", "pipeline", "fid", "layers", "fid_layers")


def build_parser() -> args_lib.Parser:
    """The benchmark command's flags."""
    parser = args_lib.Parser(PROG, description=__doc__.splitlines()[0])
    args_lib.add_config_argument(parser, default="configs/dcgan64.py", what="Benchmarked")
    parser.add_argument(
        "--only",
        type=_which,
        default=["train", "pipeline", "fid"],
        help="comma-separated figures to measure: train, pipeline, fid (default all three), "
        "layers, fid_layers",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    parser.add_argument(
        "--pipeline-batches", type=int, default=30, help="timed input-pipeline batches"
    )
    parser.add_argument(
        "--fid-batch", type=int, default=50, help="FID feature batch (64x64 uint8 images)"
    )
    parser.add_argument("--fid-steps", type=int, default=4, help="timed FID feature batches")
    parser.add_argument(
        "--peak-gflops",
        type=float,
        default=0.0,
        help="device fp32 peak in GFLOP/s for the fraction-of-peak figure; 0 = estimate it "
        "for a CPU from /proc/cpuinfo (cores x FMA width x clock), omit it elsewhere",
    )
    errors.add_verbose_flag(parser)
    return parser


def _which(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in WHAT]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(WHAT)}")
    return names


def cpu_peak_gflops(cpuinfo: str, cores: int, max_mhz: float | None = None) -> tuple[float, str]:
    """Nominal fp32 FMA peak of `cores` x86 cores described by `cpuinfo` (/proc/cpuinfo text).

    FLOP per cycle per core: 2 FMA pipes x vector lanes x 2 (AVX-512: 64, AVX2+FMA:
    32, otherwise SSE: 16). The clock is `max_mhz` when known (cpufreq's
    maximum), else cpuinfo's current "cpu MHz", which in VMs is the nominal
    clock (turbo runs faster, so the estimate can undershoot the real peak).

    Returns:
      (GFLOP/s, a one-line description of how it was derived).
    """
    flags_line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    cpu_flags = set(flags_line.split(":", 1)[-1].split())
    if "avx512f" in cpu_flags:
        isa, per_cycle = "AVX-512", 64
    elif {"avx2", "fma"} <= cpu_flags:
        isa, per_cycle = "AVX2+FMA", 32
    else:
        isa, per_cycle = "SSE", 16
    if max_mhz is None:
        mhz = [float(ln.split(":")[1]) for ln in cpuinfo.splitlines() if ln.startswith("cpu MHz")]
        max_mhz = max(mhz) if mhz else 2000.0
    peak = cores * per_cycle * max_mhz / 1e3
    return peak, f"{cores} cores x {per_cycle} FLOP/cycle ({isa}) x {max_mhz / 1e3:.2f} GHz"


def _device_peak(requested: float) -> tuple[float | None, str]:
    """`requested` if > 0; for CPU backends an estimate from /proc/cpuinfo; else unknown."""
    import jax

    if requested > 0:
        return requested, "--peak-gflops"
    if jax.default_backend() != "cpu":
        return None, "unknown (pass --peak-gflops)"
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "unknown (no /proc/cpuinfo; pass --peak-gflops)"
    max_mhz = None
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            max_mhz = float(f.read()) / 1e3
    except (OSError, ValueError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak, how = cpu_peak_gflops(info, cores or 1, max_mhz)
    return peak, f"nominal {how}"


def _of_peak(gflops: float, peak: float | None) -> str:
    return f" = {100 * gflops / peak:.1f}% of {peak:.0f} GFLOP/s peak" if peak else ""


def _timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _cost_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def bench_train(config, steps: int, warmup: int, peak: float | None) -> float:
    """Prints and returns train-step images/s for `config` on random data."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from facegan_jax.training import components

    run = components.build(config)
    state = run.create_state()
    n = config.train.batch_size * config.train.n_critic
    s, c = config.data.image_size, config.data.channels
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(-1, 1, (n, s, s, c)), jnp.float32),
        "attributes": jnp.asarray(rng.integers(0, 2, (n, 40)), jnp.float32),
    }
    batch = jax.device_put(batch, run.batch_sharding)
    step = run.train_step
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = _cost_flops(compiled)
    holder = [state]

    def one():
        holder[0], metrics = compiled(holder[0], batch)
        jax.block_until_ready(metrics)

    _timed(one, warmup)
    times = _timed(one, steps)
    med = statistics.median(times)
    img_s = n / med
    print(f"train: {config.model.name} {s}x{s}x{c}, batch {n}, compile {compile_s:.1f} s")
    print(
        f"train: step median {med * 1e3:.1f} ms (min {min(times) * 1e3:.1f}, max "
        f"{max(times) * 1e3:.1f}) -> {img_s:.1f} images/s"
    )
    if flops:
        per_img = flops / n
        achieved = per_img * img_s / 1e9
        print(
            f"train: {per_img / 1e9:.3f} GFLOP per training image (XLA cost analysis); "
            f"{achieved:.1f} GFLOP/s{_of_peak(achieved, peak)}"
        )
    return img_s


_PROFILED = (
    "Conv",
    "ConvTranspose",
    "Project4x4",  # the DCGAN generator's first layer (a dot)
    "FastConvTranspose2x",
    "FastConvStride2",
    "SNConv",
    "FoldedConv",  # Inception's conv + folded BatchNorm + ReLU
    "Dense",
    "SNDense",
)


def _capture_layers(module, variables, *args, **kwargs) -> list[tuple[str, Any, Any]]:
    """(path, unbound module clone, input) for each conv/dense call of `module.apply`."""
    import flax.linen as nn

    seen = []

    def interceptor(next_fun, call_args, call_kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and type(mod).__name__ in _PROFILED:
            seen.append(("/".join(mod.scope.path), mod.clone(parent=None), call_args[0]))
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
        module.apply(variables, *args, mutable=True, **kwargs)
    return seen


def _profile_layer(
    layer,
    x,
    reps: int,
    parts: tuple[str, ...] = ("fwd", "dgrad", "wgrad"),
    gflop: float | None = None,
) -> list[tuple[str, float, float | None]]:
    """[(part, median ms, GFLOP)] for the forward pass, input gradient and/or weight gradient.

    `gflop`: each part's GFLOP where XLA's cost analysis cannot count them (custom calls).
    """
    import jax
    import numpy as np

    kwargs = {"update_stats": False} if type(layer).__name__ == "SNConv" else {}
    variables = layer.init(jax.random.PRNGKey(0), x, **kwargs)
    params, rest = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def fwd(p, x):
        return layer.apply({"params": p, **rest}, x, **kwargs)

    y = jax.eval_shape(fwd, params, x)
    ct = np.random.default_rng(0).standard_normal(y.shape).astype(y.dtype)
    fns = {
        "fwd": (fwd, (params, x)),
        "dgrad": (lambda p, x, ct: jax.vjp(lambda x_: fwd(p, x_), x)[1](ct)[0], (params, x, ct)),
        "wgrad": (lambda p, x, ct: jax.vjp(lambda p_: fwd(p_, x), p)[1](ct)[0], (params, x, ct)),
    }
    out = []
    for name in parts:
        fn, fn_args = fns[name]
        compiled = jax.jit(fn).lower(*fn_args).compile()
        flops = _cost_flops(compiled)
        jax.block_until_ready(compiled(*fn_args))
        times = _timed(lambda c=compiled, a=fn_args: jax.block_until_ready(c(*a)), reps)
        med = statistics.median(times)
        counted = flops / 1e9 if flops and flops > 0 else None
        out.append((name, med * 1e3, gflop if gflop is not None else counted))
    return out


def profile_layers(config, reps: int = 5) -> float:
    """Prints fwd / dgrad / wgrad time and GFLOP/s of every G and D layer; returns total ms."""
    import jax
    import jax.numpy as jnp

    from facegan_jax.models import build_models, fast_conv, onednn

    g, d = build_models(config)
    b, s, c = config.train.batch_size, config.data.image_size, config.data.channels
    z = jnp.zeros((b, config.model.z_dim), jnp.float32)
    attrs = jnp.zeros((b, 40), jnp.float32) if models.is_conditional(config) else None
    images = jnp.zeros((b, s, s, c), jnp.float32)
    key = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    layers = _capture_layers(g, g.init(key, z, attrs, train=False), z, attrs, train=True)
    d_in = (images,) if attrs is None else (images, attrs)
    layers += _capture_layers(
        d, d.init(key, *d_in, train=False), *d_in, train=True, rngs={"dropout": key["dropout"]}
    )
    print(f"layers: {config.model.name} batch {b}, median of {reps} runs per part")
    total = 0.0
    for path, layer, x in layers:
        cells = []
        kind = type(layer).__name__
        known = None
        if kind in ("FastConvTranspose2x", "FastConvStride2") and onednn.active():
            # A custom call XLA cannot count: 2 x (positions of the small side) x 16 taps x Cin x F.
            small = x.shape[1] * x.shape[2] // (1 if kind == "FastConvTranspose2x" else 4)
            known = 2 * x.shape[0] * small * 16 * x.shape[-1] * layer.features / 1e9
        for name, ms, gflop in _profile_layer(
            layer, jnp.zeros(x.shape, x.dtype), reps, gflop=known
        ):
            total += ms
            rate = f" {gflop / ms * 1e3:6.1f} GFLOP/s" if gflop else ""
            cells.append(f"{name} {ms:7.1f} ms{rate}")
        shape = "x".join(map(str, x.shape))
        if kind in ("FastConvTranspose2x", "FastConvStride2"):
            cells.append(fast_conv.describe(kind, x.shape[1], x.shape[-1], layer.features))
        print(f"layers: {kind:19s} {path:28s} in {shape:16s} " + " | ".join(cells))
    print(f"layers: sum of all parts {total:.0f} ms")
    return total


def profile_fid_layers(batch: int, reps: int, top: int = 12) -> float:
    """Prints the `top` slowest Inception convs (forward, float32 'highest'); returns total ms."""
    import jax
    import jax.numpy as jnp

    from facegan_jax.metrics import inception

    net = inception.InceptionV3()
    images = jnp.zeros((batch, 64, 64, 3), jnp.float32)
    with jax.default_matmul_precision("highest"):
        variables = net.init(jax.random.PRNGKey(0), images[:1])
        rows = []
        for path, layer, x in _capture_layers(net, variables, images):
            ((_, ms, gflop),) = _profile_layer(layer, jnp.zeros(x.shape, x.dtype), reps, ("fwd",))
            rows.append((ms, gflop, path, "x".join(map(str, x.shape)), layer.kernel_size))
    total = sum(r[0] for r in rows)
    gflop_total = sum(r[1] or 0.0 for r in rows)
    print(
        f"fid layers: {len(rows)} convs, batch {batch}: {total:.0f} ms, "
        f"{gflop_total / total * 1e3:.1f} GFLOP/s overall; slowest {top}:"
    )
    for ms, gflop, path, shape, ks in sorted(rows, reverse=True)[:top]:
        rate = f"{gflop / ms * 1e3:6.1f} GFLOP/s" if gflop else ""
        kernel = "x".join(map(str, ks))
        print(f"fid layers: {path:32s} k{kernel:4s} in {shape:16s} {ms:7.1f} ms {rate}")
    return total


def bench_pipeline(config, num_batches: int) -> float:
    from facegan_jax.data import input_pipeline

    img_s = input_pipeline.measure_throughput(config, num_batches)
    print(
        f"pipeline: {config.data.name} {config.data.image_size}px batches of "
        f"{config.train.batch_size} -> {img_s:.1f} images/s"
    )
    return img_s


def bench_fid(batch: int, steps: int, peak: float | None) -> float:
    """FID feature extraction (pool3, float32 'highest') on 64x64 uint8 images, random weights."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from facegan_jax.metrics import fid, inception

    params = inception.InceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))[
        "params"
    ]
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3)), jnp.uint8)
    compiled = fid.image_features.lower(params, images).compile()
    flops = _cost_flops(compiled)

    def one():
        jax.block_until_ready(compiled(params, images))

    _timed(one, 1)
    times = _timed(one, steps)
    med = statistics.median(times)
    img_s = batch / med
    print(f"fid: batch {batch} median {med:.2f} s -> {img_s:.1f} images/s")
    if flops:
        achieved = flops / med / 1e9
        print(
            f"fid: {flops / batch / 1e9:.2f} GFLOP per image; {achieved:.1f} GFLOP/s"
            f"{_of_peak(achieved, peak)}"
        )
    return img_s


def main(argv: list[str] | None = None) -> int:
    """Measures the figures `--only` names; a mistake is one line (exit code 2)."""
    args = args_lib.parse_args(build_parser(), argv)
    return errors.run_command(PROG, lambda: measure(args), verbose=args.verbose)


def measure(args: argparse.Namespace) -> None:
    """Prints the figures `args.only` names (the last lines: RESULT ...)."""
    import jax

    runtime.setup(keep_memory=True)
    config = args.config
    print(
        f"device: {jax.devices()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs)"
    )
    peak, how = _device_peak(args.peak_gflops)
    print(f"peak: {f'{peak:.0f} GFLOP/s' if peak else 'not known'} ({how})")
    results = []
    if "train" in args.only:
        img_s = bench_train(config, args.steps, args.warmup, peak)
        results.append(("train", img_s, config.train.batch_size * config.train.n_critic))
    if "layers" in args.only:
        profile_layers(config, args.steps)
    if "fid_layers" in args.only:
        profile_fid_layers(args.fid_batch, args.fid_steps)
    if "pipeline" in args.only:
        results.append(
            ("pipeline", bench_pipeline(config, args.pipeline_batches), config.train.batch_size)
        )
    if "fid" in args.only:
        results.append(("fid", bench_fid(args.fid_batch, args.fid_steps, peak), args.fid_batch))
    for name, img_s, batch in results:
        print(f"RESULT name={name} img_per_s={img_s:.2f} batch={batch}")


def run() -> None:
    """Console-script entry point."""
    import sys

    sys.exit(main())


if __name__ == "__main__":
    run()
