"""InceptionV3 exactly as pytorch-fid's FID variant: the network only.

This module owns the FID feature network: the architecture (pytorch-fid 0.3.0's
`fid_inception_v3` with its patched blocks: average pools that exclude the zero
padding in Mixed_5b-5d, 6b-6e and 7b, a max pool in 7c, bias-free convolutions
whose BatchNorm is folded in), the input step of `pytorch_fid.inception.InceptionV3`
(bilinear resize to 299 with half-pixel centres and no antialias, then `2x - 1`),
`pool3_features` and the shapes of its params (`abstract_params`). Reading
pytorch-fid's weights file and turning it into these params is
`models/inception_weights.py`.

Inference-only rewrites, each mathematically exact (only float rounding differs):

* BatchNorm is folded into each convolution (kernel scale and a bias) when the
  weights are loaded, so the params hold a kernel and a bias per convolution.
* The 1x1 convolutions of a block that read the same input are one matrix product.
* An average-pool branch runs its 1x1 convolution *before* the pool: both are linear
  (the pool per channel, the convolution per pixel), so they commute, and pooling the
  192 outputs instead of the 768-1280 inputs saves most of the pooling work.

Every other convolution is a plain XLA convolution on every backend (on CPU,
`runtime.CPU_CONV_FLAG` routes them to Eigen, faster there than im2col products).
Layout is NHWC; convolutions and products run at `Precision.HIGHEST` so accelerators
do not drop to TF32/bf16 passes (which would break agreement with pytorch-fid).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from facegan_jax.models import onednn

INPUT_SIZE = 299
POOL3_DIM = 2048

_HIGHEST = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- architecture
# (block name, kind) in network order; kinds follow torchvision's InceptionA..E naming.
MIXED_BLOCKS: tuple[tuple[str, str], ...] = (
    ("Mixed_5b", "A"),
    ("Mixed_5c", "A"),
    ("Mixed_5d", "A"),
    ("Mixed_6a", "B"),
    ("Mixed_6b", "C"),
    ("Mixed_6c", "C"),
    ("Mixed_6d", "C"),
    ("Mixed_6e", "C"),
    ("Mixed_7a", "D"),
    ("Mixed_7b", "E1"),
    ("Mixed_7c", "E2"),
)
# The 1x1 convolutions of a block that read the block input, merged into one product
# (`pointwise_kernel` [Cin, sum], `pointwise_bias`), in this order. 'branch_pool' here
# means its conv runs before the (linear) average pool; see the module docstring.
POINTWISE_MEMBERS: dict[str, tuple[str, ...]] = {
    "A": ("branch1x1", "branch5x5_1", "branch3x3dbl_1", "branch_pool"),
    "B": ("branch3x3dbl_1",),
    "C": ("branch1x1", "branch7x7_1", "branch7x7dbl_1", "branch_pool"),
    "D": ("branch3x3_1", "branch7x7x3_1"),
    "E1": ("branch1x1", "branch3x3_1", "branch3x3dbl_1", "branch_pool"),
    "E2": ("branch1x1", "branch3x3_1", "branch3x3dbl_1"),
}


def _conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    strides: int = 1,
    padding: tuple[int, int] = (0, 0),
) -> jax.Array:
    """BN-folded BasicConv2d: conv (HWIO kernel) + bias + ReLU."""
    # Plain XLA convolution, also on CPU: with Eigen's convolutions (runtime.CPU_CONV_FLAG)
    # every layer runs at 100-170 GFLOP/s on 2 AVX2 cores, while an im2col patch matrix
    # times the kernel (used here before) ran Conv2d_4a at 46 GFLOP/s: 12.5 vs 9.0 img/s
    # for the whole network (`python -m facegan_jax.benchmark --only=fid,fid_layers`).
    if onednn.active():  # FACEGAN_CONV_BACKEND=onednn: one oneDNN call, bias and ReLU inside
        return onednn.conv_bias_relu(x, kernel, bias, strides, padding)
    y = lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(strides, strides),
        padding=((padding[0], padding[0]), (padding[1], padding[1])),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST,
    )
    return jax.nn.relu(y + bias)


def _max_pool_3x3(x: jax.Array, strides: int, padding: int) -> jax.Array:
    """3x3 max pool; padded positions never win (they hold -inf), as in torch.

    Separable: the max of three (strided) row slices, then of three column slices. XLA
    fuses each into one vectorised loop; its `reduce_window` took 8% of the FID network's
    time on an AVX-512 CPU (the max is exact either way, so the values are the same).
    """
    if padding:
        x = jnp.pad(
            x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf
        )
    _, h, w, _ = x.shape
    oh, ow = (h - 3) // strides + 1, (w - 3) // strides + 1
    span_h, span_w = strides * (oh - 1) + 1, strides * (ow - 1) + 1
    rows = [x[:, a : a + span_h : strides] for a in range(3)]  # each [B, OH, W, C]
    r = jnp.maximum(jnp.maximum(rows[0], rows[1]), rows[2])
    cols = [r[:, :, b : b + span_w : strides] for b in range(3)]  # each [B, OH, OW, C]
    return jnp.maximum(jnp.maximum(cols[0], cols[1]), cols[2])


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average pool with padding 1 and count_include_pad=False.

    Separable box sum of shifted slices (XLA fuses it into one loop), divided by the
    number of in-image pixels under each window, as TensorFlow and pytorch-fid do.
    """
    _, H, W, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, C]
    rows = xp[:, :-2] + xp[:, 1:-1] + xp[:, 2:]  # [B, H, W+2, C]
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]  # [B, H, W, C]
    count = np.outer(_window_counts(H), _window_counts(W)).astype(np.float32)  # [H, W]
    return box / count[None, :, :, None]


