"""Pure metric functions of the evaluation (no models, no files).

* :func:`overall` -- the paper's Overall score, the harmonic mean of the
  preserving accuracy P and the forgetting complement 1 - F.
* :func:`fsr` -- Forgetting Success Rate (paper Eq. 9): the share of paired
  prompts whose edited image scores lower than the base image of the same seed.
* :func:`frechet_distance` -- the Frechet distance of two Gaussians fitted to
  feature sets (FID when the features are Inception's; here any judge's).
* :func:`kernel_distance` -- KID, the unbiased squared MMD with KID's polynomial kernel
  (torchmetrics), and :func:`kid_standard_error`, its jackknife standard error.
* :func:`clip_score` -- ``100 * max(cos(image, text), 0)``, torchmetrics' definition.
* :func:`jaccard_matrix` -- pairwise overlap of boolean masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, ``None`` for an empty sequence."""
    values = list(values)
    return float(sum(values) / len(values)) if values else None


def overall(preserve_accuracy: float | None, forget_accuracy: float | None) -> float | None:
    """Overall = 2 P (1 - F) / (P + 1 - F); 0 when both terms are 0.

    ``None`` when either accuracy is undefined (no erased or no kept class).
    """
    if preserve_accuracy is None or forget_accuracy is None:
        return None
    p, keep = float(preserve_accuracy), 1.0 - float(forget_accuracy)
    denom = p + keep
    return 0.0 if denom <= 0 else 2.0 * p * keep / denom


def fsr(base_scores: Sequence[float], edited_scores: Sequence[float]) -> float | None:
    """Share of pairs where the edited score is strictly below the base score."""
    if len(base_scores) != len(edited_scores):
        raise ValueError("base and edited scores must be paired (same length)")
    if not base_scores:
        return None
    lower = sum(1 for b, e in zip(base_scores, edited_scores) if e < b)
    return lower / len(base_scores)


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, in float64."""
    feats = torch.as_tensor(features, dtype=torch.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError("need a (N, D) feature matrix with N >= 2")
    mu = feats.mean(0)
    centred = feats - mu
    sigma = centred.T @ centred / (feats.shape[0] - 1)
    return mu, sigma


def _sqrt_psd(mat: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((mat + mat.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    The trace of the cross term is computed from the eigenvalues of the
    symmetric matrix ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``), so
    no complex matrix square root is needed and the result is deterministic.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    root1 = _sqrt_psd(s1)
    cross = root1 @ s2 @ root1
    eig = torch.linalg.eigvalsh((cross + cross.T) / 2).clamp_min(0)
    value = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * eig.sqrt().sum()
    return float(value.clamp_min(0))


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Frechet distance between two ``(N, D)`` feature sets."""
    return frechet_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def kernel_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, *, subsets: int = 50, subset_size: int | None = None, seed: int = 0) -> tuple[float, float]:
    """KID between two ``(N, D)`` feature sets: (mean, std) over random subsets.

    The unbiased estimate of the squared MMD with the polynomial kernel
    ``k(x, y) = (x . y / D + 1)^3`` (Binkowski et al. 2018), computed by
    torchmetrics' ``KernelInceptionDistance`` on features given directly
    (its feature extractor is the identity). Unlike the Frechet distance it
    has no bias that grows as the sample shrinks, so a few hundred images
    give a usable figure. ``subset_size`` defaults to the smaller set's size;
    with sets of equal size every subset is then the whole of both, and the
    std is 0: the spread of that figure is :func:`kid_standard_error`.
    """
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(feats_a), len(feats_b))
    size = min(subset_size or n, n)
    torch.manual_seed(seed)  # torchmetrics draws its subsets with the global generator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features": we pass features
        kid = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=size)
        kid.update(feats_b.double(), real=True)
        kid.update(feats_a.double(), real=False)
        mean, std = kid.compute()
    return float(mean), float(std)


def _own_row_sums(x: torch.Tensor) -> torch.Tensor:
    """``sum_{j != i} k(x_i, x_j)`` per ``i``: the rows of ``x``'s kernel matrix without its diagonal."""
    k = _kid_kernel(x, x)
    return k.sum(1) - k.diagonal()


def _kid_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's polynomial kernel ``k(x, y) = (x . y / D + 1)^3`` between the rows of ``a`` and ``b``, float64."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return (a @ b.T / a.shape[1] + 1) ** 3


