using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="StochasticLanczosQuadrature"/>. Defaults are Ghorbani, Krishnan, Xiao (2019): 10 runs × 80 steps
/// (PyHessian uses 1 run × 100 steps). σ² = <see cref="Sigma2"/> · max(1, λmax − λmin), a 10,000-point grid (docs/design.md §4).
/// </summary>
public sealed record SpectralDensityOptions
{
    /// <summary>Lanczos runs n_v, each from its own random start vector. Default 10.</summary>
    public int Runs { get; init; } = 10;

    /// <summary>Lanczos steps m per run (one product each). Default 80.</summary>
    public int Steps { get; init; } = 80;

    /// <summary>Broadening σ₀² relative to the spectrum's width. Default 1e-5.</summary>
    public double Sigma2 { get; init; } = 1e-5;

    /// <summary>Points of the density's grid. Default 10,000.</summary>
    public int GridPoints { get; init; } = 10_000;

    /// <summary>Seed of the start vectors.</summary>
    public long Seed { get; init; }

    /// <summary>Advance all runs together, one block product per step (shared forward passes). False: one run after another, single products. Default true.</summary>
    public bool BlockProducts { get; init; } = true;

    /// <summary>
    /// How each run's Lanczos basis is kept orthogonal. Default <see cref="DensityReorthogonalization.Semiorthogonal"/>,
    /// which gives the tridiagonal matrices of <see cref="DensityReorthogonalization.Full"/> to the accuracy of the
    /// products (nodes within 1.3e-6·λmax on a float32 network Hessian) while skipping the subtraction pass on about half
    /// of the steps; the pass that measures the overlaps stays, so the basis is read about ¾ as often. The runs advance
    /// together and skip together, so the saving shrinks as Runs grows.
    /// </summary>
    public DensityReorthogonalization Reorthogonalization { get; init; } = DensityReorthogonalization.Semiorthogonal;
}

/// <summary>How stochastic Lanczos quadrature keeps each run's basis orthogonal.</summary>
public enum DensityReorthogonalization
{
    /// <summary>
    /// Every step measures the new vector's overlaps with the whole basis (one pass) and removes them (a second pass, and
    /// a third when the DGKS criterion asks) only when the largest exceeds √u of the basis' dtype relative to the vector's
    /// norm. The basis stays semiorthogonal (|q_iᵀq_j| ≤ √u up to O(u)), which is enough for the tridiagonal matrix to be the
    /// operator's projection onto the Krylov space to working accuracy (Simon 1984, "The Lanczos algorithm with partial
    /// reorthogonalization", Math. Comp. 42): the same quadrature nodes and weights as full reorthogonalization. The loss is
    /// measured rather than predicted by Simon's ω-recurrence, which for a Hessian's small β (far below λmax) either
    /// reorthogonalized nearly every step or let the loss pass √u in float32 (docs/benchmarks.md, session 9).
    /// </summary>
    Semiorthogonal,

    /// <summary>
    /// Every step removes the new vector's components along the whole basis (classical Gram-Schmidt with the DGKS
    /// criterion), as PyHessian does; except the last step, whose vector is never used (in both schemes).
    /// </summary>
    Full,
}