def _window_counts(n: int) -> np.ndarray:
    """In-range taps of a size-3, padding-1 window at each of n positions."""
    idx = np.arange(n)
    return np.minimum(idx + 1, n - 1) - np.maximum(idx - 1, 0) + 1


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix of torch `F.interpolate(bilinear, align_corners=False)`.

    Half-pixel centres, source index clamped at 0 and the upper neighbour clamped at
    the last pixel, no antialias; computed in float32 as torch's CPU kernel does.

    Args:
      in_size: input length along one axis.
      out_size: output length along that axis.

    Returns:
      [out_size, in_size] float32 matrix whose rows sum to 1.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam1 = (src - i0.astype(np.float32)).astype(np.float32)
    lam0 = np.float32(1) - lam1
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, i0), lam0)
    np.add.at(matrix, (rows, i1), lam1)
    return matrix


def resize_to_inception(images_01: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """Bilinear resize of [0, 1] images to `size` exactly like pytorch-fid's input step.

    Args:
      images_01: [B, H, W, C] float32 in [0, 1].
      size: output side.

    Returns:
      [B, size, size, C] float32 (still in [0, 1]; `2x - 1` is applied by the network).
    """
    _, H, W, _ = images_01.shape
    x = images_01.astype(jnp.float32)
    if size != H:
        mh = jnp.asarray(bilinear_resize_matrix(H, size))  # [size, H]
        x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=_HIGHEST)  # [B, size, W, C]
    if size != W:
        mw = jnp.asarray(bilinear_resize_matrix(W, size))  # [size, W]
        x = jnp.einsum("pw,bowc->bopc", mw, x, precision=_HIGHEST)  # [B, size, size, C]
    return x