def kid_standard_error(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """The jackknife standard error of KID computed on the whole of both sets (:func:`kernel_distance`'s default).

    KID is the U-statistic

        MMD^2 = S_aa / (m (m - 1)) + S_bb / (n (n - 1)) - 2 S_ab / (m n),

    ``S_aa = sum_{i != j} k(a_i, a_j)``, ``S_bb`` likewise, ``S_ab = sum_{i, j} k(a_i, b_j)``,
    ``m`` and ``n`` the set sizes. Leaving image ``a_i`` out removes
    ``2 sum_{j != i} k(a_i, a_j)`` from ``S_aa`` and ``sum_j k(a_i, b_j)`` from
    ``S_ab``, so every leave-one-out estimate ``theta_(i)`` comes from the
    kernel matrices' row sums. The two-sample jackknife variance is

        (m - 1) / m sum_i (theta_(i) - mean theta_(.))^2 + (n - 1) / n sum_j (theta_(j) - mean theta_(.))^2

    (each set's images left out in turn). KID is usually given with its spread
    over random subsets, which is none when the subsets are the whole sets;
    this is the spread of the whole-set figure. Needs at least 3 images per set.
    """
    a, b = torch.as_tensor(feats_a), torch.as_tensor(feats_b)
    m, n = a.shape[0], b.shape[0]
    if min(m, n) < 3:
        raise ValueError("the jackknife of KID needs at least 3 images in each set")
    own_aa, own_bb, k_ab = _own_row_sums(a), _own_row_sums(b), _kid_kernel(a, b)
    s_aa, s_bb, s_ab = own_aa.sum(), own_bb.sum(), k_ab.sum()
    without_a = (s_aa - 2 * own_aa) / ((m - 1) * (m - 2)) + s_bb / (n * (n - 1)) - 2 * (s_ab - k_ab.sum(1)) / ((m - 1) * n)
    without_b = s_aa / (m * (m - 1)) + (s_bb - 2 * own_bb) / ((n - 1) * (n - 2)) - 2 * (s_ab - k_ab.sum(0)) / (m * (n - 1))
    variance = (m - 1) / m * (without_a - without_a.mean()).square().sum() + (n - 1) / n * (without_b - without_b.mean()).square().sum()
    return float(variance.sqrt())


def kid_change(feats_new: torch.Tensor, feats_old: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """``KID(new, reference) - KID(old, reference)`` on the whole sets, with its paired jackknife standard error.

    ``feats_new[i]`` and ``feats_old[i]`` must come from the same prompt and
    seed (an edited and the unedited model), so their errors are shared. Each
    KID alone can have an error larger than the gap between two close models
    (:func:`kid_standard_error`); their difference, left out pair by pair,
    does not carry what the two sets have in common. With ``m`` pairs and
    ``n`` reference images the reference's own term cancels:

        D = (S_nn - S_oo) / (m (m - 1)) - 2 (S_nr - S_or) / (m n)

    (:func:`kid_standard_error`'s sums). Leaving pair ``i`` out removes
    ``2 sum_{j != i} k(x_i, x_j)`` from ``S_nn`` and ``S_oo`` and row ``i``'s
    sums from ``S_nr`` and ``S_or``; leaving reference image ``j`` out removes
    column ``j``'s sums. The variance is the two-sample jackknife's,

        (m - 1) / m sum_i (D_(i) - mean D_(.))^2 + (n - 1) / n sum_j (D_(j) - mean D_(.))^2.

    Needs at least 3 pairs and 3 reference images.
    """
    new, old, ref = (torch.as_tensor(f).to(torch.float64) for f in (feats_new, feats_old, reference))
    if new.shape != old.shape:
        raise ValueError(f"the paired feature sets must have the same shape, got {tuple(new.shape)} and {tuple(old.shape)}")
    m, n = new.shape[0], ref.shape[0]
    if min(m, n) < 3:
        raise ValueError("the jackknife of a KID change needs at least 3 pairs and 3 reference images")
    own_new, own_old = _own_row_sums(new), _own_row_sums(old)
    k_nr, k_or = _kid_kernel(new, ref), _kid_kernel(old, ref)
    s_self = own_new.sum() - own_old.sum()  # S_nn - S_oo
    s_ref = k_nr.sum() - k_or.sum()  # S_nr - S_or
    change = s_self / (m * (m - 1)) - 2 * s_ref / (m * n)
    without_pair = ((s_self - 2 * (own_new - own_old)) / ((m - 1) * (m - 2))
                    - 2 * (s_ref - (k_nr.sum(1) - k_or.sum(1))) / ((m - 1) * n))
    without_ref = s_self / (m * (m - 1)) - 2 * (s_ref - (k_nr.sum(0) - k_or.sum(0))) / (m * (n - 1))
    variance = ((m - 1) / m * (without_pair - without_pair.mean()).square().sum()
                + (n - 1) / n * (without_ref - without_ref.mean()).square().sum())
    return float(change), float(variance.sqrt())


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score ``100 * max(cos, 0)`` of ``(B, D)`` embeddings."""
    img = torch.nn.functional.normalize(image_embeds.double(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeds.double(), dim=-1)
    return (100.0 * (img * txt).sum(-1)).clamp_min(0)


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of boolean tensors (1.0 when both are empty)."""
    a, b = a.bool(), b.bool()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def jaccard_matrix(masks: Sequence[torch.Tensor]) -> list[list[float]]:
    """Pairwise Jaccard similarity of flattened boolean masks."""
    flat = [m.bool().flatten() for m in masks]
    return [[jaccard(x, y) for y in flat] for x in flat]