/// <summary>
/// Stochastic Lanczos quadrature (Lin, Saad, Yang 2016, "Approximating spectral densities of large matrices"; Ghorbani,
/// Krishnan, Xiao 2019, "An investigation into neural net optimization via Hessian eigenvalue density"): each run is
/// Lanczos from a normalized Rademacher vector, its basis kept semiorthogonal or fully orthogonal
/// (<see cref="SpectralDensityOptions.Reorthogonalization"/>, <see cref="Reorthogonalization"/>), with
/// float64 α, β; the Ritz values of its tridiagonal T are Gauss quadrature nodes and the squared first components of T's
/// eigenvectors their weights; the density is their Gaussian-broadened average, normalized to unit area.
/// </summary>
public static class StochasticLanczosQuadrature
{
    /// <summary>The spectral density of a symmetric operator, with Runs × Steps products.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="SpectralDensityOptions"/>).</exception>
    public static SpectralDensity Estimate(ICurvatureOperator op, SpectralDensityOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new SpectralDensityOptions();
        Check.AtLeast(o.Runs, 1, nameof(o.Runs));
        Check.AtLeast(o.Steps, 2, nameof(o.Steps));
        Check.AtLeast(o.GridPoints, 10, nameof(o.GridPoints));
        Check.PositiveFinite(o.Sigma2, nameof(o.Sigma2));
        if (!Enum.IsDefined(o.Reorthogonalization)) throw Check.OutOfRange(nameof(o.Reorthogonalization), o.Reorthogonalization, "must be Semiorthogonal or Full");
        // All runs' Lanczos bases [runs, steps, n] are kept for their Gram-Schmidt passes.
        MachineLimits.EnsureMemory((double)o.Runs * Math.Min(o.Steps, op.Size) * op.Size * op.DType.ElementSize() + 4.0 * o.Runs * op.Size * sizeof(double),
            $"density with {o.Runs} runs × {o.Steps} steps on {op.Size} parameters");
        var sw = Stopwatch.StartNew();
        int m = (int)Math.Min(o.Steps, op.Size);
        var budget = new ProductBudget(op, (long)o.Runs * m, "density (SLQ)");
        var gen = new Generator((ulong)o.Seed);
        var starts = SpectrumMath.Rademacher(o.Runs, op.Size, gen, ScalarType.Float64) / Math.Sqrt(op.Size);
        var tri = new List<(double[] Alpha, double[] Beta)>();
        if (o.BlockProducts) tri.AddRange(LanczosLockstep(op, budget, starts, m, o, progress, ct).Tridiagonals);
        else
            for (int r = 0; r < o.Runs; r++)
                tri.AddRange(LanczosLockstep(op, budget, starts.narrow(0, r, 1), m, o, progress, ct).Tridiagonals);
        var nodes = new double[o.Runs][];
        var weights = new double[o.Runs][];
        for (int r = 0; r < o.Runs; r++) (nodes[r], weights[r]) = GaussQuadrature(tri[r].Alpha, tri[r].Beta);
        var (grid, density, sigma2) = Broaden(nodes, weights, o.Sigma2, o.GridPoints);
        var firsts = nodes.Select((nd, r) => nd.Select((t, i) => t * weights[r][i]).Sum() * op.Size).ToList();
        var seconds = nodes.Select((nd, r) => nd.Select((t, i) => t * t * weights[r][i]).Sum()).ToList();
        var (tr, trSe) = Statistics.MeanAndStandardError(firsts);
        var (m2, m2Se) = Statistics.MeanAndStandardError(seconds);
        return new SpectralDensity
        {
            Nodes = nodes, Weights = weights, Grid = grid, Density = density, Sigma2 = sigma2, Runs = o.Runs, Steps = m,
            Products = budget.Used, Seconds = sw.Elapsed.TotalSeconds,
            Trace = tr, TraceStandardError = trSe, SecondMoment = m2, SecondMomentStandardError = m2Se,
        };
    }

    /// <summary>
    /// Gauss quadrature of a Lanczos run (Golub and Welsch 1969): the eigenvalues of the tridiagonal T with diagonal α and
    /// off-diagonal β are the nodes, the squared first components of its unit eigenvectors the weights (summing to 1).
    /// </summary>
    internal static (double[] Nodes, double[] Weights) GaussQuadrature(double[] alpha, double[] beta)
    {
        int k = alpha.Length;
        var t = new double[k, k];
        for (int i = 0; i < k; i++)
        {
            t[i, i] = alpha[i];
            if (i + 1 < k) { t[i, i + 1] = beta[i]; t[i + 1, i] = beta[i]; }
        }
        var (theta, s) = SpectrumMath.SymmetricEigen(t);
        return (theta, Enumerable.Range(0, k).Select(i => s[0, i] * s[0, i]).ToArray());
    }

