"""How well XTrace's error estimate covers the true trace, and a delete-one jackknife of the whole estimator beside it.

Research script for docs/benchmarks.md (session 9); NumPy only, not used by Valley. XTraceTests' three spectra (n = 200),
s = 20 Gaussian test vectors, one fixed random orthogonal basis per spectrum. For every seed: XTrace's estimate (the
improved estimator of Epperly, Tropp & Webber 2024, as Valley computes it), its published error (the standard error of
the exchangeable t_i), and the jackknife error sqrt((s-1)/s * sum_j (T_(-j) - mean T_(-j))^2), where T_(-j) is XTrace on
the s-1 test vectors without omega_j. Every t_i of T_(-j) needs the sketch without omega_i and omega_j: with the
normalized columns g of R^-T, the projector onto that sketch is Q (I - G_ij (G_ij^T G_ij)^-1 G_ij^T) Q^T, so all of them
come from s x s products computed once (O(s^3)) and 2 x 2 algebra per pair (O(s^2)).

    python3 bench/xtrace_error_study.py [seeds=300] [s=20]
"""
import sys
import numpy as np


def xtrace(A, Om):
    n, s = Om.shape
    Y = A @ Om
    Q, R = np.linalg.qr(Y)
    H = Q.T @ (A @ Q)
    H = (H + H.T) / 2
    W = Q.T @ Om
    quad = np.einsum('ij,ij->j', Om, Y)
    nrm2 = np.einsum('ij,ij->j', Om, Om)
    trH = np.trace(H)
    G = np.linalg.inv(R).T
    G = G / np.linalg.norm(G, axis=0, keepdims=True)
    # Leave-one-out t_i (the published estimate).
    c = np.einsum('ij,ij->j', G, W)
    V = W - G * c
    t = trH - np.einsum('ij,ij->j', G, H @ G) + (n - s + 1) / (nrm2 - np.einsum('ij,ij->j', W, W) + c * c) * (
        quad - 2 * np.einsum('ij,ij->j', R, V) + np.einsum('ij,ij->j', V, H @ V))
    est, se = t.mean(), t.std(ddof=1) / np.sqrt(s)
    # Leave-two-out, for the jackknife.
    GtG, K, P, PH, PR = G.T @ G, G.T @ H @ G, G.T @ W, G.T @ H @ W, G.T @ R
    wHw = np.einsum('ij,ij->j', W, H @ W)
    rw = np.einsum('ij,ij->j', R, W)
    ww = np.einsum('ij,ij->j', W, W)
    T = np.zeros(s)
    for j in range(s):
        total = 0.0
        for i in range(s):
            if i == j:
                continue
            ij = [i, j]
            Gi = np.linalg.inv(GtG[np.ix_(ij, ij)])
            Kij = K[np.ix_(ij, ij)]
            p = P[ij, i]
            z = Gi @ p
            vHv = wHw[i] - 2 * z @ PH[ij, i] + z @ Kij @ z
            rv = rw[i] - z @ PR[ij, i]
            u2 = nrm2[i] - ww[i] + p @ z
            total += trH - np.trace(Gi @ Kij) + (n - s + 2) / u2 * (quad[i] - 2 * rv + vHv)
        T[j] = total / (s - 1)
    sej = np.sqrt((s - 1) / s * ((T - T.mean()) ** 2).sum())
    return est, se, sej, T


def main():
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    s = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    N = 200
    spectra = {
        'flat': np.array([1.0 + (i % 10) * 0.1 for i in range(N)]),
        'decaying': np.array([100.0 * (i + 1) ** -1.5 for i in range(N)]),
        'indefinite': np.array([(-1.0 if i % 3 == 0 else 1.0) * (1 + 10.0 * np.exp(-i / 20.0)) for i in range(N)]),
    }
    basis_rng = np.random.default_rng(2)
    for name, lam in spectra.items():
        U, _ = np.linalg.qr(basis_rng.standard_normal((N, N)))
        A = (U * lam) @ U.T
        A = (A + A.T) / 2
        if name == 'flat':
            # The leave-two-out algebra against recomputing XTrace without omega_0.
            Om = np.random.default_rng(99).standard_normal((N, s))
            T0 = xtrace(A, Om)[3][0]
            again = xtrace(A, Om[:, 1:])[0]
            assert abs(T0 - again) <= 1e-10 * abs(again), (T0, again)
        r = np.array([xtrace(A, np.random.default_rng(1000 + seed).standard_normal((N, s)))[:3] for seed in range(seeds)])
        err = r[:, 0] - lam.sum()
        print(f"{name}: true sd of the estimate {err.std():.4g}; mean published error {r[:, 1].mean():.4g}, mean jackknife error {r[:, 2].mean():.4g}")
        for label, e in [('published', r[:, 1]), ('jackknife', r[:, 2])]:
            z = err / e
            print(f"    {label:9s}: within 2 errors {np.mean(np.abs(z) <= 2):.3f}, mean z^2 {np.mean(z * z):.2f}")


if __name__ == '__main__':
    main()
