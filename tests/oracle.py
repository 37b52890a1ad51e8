"""Independent float64 brute force for the separability measures: plain numpy, obvious code."""

import numpy as np


def normalize(x, method):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if method == "zscore":
        return (x - x.mean(0)) / (x.std(0, ddof=1) + 1e-10)
    if method == "minmax":
        span = x.max(0) - x.min(0)
        return np.where(span > 0, (x - x.min(0)) / np.where(span > 0, span, 1), 0.0)
    return x


def neighbours(a):
    """Every row's other rows, ordered by (exact distance, index)."""
    n = len(a)
    out = []
    for i in range(n):
        d = ((a - a[i]) ** 2).sum(1)
        order = sorted((d[j], j) for j in range(n) if j != i)
        out.append([j for _, j in order])
    return out


def measures(x, y, orders=(1, 2, 3), method="zscore"):
    a = normalize(x, method)
    y = np.asarray(y)
    n = len(a)
    nb = neighbours(a)
    res = {}
    for r in orders:
        same = [sum(y[j] == y[i] for j in nb[i][:r]) for i in range(n)]
        res[f"hsi:{r}"] = sum(s == r for s in same) / n
        res[f"soft:{r}"] = sum(same) / (n * r)
        res[f"anti:{r}"] = sum(s == 0 for s in same) / n
    res["si"] = res["hsi:1"] if 1 in orders else None
    classes = sorted(set(y.tolist()))
    centers = np.array([a[y == c].mean(0) for c in classes])
    hits = 0
    for i in range(n):
        d = ((centers - a[i]) ** 2).sum(1)
        best = min(range(len(classes)), key=lambda c: (d[c], c))
        hits += classes[best] == y[i]
    res["csi"] = hits / n
    return res


def measures_per_class(x, y, orders=(1,), method="zscore"):
    """{class: {"si", "csi", "hsi:r" for r in orders other than 1}}: each measure over that
    class's samples only (the fraction of them whose nearest neighbour / nearest class mean /
    r nearest neighbours all have their class), by the same brute force as measures()."""
    a = normalize(x, method)
    y = np.asarray(y)
    nb = neighbours(a)
    classes = sorted(set(y.tolist()))
    centers = np.array([a[y == c].mean(0) for c in classes])
    out = {}
    for c in classes:
        members = [i for i in range(len(a)) if y[i] == c]
        row = {}
        for r in orders:
            hits = [all(y[j] == c for j in nb[i][:r]) for i in members]
            row["si" if r == 1 else f"hsi:{r}"] = sum(hits) / len(members)
        near = [
            classes[min(range(len(classes)), key=lambda k: (((centers[k] - a[i]) ** 2).sum(), k))]
            for i in members
        ]
        row["csi"] = sum(n == c for n in near) / len(members)
        out[c] = row
    return out


def knn_accuracy(x, y, k, method="zscore"):
    """Leave-one-out k-NN accuracy: majority vote, a label tie goes to the tied label met
    first in (distance, index) order. Returns (accuracy, {class: accuracy})."""
    a = normalize(x, method)
    y = np.asarray(y)
    nb = neighbours(a)
    hit = []
    for i in range(len(a)):
        near = [y[j] for j in nb[i][:k]]
        votes = {lab: near.count(lab) for lab in near}
        best = max(votes.values())
        pred = next(lab for lab in near if votes[lab] == best)
        hit.append(pred == y[i])
    hit = np.array(hit)
    return hit.mean(), {c: hit[y == c].mean() for c in sorted(set(y.tolist()))}


def nc1(x, y, method="zscore"):
    """Papyan et al. NC1 with explicit D x D matrices and numpy's pinv; per class too."""
    h = normalize(x, method)
    y = np.asarray(y)
    classes = sorted(set(y.tolist()))
    n, d = h.shape
    mu_g = h.mean(0)
    mus = {c: h[y == c].mean(0) for c in classes}
    sigma_b = sum(np.outer(mus[c] - mu_g, mus[c] - mu_g) for c in classes) / len(classes)
    pinv = np.linalg.pinv(sigma_b, hermitian=True)
    per = {}
    sigma_w = np.zeros((d, d))
    for c in classes:
        r = h[y == c] - mus[c]
        cov = r.T @ r
        sigma_w += cov
        per[c] = np.trace(cov / len(r) @ pinv) / len(classes)
    return np.trace(sigma_w / n @ pinv) / len(classes), per


def ridge_classifier(x, y, x_test, alpha=1.0, method="zscore"):
    """Ridge classifier with intercept, +-1 one-vs-all targets, in the primal, float64.

    Features are scaled with the training split's statistics (as dnnlab's normalization);
    returns the predicted test labels."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    x_test = np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1)
    if method == "zscore":
        std = x.std(0, ddof=1)
        scale = np.where(x.max(0) > x.min(0), 1 / (std + 1e-10), 0.0)
    elif method == "minmax":
        span = x.max(0) - x.min(0)
        scale = np.where(span > 0, 1 / np.where(span > 0, span, 1), 0.0)
    else:
        scale = np.ones(x.shape[1])
    y = np.asarray(y)
    classes = np.unique(y)
    t = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    mu = x.mean(0)
    z = (x - mu) * scale
    w = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (t - t.mean(0)))
    scores = ((x_test - mu) * scale) @ w + t.mean(0)
    return classes[scores.argmax(1)], w


def linear_cka(x, y):
    """Feature-space form: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def unbiased_cka(x, y):
    """Song et al.'s unbiased HSIC on the raw (uncentered) linear kernels, loops included."""

    def hsic(k, l):
        n = len(k)
        k = k.copy()
        l = l.copy()
        np.fill_diagonal(k, 0)
        np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (
            np.trace(k @ l)
            + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)
        ) / (n * (n - 3))

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    kx, ky = x @ x.T, y @ y.T
    return hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky))
