"""Collapse diagnostics: singular-value spectra, effective rank, C heatmaps, t-SNE plots.

A Barlow Twins run can fail in two ways that the loss alone hides early on: complete
collapse (every input gives the same embedding) and dimensional collapse (the embeddings
span a few directions; Jing et al., ICLR 2022). Both show in the singular values of the
centred [N, D] embedding matrix. The effective rank (Roy & Vetterli, EUSIPCO 2007) is
exp(entropy of the normalised singular values): D for a perfectly spread embedding, 1 for
a rank-1 one.

The numerical functions are pure JAX (jit-able, no TensorFlow); the plotting functions
write PNGs with matplotlib's Agg backend.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.io import run_dir, storage

# A matrix whose largest singular value is below this fraction of its RMS entry times
# sqrt(N * D) is constant up to float rounding: complete collapse.
CONSTANT_TOLERANCE = 1e-4
# Effective rank below this: (nearly) one direction left, dimensional collapse.
MIN_EFFECTIVE_RANK = 2.0


def singular_values(x: jax.Array) -> jax.Array:
    """Singular values of the column-centred matrix, descending.

    Args:
      x: [N, D] float (embeddings or features of N examples).

    Returns:
      [min(N, D)] float32, from the eigenvalues of the smaller of the two Gram matrices
      (N x N or D x D), computed in float32 at the highest matmul precision.
    """
    x = jnp.asarray(x, jnp.float32)
    x = x - jnp.mean(x, axis=0, keepdims=True)
    hi = jax.lax.Precision.HIGHEST
    gram = (jnp.matmul(x, x.T, precision=hi) if x.shape[0] <= x.shape[1]
            else jnp.matmul(x.T, x, precision=hi))
    eig = jnp.linalg.eigvalsh(gram)[::-1]
    return jnp.sqrt(jnp.maximum(eig, 0.0))


def effective_rank(s: jax.Array) -> jax.Array:
    """exp(-sum p log p) with p = s / sum(s): a float32 scalar in [1, len(s)]; 0 when s is
    all zero (no direction at all).

    Args:
      s: [K] non-negative singular values.
    """
    total = jnp.sum(s)
    p = s / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


@jax.jit
def spectrum_stats(x: jax.Array) -> dict:
    """Scalars that tell a healthy representation from a collapsed one.

    Args:
      x: [N, D] float.

    Returns:
      {"effective_rank": exp-entropy rank of the centred x, "top_singular_fraction": the
       largest singular value's share of their sum, "feature_std": the mean over features
       of the per-feature standard deviation, "relative_spread": the largest singular
       value over sqrt(N * D) * RMS(x) (about 0 for constant rows)} as float32 scalars,
      and "singular_values": [min(N, D)].
    """
    x = jnp.asarray(x, jnp.float32)
    s = singular_values(x)
    n, d = x.shape
    rms = jnp.sqrt(jnp.mean(jnp.square(x)))
    return {
        "effective_rank": effective_rank(s),
        "top_singular_fraction": s[0] / jnp.maximum(jnp.sum(s), 1e-30),
        "feature_std": jnp.mean(jnp.std(x, axis=0)),
        "relative_spread": s[0] / jnp.maximum(jnp.sqrt(float(n * d)) * rms, 1e-30),
        "singular_values": s,
    }


def scalars(stats: dict) -> dict:
    """The scalar entries of `spectrum_stats` as Python floats (no singular values)."""
    return {k: float(v) for k, v in stats.items() if np.ndim(v) == 0}


def collapse_verdict(stats: dict, *, min_effective_rank: float = MIN_EFFECTIVE_RANK,
                     tolerance: float = CONSTANT_TOLERANCE) -> Optional[str]:
    """None for a healthy representation, else a sentence naming the kind of collapse.

    stats: `spectrum_stats` of [N, D] embeddings or features (N > 1).
    """
    if float(stats["relative_spread"]) < tolerance:
        return ("complete collapse: every example has the same representation (largest "
                f"singular value {float(stats['relative_spread']):.2g} of the data's scale)")
    if float(stats["effective_rank"]) < min_effective_rank:
        return (f"dimensional collapse: effective rank {float(stats['effective_rank']):.2f} "
                f"(< {min_effective_rank}), the representation spans about one direction")
    return None


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def plot_spectra(spectra: dict, path: str, title: str = "") -> str:
    """Normalised singular values (s / s_max, log scale) of each named [K] spectrum -> PNG;
    title: what the spectra are of (default: "singular-value spectrum (centred)")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, s in spectra.items():
        s = np.asarray(s, np.float64)
        ax.plot(np.arange(1, len(s) + 1), s / max(s[0], 1e-30),
                label=f"{name} (eff. rank {float(effective_rank(jnp.asarray(s))):.1f})")
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xlabel("k: index of the singular value, largest first")
    ax.set_ylabel("k-th singular value / largest")
    ax.set_title(title or "singular-value spectrum (centred)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    storage.write_figure(fig, path)
    plt.close(fig)
    return path


def correlation_heatmap(c: np.ndarray, size: int = 128) -> np.ndarray:
    """[D, D] cross-correlation -> [size', size', 3] uint8 image of its top-left block
    (size' = min(D, size)): blue -1, white 0, red +1; the identity is a red diagonal."""
    block = np.clip(np.asarray(c, np.float32)[:size, :size], -1.0, 1.0)
    pos, neg = np.clip(block, 0, 1), np.clip(-block, 0, 1)
    rgb = np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)
    return np.round(255 * np.clip(rgb, 0, 1)).astype(np.uint8)