    /// <summary>
    /// Gaussian broadening: φ(t) = (1/R) Σ_r Σ_i w_ri N(t; θ_ri, σ²) with σ² = σ₀² · max(1, λmax − λmin), on a grid from
    /// λmin − pad to λmax + pad, pad = 0.01 (λmax − λmin) + 5σ, normalized to unit area by the trapezoid rule.
    /// </summary>
    /// <param name="nodes">Quadrature nodes of each run.</param>
    /// <param name="weights">Their weights.</param>
    /// <param name="sigma0Sq">σ₀², relative to the width of the spectrum.</param>
    /// <param name="points">Grid points.</param>
    public static (double[] Grid, double[] Density, double Sigma2) Broaden(double[][] nodes, double[][] weights, double sigma0Sq, int points)
    {
        using var scope = NewDisposeScope();
        double lmax = nodes.SelectMany(x => x).Max(), lmin = nodes.SelectMany(x => x).Min();
        double sigma2 = sigma0Sq * Math.Max(1, lmax - lmin);
        double pad = 0.01 * (lmax - lmin) + 5 * Math.Sqrt(sigma2);
        var grid = linspace(lmin - pad, lmax + pad, points, dtype: ScalarType.Float64);
        var th = Data.OwnedTensor.From(nodes.SelectMany(x => x).ToArray());
        var w = Data.OwnedTensor.From(weights.SelectMany(x => x).ToArray()) / nodes.Length;
        var diff = grid.unsqueeze(1) - th.unsqueeze(0);
        var dens = (exp(-diff * diff / (2 * sigma2)) / Math.Sqrt(2 * Math.PI * sigma2)).matmul(w);
        var g = grid.data<double>().ToArray();
        var d = dens.data<double>().ToArray();
        double area = 0;
        for (int i = 1; i < g.Length; i++) area += 0.5 * (d[i] + d[i - 1]) * (g[i] - g[i - 1]);
        for (int i = 0; i < d.Length; i++) d[i] /= area;
        return (g, d, sigma2);
    }

    /// <summary>The runs' tridiagonal matrices (α, β); the steps whose subtraction pass was skipped (semiorthogonal); and,
    /// when asked for, the largest |q_iᵀq_j − δ_ij| of the runs' final bases (for tests).</summary>
    internal readonly record struct LockstepRuns(List<(double[] Alpha, double[] Beta)> Tridiagonals, int SkippedSubtractions, double OrthogonalityDefect);

