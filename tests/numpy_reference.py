"""Float64 NumPy re-derivations used as references by the tests."""
import numpy as np


def standardize(z, eps=1e-5):
    """[N, D] -> [N, D], biased variance, and the std used."""
    z = np.asarray(z, np.float64)
    mu = z.mean(0)
    sd = np.sqrt(((z - mu) ** 2).mean(0) + eps)
    return (z - mu) / sd, sd


def bt_loss_and_grads(z_a, z_b, lambd, redundancy="cross", eps=1e-5):
    """Loss and analytic gradients w.r.t. z_a and z_b, all in float64."""
    n, d = z_a.shape
    a, sd_a = standardize(z_a, eps)
    b, sd_b = standardize(z_b, eps)
    c = a.T @ b / n
    off = ~np.eye(d, dtype=bool)
    r = c if redundancy == "cross" else a.T @ a / n
    loss = np.sum((1 - np.diag(c)) ** 2) + lambd * np.sum(r[off] ** 2)
    g_c = np.zeros((d, d))
    g_c[np.diag_indices(d)] = -2 * (1 - np.diag(c))
    g_r = np.where(off, 2 * lambd * r, 0.0)
    if redundancy == "cross":
        g_c = g_c + g_r
        g_a = b @ g_c.T / n
    else:
        g_a = b @ g_c.T / n + a @ (g_r + g_r.T) / n
    g_b = a @ g_c / n

    def through_standardize(g, x, sd):
        return (g - g.mean(0) - x * (g * x).mean(0)) / sd

    return loss, through_standardize(g_a, a, sd_a), through_standardize(g_b, b, sd_b)


def torchvision_mean_crop_area(size=100, draws=20000, seed=0):
    """Mean crop area fraction of torchvision's rejection sampler, simulated in NumPy."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(draws):
        for _ in range(10):
            area = size * size * rng.uniform(0.08, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            w, h = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
            if 0 < w <= size and 0 < h <= size:
                total += w * h / size**2
                break
        else:
            total += 1.0
    return total / draws


def gaussian_blur(x, sigma, ksize):
    """Separable Gaussian blur of [H, W, C] with reflect padding, float64."""
    x = np.asarray(x, np.float64)
    h, w = x.shape[:2]
    r = ksize // 2
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    rows = np.stack([(pad[i:i + ksize] * k[:, None, None]).sum(0) for i in range(h)])
    return np.stack([(rows[:, j:j + ksize] * k[None, :, None]).sum(1) for j in range(w)], 1)


def bt_loss_normalized(z_a, z_b, lambd, normalization, invariance_weight=1.0, eps=1e-5):
    """The Barlow Twins loss with the normalisation ablations, float64."""
    def norm(z):
        z = np.asarray(z, np.float64)
        if normalization == "batch":
            return standardize(z, eps)[0]
        if normalization == "feature":
            c = z - z.mean(1, keepdims=True)
            return c / np.sqrt((c ** 2).mean(1, keepdims=True) + eps)
        return z
    a, b = norm(z_a), norm(z_b)
    c = a.T @ b / a.shape[0]
    off = ~np.eye(c.shape[0], dtype=bool)
    return invariance_weight * np.sum((1 - np.diag(c)) ** 2) + lambd * np.sum(c[off] ** 2)


def info_nce(z_a, z_b, temperature):
    """Symmetric cross-entropy with temperature over the batch, float64."""
    a = np.asarray(z_a, np.float64)
    b = np.asarray(z_b, np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)

    def ce(q, k):
        logits = q @ k.T / temperature
        logits -= logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -np.mean(np.diag(log_p))
    return 0.5 * (ce(a, b) + ce(b, a))


def numerical_grad(f, x, h=1e-6):
    """Central differences of a scalar float64 function of an array."""
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        d = np.zeros_like(x)
        d[idx] = h
        g[idx] = (f(x + d) - f(x - d)) / (2 * h)
    return g


def conv2d_and_grads(x, w, dy, stride, pad):
    """float64 NHWC / HWIO convolution y = conv(x, w) (symmetric zero padding `pad`, square
    `stride`), and the gradients of sum(y * dy) with respect to x and w.

    x: [N, H, W, C], w: [K, K, C, O], dy: [N, Ho, Wo, O] -> (y, dx, dw) of their shapes.
    """
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    k = w.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (xp.shape[1] - k) // stride + 1
    wo = (xp.shape[2] - k) // stride + 1
    y = np.zeros(x.shape[:1] + (ho, wo, w.shape[3]))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            y += np.einsum("nhwc,co->nhwo", xp[:, rows, cols], w[i, j])
            dw[i, j] = np.einsum("nhwc,nhwo->co", xp[:, rows, cols], dy)
            dxp[:, rows, cols] += np.einsum("nhwo,co->nhwc", dy, w[i, j])
    dx = dxp[:, pad:pad + x.shape[1], pad:pad + x.shape[2]]
    return y, dx, dw


def vicreg_and_grads(z_a, z_b, w_inv=25.0, w_var=25.0, w_cov=1.0, eps=1e-4):
    """float64 VICReg as in the authors' code (unbiased variance and covariance, the two
    views' variance terms averaged, their covariance terms summed) and its analytic
    gradients: (loss, {"invariance", "variance", "covariance"}, dL/dz_a, dL/dz_b)."""
    a, b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    n, d = a.shape
    diff = a - b
    inv = np.sum(diff ** 2) / (n * d)

    def var_cov(z):
        zc = z - z.mean(0)
        cov = zc.T @ zc / (n - 1)
        std = np.sqrt(np.diag(cov) + eps)
        v = np.mean(np.maximum(0.0, 1.0 - std))
        off = cov - np.diag(np.diag(cov))
        c = np.sum(off ** 2) / d
        # d v / d z: through std_j = sqrt(var_j + eps), var_j = sum_i zc_ij^2 / (n - 1)
        g_v = -(std < 1.0).astype(np.float64) / d * zc / (std * (n - 1))
        # d c / d z: C = zc^T zc / (n - 1), dc/dC = 2 off / d (symmetric)
        g_c = 4.0 * zc @ off / (d * (n - 1))
        return v, c, g_v, g_c     # rows of zc sum to 0: the mean's gradient term vanishes

    v_a, c_a, gv_a, gc_a = var_cov(a)
    v_b, c_b, gv_b, gc_b = var_cov(b)
    terms = {"invariance": inv, "variance": (v_a + v_b) / 2, "covariance": c_a + c_b}
    loss = w_inv * terms["invariance"] + w_var * terms["variance"] + w_cov * terms["covariance"]
    g_inv = 2.0 * diff / (n * d)
    g_a = w_inv * g_inv + w_var * gv_a / 2 + w_cov * gc_a
    g_b = -w_inv * g_inv + w_var * gv_b / 2 + w_cov * gc_b
    return loss, terms, g_a, g_b