def heatmap_figure(c: np.ndarray, size: int = 128, *, dim: Optional[int] = None,
                   step: Optional[int] = None):
    """The matplotlib Figure of C's top-left [size, size] block: rows i are view A's
    features, columns j view B's (C_ij = corr(z_a[:, i], z_b[:, j])), a colour bar from
    -1 to 1; dim: the embedding's width D, step: the step of the batch, for the title."""
    plt = _pyplot()
    block = np.asarray(c, np.float32)[:size, :size]
    fig, ax = plt.subplots(figsize=(5.0, 4.4))
    im = ax.imshow(block, cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("C_ij  (the loss pushes it to 1 on the diagonal, 0 off it)", fontsize=8)
    ax.set_xlabel("j: feature of view B's embedding")
    ax.set_ylabel("i: feature of view A's embedding")
    n = block.shape[0]
    shown = (f"all {n} features" if dim == n else
             f"first {n}" + (f" of {dim}" if dim else "") + " features")
    batch = "a training batch" if step is None else f"the training batch of step {step}"
    ax.set_title(f"cross-correlation C of the two views, {shown},\non {batch}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_heatmap(c: np.ndarray, path: str, size: int = 128, *, dim: Optional[int] = None,
                 step: Optional[int] = None) -> str:
    """The top-left block of C as a PNG with a colour bar (`heatmap_figure`)."""
    fig = heatmap_figure(c, size, dim=dim, step=step)
    storage.write_figure(fig, path)
    _pyplot().close(fig)
    return path


def plot_embedding_2d(features: np.ndarray, labels: np.ndarray, path: str, *,
                      max_points: int = 2000, seed: int = 0, split: str = "evaluation"
                      ) -> str:
    """t-SNE (UMAP where umap-learn is installed) of the trained encoder's [N, F] features
    of `split`'s images, coloured by class."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(features))[:max_points])
    x, y = np.asarray(features, np.float32)[idx], np.asarray(labels)[idx]
    try:
        import umap  # pylint: disable=import-outside-toplevel
        xy, method = umap.UMAP(random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca",
                  random_state=seed).fit_transform(x)
        method = "t-SNE"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab10", s=4)
    ax.legend(*sc.legend_elements(), fontsize=7, loc="best", markerscale=0.8, title="class",
              title_fontsize=7)
    ax.set_title(f"{method} of the trained encoder's features of {len(x)} {split} "
                 "images,\ncoloured by class", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    storage.write_figure(fig, path)
    plt.close(fig)
    return path


def write_pngs(workdir: str, *, spectra: dict, c: Optional[np.ndarray] = None,
               dim: Optional[int] = None, step: Optional[int] = None) -> list[str]:
    """spectrum.png (and cross_correlation.png when C is given) into workdir; spectra of
    the training batch of `step`, C's block of an embedding `dim` features wide."""
    of = "" if step is None else f",\non the training batch of step {step}"
    paths = [plot_spectra(spectra, run_dir.path(workdir, run_dir.SPECTRUM),
                          f"singular values of the centred representations{of}")]
    if c is not None:
        paths.append(plot_heatmap(c, run_dir.path(workdir, run_dir.CROSS_CORRELATION),
                                  dim=dim, step=step))
    return paths