    /// <summary>
    /// Independent single-vector Lanczos runs from the given start rows, advanced together with one block product per step
    /// (not block Lanczos: each run keeps its own Krylov space, as the quadrature needs independent runs).
    /// </summary>
    internal static LockstepRuns LanczosLockstep(ICurvatureOperator op, ProductBudget budget, Tensor startRows, int m, SpectralDensityOptions o,
        IProgress<EstimatorProgress>? progress, CancellationToken ct, bool measureOrthogonality = false)
    {
        int r = (int)startRows.shape[0];
        long n = op.Size;
        // Basis [r, m, n] in the operator's dtype (the products are no more accurate than that; halves the memory traffic of
        // reorthogonalization for float32 models); α, β and T in float64.
        var basisType = op.DType;
        using var basis = empty([r, m, n], dtype: basisType, device: op.Device); // rows are written before they are read
        var alpha = new double[r][];
        var beta = new double[r][];
        var length = Enumerable.Repeat(m, r).ToArray();
        for (int i = 0; i < r; i++) { alpha[i] = new double[m]; beta[i] = new double[m]; }
        basis[.., 0, ..] = (startRows / startRows.norm(1, keepdim: true)).to(basisType).to(op.Device);
        double normEst = 0;
        // Semiorthogonality: overlaps up to √u of the basis' dtype (relative to the new vector's norm) may stay.
        double semi = Math.Sqrt(Lanczos.UnitRoundoff(basisType));
        int skipped = 0;
        // The previous step's vectors in float64 and its β as a column [r, 1], kept across steps (not re-read from the basis).
        Tensor? previous = null, previousBeta = null;
        try
        {
            for (int j = 0; j < m; j++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var Q = basis.select(1, j);                                        // [r, n], the basis' dtype
                var P = budget.Apply(Q.t()).t();                                  // [r, n] float64
                var V = Q.to(ScalarType.Float64);
                // α and the three-term recurrence as multiply-adds: the first makes W, a tensor of this step's own (the
                // product may be the operator's, or share memory with the basis row it was given), the second updates it.
                var a = linalg.vecdot(P, V).unsqueeze(1);                         // [r, 1]
                var W = addcmul(P, a, V, -1);
                if (previous is not null) W.addcmul_(previousBeta!, previous, -1);
                // A run that found an invariant subspace has ended: its rows go on as zeros (zero products, no overlaps), so that
                // they never ask the others for a Gram-Schmidt pass.
                if (length.Any(l => l <= j))
                    W.mul_(Data.OwnedTensor.From(length.Select(l => l > j ? 1.0 : 0.0).ToArray()).to(op.Device).unsqueeze(1));
                // Each run against its own basis: one batched Gram-Schmidt pass per call (a matrix-vector product for one run).
                var Vs = basis.narrow(1, 0, j + 1);                                // [r, j+1, n]
                Tensor Overlaps(Tensor x) => r == 1 ? Vs[0].matmul(x.to(basisType).t()).unsqueeze(0) : Vs.bmm(x.unsqueeze(2).to(basisType));
                Tensor Subtract(Tensor x, Tensor overlaps) =>
                    x.sub_(r == 1 ? overlaps[0].t().matmul(Vs[0]).to(ScalarType.Float64) : overlaps.transpose(1, 2).bmm(Vs).squeeze(1).to(ScalarType.Float64));
                Tensor Pass(Tensor x) => Subtract(x, Overlaps(x));
                Tensor rest, norms;
                // The last step's vector and β are never used (T is m × m): no pass over the basis.
                if (j + 1 == m) (rest, norms) = (W, W.norm(1));
                else if (o.Reorthogonalization == DensityReorthogonalization.Full) (rest, norms) = Reorthogonalization.Dgks(W, Pass);
                else
                {
                    // The overlaps with the basis (one pass); all runs advance together, so the subtraction is skipped only
                    // when every run's largest overlap is within √u.
                    var overlaps = Overlaps(W);                                    // [r, j+1, 1]
                    var before = W.norm(1);
                    double worst = (overlaps.abs().amax([1, 2]).to(ScalarType.Float64) / before.clamp_min(1e-300)).max().ToDouble();
                    if (worst <= semi)
                    {
                        (rest, norms) = (W, before);
                        skipped++;
                    }
                    else (rest, norms) = Reorthogonalization.Dgks(Subtract(W, overlaps), Pass, before);
                }
                var av = a.cpu().data<double>().ToArray();
                var bv = norms.cpu().data<double>().ToArray();
                for (int i = 0; i < r; i++)
                {
                    if (j >= length[i]) continue;
                    alpha[i][j] = av[i];
                    beta[i][j] = bv[i];
                    normEst = Math.Max(normEst, Math.Abs(av[i]) + bv[i]);
                }
                if (j + 1 < m)
                {
                    for (int i = 0; i < r; i++)
                        if (j + 1 < length[i] && bv[i] <= 1e-10 * normEst) length[i] = j + 1; // invariant subspace: the run is exact
                    var column = norms.unsqueeze(1);
                    basis.select(1, j + 1).copy_(rest.div_(column.clamp_min(1e-300))); // rounded to the basis' dtype by the copy
                    previous?.Dispose();
                    previousBeta?.Dispose();
                    (previous, previousBeta) = (V.DetachFromDisposeScope(), column.DetachFromDisposeScope());
                }
                progress?.Report(new EstimatorProgress("density", budget.Used, budget.Max, null));
            }
        }
        finally
        {
            previous?.Dispose();
            previousBeta?.Dispose();
        }
        double defect = 0;
        if (measureOrthogonality)
            for (int i = 0; i < r; i++)
            {
                using var scope = NewDisposeScope();
                var q = basis[i].narrow(0, 0, length[i]).to(ScalarType.Float64);
                defect = Math.Max(defect, (q.matmul(q.t()) - eye(length[i], dtype: ScalarType.Float64, device: q.device)).abs().max().ToDouble());
            }
        return new LockstepRuns(Enumerable.Range(0, r).Select(i => (alpha[i][..length[i]], beta[i][..Math.Max(0, length[i] - 1)])).ToList(), skipped, defect);
    }
}
