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