class FoldedConv(nn.Module):
    """A pytorch-fid BasicConv2d (conv without bias, BatchNorm, ReLU) with BN folded in."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _conv(x, kernel, bias, self.strides, self.padding)


class MixedBlock(nn.Module):
    """One of pytorch-fid's Inception blocks (kind A, B, C, D, E1 or E2).

    Attributes:
      kind: block kind (see MIXED_BLOCKS).
      width: pool features (A) or channels_7x7 (C); unused otherwise.
    """

    kind: str
    width: int = 0

    def _pointwise(
        self, x: jax.Array, sizes: Sequence[int], pooled: bool = False
    ) -> list[jax.Array]:
        """The block's 1x1 convolutions of `x`, each member after bias and ReLU.

        With `pooled`, the last member is pytorch-fid's branch_pool: its (linear) conv runs
        first, then the 3x3 average pool, then bias and ReLU. On XLA the members are one
        merged product; on oneDNN each member is one call with bias and ReLU inside (no
        merged output to split, no second pass), the pooled one's bias added before its
        pool (the average of a constant is the constant).
        """
        kernel = self.param(
            "pointwise_kernel", nn.initializers.lecun_normal(), (x.shape[-1], sum(sizes))
        )
        bias = self.param("pointwise_bias", nn.initializers.zeros, (sum(sizes),))
        cuts = np.cumsum(sizes)[:-1].tolist()
        kernels, biases = jnp.split(kernel, cuts, axis=-1), jnp.split(bias, cuts)
        last = len(sizes) - 1
        if onednn.active():
            out = []
            for i, (k, b) in enumerate(zip(kernels, biases)):
                if pooled and i == last:  # conv + bias, pool, then ReLU
                    y = onednn.conv_bias_relu(x, k[None, None], b, 1, 0, relu=False)
                    out.append(jax.nn.relu(_avg_pool_3x3_exclude_pad(y)))
                else:
                    out.append(onednn.conv_bias_relu(x, k[None, None], b, 1, 0))
            return out
        y = jnp.einsum("bhwc,cd->bhwd", x, kernel, precision=_HIGHEST)  # [B, H, W, sum]
        parts = jnp.split(y, cuts, axis=-1)
        if pooled:
            parts[last] = _avg_pool_3x3_exclude_pad(parts[last])  # conv-then-pool: both linear
        return [jax.nn.relu(p + b) for p, b in zip(parts, biases)]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kind
        if k == "A":
            b1, b5, b3, bp = self._pointwise(x, (64, 48, 64, self.width), pooled=True)
            b5 = FoldedConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
            b3 = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
            b3 = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
            return jnp.concatenate([b1, b5, b3, bp], axis=-1)
        if k == "B":
            b3 = FoldedConv(384, (3, 3), strides=2, name="branch3x3")(x)
            (bd,) = self._pointwise(x, (64,))
            bd = FoldedConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
            bd = FoldedConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
            return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)
        if k == "C":
            c7 = self.width
            b1, b7, bd, bp = self._pointwise(x, (192, c7, c7, 192), pooled=True)
            b7 = FoldedConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
            b7 = FoldedConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
            bd = FoldedConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
            bd = FoldedConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
            bd = FoldedConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
            bd = FoldedConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
            return jnp.concatenate([b1, b7, bd, bp], axis=-1)
        if k == "D":
            b3, b7 = self._pointwise(x, (192, 192))
            b3 = FoldedConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
            b7 = FoldedConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
            b7 = FoldedConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
            b7 = FoldedConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
            return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)
        if k in ("E1", "E2"):
            sizes = (320, 384, 448, 192) if k == "E1" else (320, 384, 448)
            b1, b3, bd, *rest = self._pointwise(x, sizes, pooled=k == "E1")
            if k == "E1":
                (bp,) = rest
            else:  # pytorch-fid's E_2 max-pools (a quirk of the TF graph), then convs.
                bp = FoldedConv(192, (1, 1), name="branch_pool")(_max_pool_3x3(x, 1, 1))
            b3 = jnp.concatenate(
                [
                    FoldedConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                    FoldedConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
                ],
                axis=-1,
            )
            bd = FoldedConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
            bd = jnp.concatenate(
                [
                    FoldedConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                    FoldedConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
                ],
                axis=-1,
            )
            return jnp.concatenate([b1, b3, bd, bp], axis=-1)
        raise ValueError(f"unknown Inception block kind {k!r}")


_BLOCK_WIDTHS = {
    "Mixed_5b": 32,
    "Mixed_5c": 64,
    "Mixed_5d": 64,
    "Mixed_6b": 128,
    "Mixed_6c": 160,
    "Mixed_6d": 160,
    "Mixed_6e": 192,
}


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 (NHWC), from [0, 1] images to pool3 features.

    Call with images [B, H, W, 3] float32 in [0, 1]; they are resized to 299 inside.
    Returns pool3 [B, 2048], or with `return_blocks=True` a dict with 'block0'
    [B, 73, 73, 64], 'block1' [B, 35, 35, 192], 'block2' [B, 17, 17, 768] and 'pool3'.
    """

    @nn.compact
    def __call__(
        self, images_01: jax.Array, return_blocks: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        x = resize_to_inception(images_01)  # [B, 299, 299, 3]
        x = 2.0 * x - 1.0
        x = FoldedConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
        x = FoldedConv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
        x = FoldedConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        block0 = _max_pool_3x3(x, 2, 0)  # [B, 73, 73, 64]
        x = FoldedConv(80, (1, 1), name="Conv2d_3b_1x1")(block0)
        x = FoldedConv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
        block1 = _max_pool_3x3(x, 2, 0)  # [B, 35, 35, 192]
        x = block1
        block2 = None
        for name, kind in MIXED_BLOCKS:
            x = MixedBlock(kind, _BLOCK_WIDTHS.get(name, 0), name=name)(x)
            if name == "Mixed_6e":
                block2 = x  # [B, 17, 17, 768]
        pool3 = jnp.mean(x, axis=(1, 2))  # [B, 2048]
        if return_blocks:
            return {"block0": block0, "block1": block1, "block2": block2, "pool3": pool3}
        return pool3


def pool3_features(params: Any, images_01: jax.Array) -> jax.Array:
    """FID features of [0, 1] images (jittable).

    Args:
      params: the pytree from `inception_weights.load_inception_params` (the 'params'
        collection).
      images_01: [B, H, W, 3] float32 in [0, 1]; any H, W (resized to 299 inside).

    Returns:
      [B, 2048] float32 pool3 features.
    """
    return InceptionV3().apply({"params": params}, images_01)


def abstract_params() -> Any:
    """Shapes and dtypes of the params pytree, without computing anything."""
    shapes = jax.eval_shape(
        InceptionV3().init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32),
    )
    return shapes["params"]
