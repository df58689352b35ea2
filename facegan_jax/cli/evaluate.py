"""The `evaluate` command: attribute metrics of a training workdir's EMA generator.

  python -m facegan_jax.cli.evaluate --workdir runs/acgan64 --classifier classifiers/celeba64 \
      [--num-samples 1000] [--n-per-side 100] [--json metrics.json]

Prints `fd_attr` (Frechet distance between the attribute classifier's features
of generated and held-out real images: lower is better), precision / recall /
density / coverage in the classifier's features, with `--inception-weights` FID
and the same four in Inception's pool3 space, and, for conditional
models, the attribute-control table: for each attribute the classifier judges
reliably (validation balanced accuracy >= 0.80), the balanced accuracy with
which generated images honour that attribute forced on / off, and the mean.
Argument parsing and printing only; the metrics live in evaluation.py and
attributes.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from facegan_jax import errors, fileio, models, runtime
from facegan_jax.cli import args as args_lib
from facegan_jax.data import celeba_attributes
from facegan_jax.data.celeba_attributes import attribute_index


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = args_lib.Parser("evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="training workdir")
    parser.add_argument("--classifier", required=True, help="attribute classifier folder")
    parser.add_argument("--num-samples", type=int, default=1000, help="images for fd_attr")
    parser.add_argument("--n-per-side", type=int, default=100, help="control: images per side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--json", default=None, help="also write the metrics here")
    parser.add_argument(
        "--inception-weights",
        default=None,
        help="pytorch-fid Inception weights (.pth): also FID and PRDC in Inception space",
    )
    parser.add_argument(
        "--consistent-requests",
        type=float,
        default=0.0,
        metavar="RATE",
        help="control on consistent requests: with an attribute forced, each entry whose "
        "value has probability < RATE among real vectors with the forced value is set to "
        "its likely value (no lipstick when a man is asked for); 0 (default): only the "
        "attribute changes",
    )
    errors.add_verbose_flag(parser)
    args = args_lib.parse_args(parser, argv)
    for name in ("num_samples", "n_per_side", "batch_size"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be >= 2")
    try:
        celeba_attributes.check_rate(args.consistent_requests, "--consistent-requests")
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 ok, 2 bad input)."""
    args = _parse(argv)
    runtime.setup()
    return errors.run_command("evaluate", lambda: _run(args), verbose=args.verbose)


def _run(args: argparse.Namespace) -> None:
    from facegan_jax.metrics import attributes, evaluation
    from facegan_jax.training import components

    classifier = attributes.load(args.classifier)
    inception_params = None
    if args.inception_weights:
        from facegan_jax.metrics import inception_weights

        inception_params = inception_weights.load_inception_params(args.inception_weights)
    generate, variables, config = components.load_generator(args.workdir, step=args.step)
    generate = generate.as_batched()  # metrics: the fast batched path
    pool = components.load_attribute_pool(args.workdir) if models.is_conditional(config) else None
    real, real_labels = evaluation.real_attribute_reference(
        config, classifier, args.num_samples, args.workdir
    )
    result = evaluation.attribute_metrics(
        generate.jitted,
        variables,
        classifier,
        real,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        pool=pool,
        n_per_side=args.n_per_side,
        real_labels=real_labels,
        consistent=args.consistent_requests,
    )
    print(f"fd_attr {result['fd_attr']:.3f}  ({args.num_samples} generated vs {len(real)} real)")
    if result["prdc"] is not None:
        print("  ".join(f"{k} {v:.3f}" for k, v in result["prdc"].items()) + "  (classifier space)")
    if inception_params is not None:
        real_inception = evaluation.inception_reference(
            config, inception_params, args.num_samples, args.batch_size, args.workdir
        )
        result["inception"] = evaluation.inception_metrics(
            generate.jitted,
            variables,
            inception_params,
            real_inception,
            args.num_samples,
            args.batch_size,
        )
        metrics = result["inception"]
        print(
            f"fid {metrics['fid']:.3f}  "
            + "  ".join(f"{k} {v:.3f}" for k, v in metrics["prdc"].items())
            + f"  (Inception space, {metrics['num_samples']} vs {metrics['num_real']})"
        )
    control, cond = result["attr_control"], result["cond_fd"]
    if control is not None:
        requests = (
            f", consistent requests at {args.consistent_requests:g}"
            if args.consistent_requests
            else ""
        )
        print(
            f"attribute control ({control['n_per_side']} images per side, balanced accuracy"
            f"{requests}) and conditional FD (generated vs real with / without the attribute):"
        )
        print(f"  {'attribute':22s} {'control':>7s}  {'judge':>5s}  {'cfd_on':>7s} {'cfd_off':>7s}")
        for name, score in control["per_attribute"].items():
            j = attribute_index(name)
            sides = (
                cond["per_attribute"][name] if cond else {"on": float("nan"), "off": float("nan")}
            )
            print(
                f"  {name:22s} {score:7.3f}  {classifier.balanced_accuracy[j]:5.3f}  "
                f"{sides['on']:7.2f} {sides['off']:7.2f}"
            )
        mean_cfd = f"  cond_fd {cond['mean']:.2f}" if cond else ""
        print(
            f"  mean control {control['mean']:.3f} over {len(control['attributes'])} attributes"
            f"{mean_cfd}"
        )
    if args.json:
        fileio.write_text(args.json, json.dumps(result, indent=2, default=float) + "\n")


if __name__ == "__main__":
    sys.exit(main())
