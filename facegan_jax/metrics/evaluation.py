"""Evaluation: generators measured with the metrics of `fid.py`.

This module owns metrics on a generator during training and after: FID/KID
and the attribute-classifier metrics (`fd_attr`, attribute-control accuracy).
For FID: the statistics of a generator's images computed in the graph (`generator_stats`,
sharded over a mesh when given), FID and KID against a reference
(`evaluate_generator`), the training loop's hook (`make_training_hook`) with its
real-side reference cached under `workdir.fid_reference_dir`, loading the
Inception weights without failing a run (`try_load_inception`), and a training
workdir as a metric source (`workdir_stats`: its latest EMA generator).
For the attribute metrics (maths in attributes.py): `attribute_metrics` of a
generator against held-out real features, and the training hook
`make_attribute_hook` with the real side cached under
`workdir.attr_reference_dir`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facegan_jax import fileio
from facegan_jax import workdir as workdir_lib
from facegan_jax.data import celeba_attributes
from facegan_jax.metrics import fid, inception_weights
from facegan_jax.metrics.attributes import as_rgb

PyTree = Any


def _put_indices(indices: np.ndarray, mesh: Mesh | None) -> jax.Array:
    if mesh is None:
        return jnp.asarray(indices)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    # Works multi-host too: each process supplies the shards it holds.
    return jax.make_array_from_callback(indices.shape, sharding, lambda idx: indices[idx])


def generator_stats(
    generate: Callable[[PyTree, jax.Array], jax.Array],
    gen_variables: PyTree,
    inception_params: PyTree,
    num_samples: int,
    batch_size: int,
    *,
    mesh: Mesh | None = None,
    quantize: bool = True,
    features_fn: Callable[..., jax.Array] | None = None,
    keep_features: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None]:
    """Statistics of images 0..num_samples-1 of a generator, all in the graph.

    Args:
      generate: `generate(gen_variables, indices) -> [B, H, W, C]` in [-1, 1].
      gen_variables: the generator's variables (e.g. the EMA ones).
      inception_params: from `inception_weights.load_inception_params`.
      num_samples: images to generate (indices 0..num_samples-1).
      batch_size: images per call (rounded up to a multiple of the mesh size).
      mesh: shard generation and features over this mesh's 'data' axis.
      quantize: round generated images to PNG levels (default).
      features_fn: a prebuilt `fid.generator_features_fn(generate, ...)`.
      keep_features: also return the features (KID needs them).

    Returns:
      (mu, sigma, n, features [n, 2048] or None); features cross to the host only
      when `keep_features` (for KID), images never.
    """
    if mesh is not None:
        per = mesh.devices.size
        batch_size = -(-batch_size // per) * per  # a multiple of the device count
        rep = NamedSharding(mesh, PartitionSpec())
        inception_params = jax.device_put(inception_params, rep)
        gen_variables = jax.device_put(gen_variables, rep)
    else:
        inception_params = jax.device_put(inception_params)
    fn = features_fn or fid.generator_features_fn(generate, quantize, mesh)
    acc = fid.StatsAccumulator()
    kept = []
    for start in range(0, num_samples, batch_size):
        indices = np.arange(start, start + batch_size, dtype=np.int32)
        valid = min(batch_size, num_samples - start)
        features = fn(gen_variables, inception_params, _put_indices(indices, mesh))  # [B, 2048]
        acc.update(features, valid)
        if keep_features:
            kept.append(np.asarray(features)[:valid])
    mu, sigma, n = acc.result()
    return mu, sigma, n, np.concatenate(kept) if keep_features else None


def evaluate_generator(
    generate: Callable[[PyTree, jax.Array], jax.Array],
    gen_variables: PyTree,
    inception_params: PyTree,
    num_samples: int,
    batch_size: int,
    reference: tuple[np.ndarray, np.ndarray],
    real_features: np.ndarray | None = None,
    *,
    mesh: Mesh | None = None,
    quantize: bool = True,
    features_fn: Callable[..., jax.Array] | None = None,
) -> dict[str, float | None]:
    """FID (and KID when `real_features` is given) of a generator against a reference.

    Args:
      generate: `generate(gen_variables, indices) -> [B, H, W, C]` in [-1, 1].
      gen_variables: the generator's variables (e.g. the EMA ones).
      inception_params: from `inception_weights.load_inception_params`.
      num_samples: images to generate (indices 0..num_samples-1).
      batch_size: images per call (rounded up to a multiple of the mesh size).
      reference: real-side (mu, sigma).
      real_features: real-side features [N, 2048] for KID, or None to skip KID.
      mesh: shard generation and features over this mesh's 'data' axis.
      quantize: round generated images to PNG levels (default).
      features_fn: a prebuilt `fid.generator_features_fn(generate, ...)`.

    Returns:
      {'fid': float, 'kid': float or None}.
    """
    mu, sigma, _, fake = generator_stats(
        generate,
        gen_variables,
        inception_params,
        num_samples,
        batch_size,
        mesh=mesh,
        quantize=quantize,
        features_fn=features_fn,
        keep_features=real_features is not None,
    )
    result: dict[str, float | None] = {
        "fid": fid.frechet_distance(mu, sigma, *reference),
        "kid": None,
    }
    if real_features is not None:
        result["kid"] = fid.kid(fake, real_features)[0]
    return result


def try_load_inception(weights_path: str | None) -> PyTree | None:
    """Inception params, or None after exactly one warning when they are unavailable.

    Args:
      weights_path: the weights file, or None for the cache/download logic.

    Returns:
      The params pytree, or None (the caller then skips FID).
    """
    try:
        return inception_weights.load_inception_params(weights_path)
    except (
        inception_weights.InceptionWeightsUnavailableError,
        inception_weights.InceptionWeightsError,
    ) as e:
        logging.warning("FID disabled: %s", e)
        return None


# ----------------------------------------------------------------------------- training hook
def make_training_hook(
    config: Any, generator: Any, pool: np.ndarray | None, workdir: str
) -> Callable[[Any], dict[str, float]] | None:
    """The training loop's FID hook: `hook(state) -> {'eval/fid', 'eval/kid'}`.

    Generates `config.fid.num_samples` images from the EMA generator (seed
    `config.seed`, attributes drawn from `pool` for conditional models) and compares
    them with the statistics of `config.data.eval_split`, computed once and cached
    in `workdir.fid_reference_dir(workdir)`.

    Args:
      config: the run config (`config.fid`, `config.data`, `config.seed`).
      generator: the generator module.
      pool: real attribute vectors [P, 40] for conditional models, else None.
      workdir: the run's workdir (holds the reference cache).

    Returns:
      The hook, or None after one warning when the Inception weights are unavailable.
    """
    from facegan_jax import sharding
    from facegan_jax.generation import sampling

    params = try_load_inception(config.fid.weights_path)
    if params is None:
        return None
    mesh = sharding.create_mesh()
    params = jax.device_put(params, sharding.replicated(mesh))
    reference = _training_reference(config, params, workdir)
    # Metrics average thousands of images: the batched path (one generator call per
    # batch), not `sample`'s bit-reproducible batch-1 path, which serialises a GPU.
    generate = sampling.make_batched_generate_fn(generator, config, seed=config.seed, pool=pool)
    features_fn = fid.generator_features_fn(generate, True, mesh)

    def hook(state: Any) -> dict[str, float]:
        variables = {"params": state.ema_params, **state.ema_vars}
        result = evaluate_generator(
            generate,
            variables,
            params,
            config.fid.num_samples,
            config.fid.batch_size,
            (reference["mu"], reference["sigma"]),
            reference.get("features"),
            mesh=mesh,
            features_fn=features_fn,
        )
        scalars = {"eval/fid": result["fid"]}
        if result["kid"] is not None:
            scalars["eval/kid"] = result["kid"]
        return scalars

    return hook


def _eval_split(config: Any, batch_size: int) -> Any:
    """The held-out split in order, whole on every process (so all compute the same statistics)."""
    from facegan_jax.data import input_pipeline

    return input_pipeline.ordered_dataset(config, config.data.eval_split, batch_size)


def _reference_path(config: Any, workdir: str, num_samples: int, suffix: str = "") -> str:
    """Where a workdir caches Inception statistics or features of the held-out split."""
    data = config.data
    name = (
        f"{data.name}_{data.eval_split}_{data.image_size}px_{data.channels}ch_{data.crop}_"
        f"n{num_samples}{suffix}.npz"
    ).replace("/", "_")
    return fileio.join(workdir_lib.fid_reference_dir(workdir), name)


def _training_reference(config: Any, params: PyTree, workdir: str) -> dict[str, np.ndarray]:
    """Real-side statistics (and features for KID) of the eval split, cached in the workdir."""
    data = config.data
    path = _reference_path(config, workdir, config.fid.num_samples)
    if fileio.exists(path):
        cached = fileio.load_npz(path)
        return {k: v for k, v in cached.items() if k in ("mu", "sigma", "features")}
    dataset = _eval_split(config, config.fid.batch_size)
    feats = fid.features_from_images(
        dataset.as_numpy_iterator(),
        params,
        config.fid.batch_size,
        max_samples=config.fid.num_samples,
    )
    mu, sigma, n = fid.stats_from_features(feats)
    ref = {"mu": mu, "sigma": sigma}
    if config.fid.kid:
        ref["features"] = feats
    if n < config.fid.num_samples:
        logging.warning("FID reference: split %r has only %d images", data.eval_split, n)
    if jax.process_index() == 0:
        fileio.save_npz(path, n=n, source=f"{data.name}:{data.eval_split}", **ref)
    return ref


def inception_reference(
    config: Any, inception_params: PyTree, num_samples: int, batch_size: int, workdir: str
) -> np.ndarray:
    """Inception pool3 features [n, 2048] of the held-out split, cached in the workdir."""
    data = config.data
    path = _reference_path(config, workdir, num_samples, "_features")
    if fileio.exists(path):
        return fileio.load_npz(path)["features"]
    dataset = _eval_split(config, batch_size)
    feats = fid.features_from_images(
        dataset.as_numpy_iterator(), inception_params, batch_size, max_samples=num_samples
    )
    if jax.process_index() == 0:
        fileio.save_npz(path, features=feats, source=f"{data.name}:{data.eval_split}")
    return feats


def inception_metrics(
    generate: Callable[[PyTree, jax.Array], jax.Array],
    gen_variables: PyTree,
    inception_params: PyTree,
    real_features: np.ndarray,
    num_samples: int,
    batch_size: int,
    nearest_k: int = 5,
) -> dict[str, Any]:
    """FID and precision / recall / density / coverage in Inception's pool3 space.

    Args:
      generate: `generate(gen_variables, indices) -> [B, H, W, C]` in [-1, 1].
      gen_variables: the generator's variables (e.g. the EMA ones).
      inception_params: from `inception_weights.load_inception_params`.
      real_features: real images' pool3 features [N, 2048] (`inception_reference`).
      num_samples: images to generate (indices 0..num_samples-1).
      batch_size: images per call.
      nearest_k: the k of the PRDC balls.

    Returns:
      {'fid': float, 'prdc': {...}, 'num_samples': int, 'num_real': int}.
    """
    from facegan_jax.metrics import conditional

    mu, sigma, n, fake = generator_stats(
        generate, gen_variables, inception_params, num_samples, batch_size, keep_features=True
    )
    real_mu, real_sigma, _ = fid.stats_from_features(real_features)
    return {
        "fid": fid.frechet_distance(mu, sigma, real_mu, real_sigma),
        "prdc": conditional.prdc(real_features, fake, nearest_k),
        "num_samples": n,
        "num_real": len(real_features),
    }


# ----------------------------------------------------------------------------- workdirs
def workdir_stats(
    workdir: str | os.PathLike,
    inception_params: PyTree,
    batch_size: int,
    num_samples: int | None = None,
    *,
    keep_features: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None, Any]:
    """Statistics of a training workdir's latest EMA generator: a workdir as a metric source.

    Images are indices 0..num_samples-1 of `components.load_generator(workdir)`
    (conditional models draw attributes from the workdir's real attribute pool).

    Args:
      workdir: a training workdir (holds config.json and checkpoints).
      inception_params: from `inception_weights.load_inception_params`.
      batch_size: images per network call.
      num_samples: images to generate; None uses the run's `config.fid.num_samples`.
      keep_features: also return the features (KID needs them).

    Returns:
      (mu, sigma, n, features [n, 2048] or None, the run's config).

    Raises:
      FileNotFoundError: `workdir` holds no run or no checkpoint.
      errors.CheckpointError: no checkpoint of `workdir` can be read.
    """
    from facegan_jax.training import components

    generate, variables, config = components.load_generator(os.fspath(workdir))
    generate = generate.as_batched()  # metrics: the fast path (see make_training_hook)
    num = num_samples or config.fid.num_samples
    mu, sigma, n, feats = generator_stats(
        generate, variables, inception_params, num, batch_size, keep_features=keep_features
    )
    return mu, sigma, n, feats, config


# ----------------------------------------------------------------------------- attribute metrics
def real_attribute_features(
    config: Any, classifier: Any, num_samples: int, workdir: str | None = None
) -> np.ndarray:
    """Classifier features [n, F] of the config's held-out split (cached in `workdir` if given)."""
    return real_attribute_reference(config, classifier, num_samples, workdir)[0]


def real_attribute_reference(
    config: Any, classifier: Any, num_samples: int, workdir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(classifier features [n, F], attribute labels [n, 40]) of the held-out split.

    Cached in `workdir` (if given) under a name that identifies the data and the
    classifier; the labels are what the conditional Frechet distances split by.
    """
    data = config.data
    name = (
        f"{data.name}_{data.eval_split}_{data.image_size}px_{data.channels}ch_{data.crop}_"
        f"n{num_samples}_{_fingerprint(classifier)}"
    ).replace("/", "_")
    folder = workdir_lib.attr_reference_dir(workdir) if workdir else None
    paths = (
        (fileio.join(folder, f"{name}.npy"), fileio.join(folder, f"{name}.labels.npy"))
        if folder
        else ()
    )
    if folder and all(fileio.exists(p) for p in paths):
        return fileio.load_npy(paths[0]), fileio.load_npy(paths[1])
    from facegan_jax.metrics import attributes

    dataset = _eval_split(config, config.attr_eval.batch_size)
    labels: list[np.ndarray] = []

    def images() -> Any:
        for b in dataset.as_numpy_iterator():
            labels.append(np.asarray(b["attributes"], np.float32))
            yield as_rgb(b["image"])

    feats = attributes.collect_features(classifier, images(), num_samples)
    labels_all = np.concatenate(labels)[: len(feats)] if labels else np.zeros((0, 40), np.float32)
    if folder and jax.process_index() == 0:
        for path, array in zip(paths, (feats, labels_all)):
            fileio.save_npy(path, array)
    return feats, labels_all


def _fingerprint(classifier: Any) -> str:
    """Short id of a classifier (its calibrated thresholds and steps) for cache names."""
    digest = hashlib.sha256(np.asarray(classifier.threshold_logits, np.float64).tobytes())
    digest.update(str(classifier.steps).encode())
    return digest.hexdigest()[:12]


def attribute_metrics(
    generate: Callable[..., jax.Array],
    gen_variables: PyTree,
    classifier: Any,
    real_features: np.ndarray,
    *,
    num_samples: int,
    batch_size: int,
    pool: np.ndarray | None = None,
    n_per_side: int = 100,
    seed: int = 0,
    real_labels: np.ndarray | None = None,
    nearest_k: int = 5,
    consistent: float = 0.0,
) -> dict[str, Any]:
    """fd_attr, precision/recall/density/coverage of a generator and, for conditional
    ones, attribute-control accuracy and conditional Frechet distances.

    Args:
      generate: `generate(variables, indices[, attributes]) -> images` in [-1, 1],
        already jitted (e.g. `SeededGenerator.jitted`, compiled once per shape for
        the life of the object, so periodic evaluations do not recompile).
      gen_variables: the generator's variables (e.g. the EMA ones).
      classifier: an `attributes.Classifier`.
      real_features: classifier features of held-out real images [M, F].
      num_samples: generated images for fd_attr (indices 0..num_samples-1).
      batch_size: images per generator call.
      pool: real attribute vectors [P, 40] for conditional generators, else None.
      n_per_side: control accuracy: images per attribute forced on (and as many off).
      seed: draws the control accuracy's vectors and latents.
      real_labels: attribute labels [M, 40] of the real images behind
        `real_features`; with them (and a pool) the conditional Frechet distances
        are computed too.
      nearest_k: k of precision/recall/density/coverage.
      consistent: control on consistent requests (`attributes.attribute_control`);
        0: the metric's definition (only the attribute changes).

    Returns:
      {'fd_attr': float, 'prdc': {'precision', 'recall', 'density', 'coverage'},
      'attr_control': {'per_attribute', 'mean', ...} or None, 'cond_fd':
      {'per_attribute': {name: {'on', 'off', 'mean'}}, 'mean', ...} or None}.
    """
    from facegan_jax.metrics import attributes, conditional

    gen = generate
    feats = attributes.collect_features(
        classifier,
        (
            as_rgb(gen(gen_variables, np.arange(s, min(s + batch_size, num_samples))))
            for s in range(0, num_samples, batch_size)
        ),
    )
    result: dict[str, Any] = {
        "fd_attr": attributes.fd_attr(feats, real_features),
        "prdc": None,
        "attr_control": None,
        "cond_fd": None,
    }
    if min(len(feats), len(real_features)) > nearest_k:
        result["prdc"] = conditional.prdc(real_features, feats, nearest_k)
    if pool is not None:
        control = attributes.attribute_control(
            classifier,
            lambda idx, vec: as_rgb(gen(gen_variables, idx, vec)),
            pool,
            n_per_side,
            seed=seed,
            batch_size=batch_size,
            keep_features=real_labels is not None,
            consistent=consistent,
        )
        # The conditional FD scores the control metric's own images (same draws):
        # nothing is generated or classified twice.
        generated = control.pop("features", None)
        result["attr_control"] = control
        if generated is not None:
            result["cond_fd"] = conditional.conditional_fd_table(
                generated, real_features, real_labels
            )
    return result


def attribute_scalars(result: dict[str, Any]) -> dict[str, float]:
    """`attribute_metrics`' result as flat `eval/...` scalars (what training logs)."""
    scalars = {"eval/fd_attr": result["fd_attr"]}
    for name, value in (result.get("prdc") or {}).items():
        scalars[f"eval/{name}"] = value
    control = result["attr_control"]
    if control is not None:
        scalars["eval/attr_control"] = control["mean"]
        for name, score in control["per_attribute"].items():
            scalars[f"eval/attr_control/{name}"] = score
    cond = result.get("cond_fd")
    if cond is not None:
        scalars["eval/cond_fd"] = cond["mean"]
        for name, sides in cond["per_attribute"].items():
            scalars[f"eval/cond_fd/{name}"] = sides["mean"]
    return scalars


def make_attribute_hook(
    config: Any, generator: Any, pool: np.ndarray | None, workdir: str
) -> Callable[[Any], dict[str, float]] | None:
    """The training loop's attribute hook: `hook(state) -> {'eval/fd_attr', 'eval/attr_control'}`.

    Returns None when `config.attr_eval.every_steps` is 0.

    Raises:
      attributes.ClassifierFileError: naming the file when `config.attr_eval.classifier`
        is missing or unreadable (a run asked for a metric it cannot compute).
    """
    if not config.attr_eval.every_steps:
        return None
    from facegan_jax.generation import sampling
    from facegan_jax.metrics import attributes

    if not config.attr_eval.classifier:
        raise ValueError(
            "config.attr_eval.every_steps is set but config.attr_eval.classifier is not: "
            "give a classifier folder (python -m data_prep.train_attribute_classifier)"
        )
    classifier = attributes.load(config.attr_eval.classifier)
    real, real_labels = real_attribute_reference(
        config, classifier, config.attr_eval.num_samples, workdir
    )
    # Metrics average thousands of images: the batched path (one generator call per
    # batch), not `sample`'s bit-reproducible batch-1 path, which serialises a GPU.
    generate = sampling.make_batched_generate_fn(generator, config, seed=config.seed, pool=pool)
    consistent = float(config.attr_eval.get("consistent_requests", 0.0))
    celeba_attributes.check_rate(consistent, "config.attr_eval.consistent_requests")

    def hook(state: Any) -> dict[str, float]:
        variables = {"params": state.ema_params, **state.ema_vars}
        result = attribute_metrics(
            generate.jitted,
            variables,
            classifier,
            real,
            num_samples=config.attr_eval.num_samples,
            batch_size=config.attr_eval.batch_size,
            pool=pool,
            n_per_side=config.attr_eval.n_per_side,
            seed=config.seed,
            real_labels=real_labels,
        )
        scalars = attribute_scalars(result)
        if consistent > 0 and pool is not None:
            control = attributes.attribute_control(
                classifier,
                lambda idx, vec: as_rgb(generate.jitted(variables, idx, vec)),
                pool,
                config.attr_eval.n_per_side,
                seed=config.seed,
                batch_size=config.attr_eval.batch_size,
                consistent=consistent,
            )
            scalars["eval/attr_control_consistent"] = control["mean"]
            for name, score in control["per_attribute"].items():
                scalars[f"eval/attr_control_consistent/{name}"] = score
        return scalars

    return hook
