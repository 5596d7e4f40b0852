using System.Diagnostics;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="StochasticLanczosQuadrature"/>. Defaults are Ghorbani, Krishnan, Xiao (2019): 10 runs × 80 steps
/// (PyHessian uses 1 run × 100 steps). σ² = <see cref="Sigma2"/> · max(1, λmax − λmin), a 10,000-point grid (DESIGN.md §4).
/// </summary>
public sealed record SpectralDensityOptions
{
    public int Runs { get; init; } = 10;
    public int Steps { get; init; } = 80;
    public double Sigma2 { get; init; } = 1e-5;
    public int GridPoints { get; init; } = 10_000;
    public long Seed { get; init; }
    /// <summary>Advance all runs together, one block product per step (shared forward passes). False: one run after another, single products.</summary>
    public bool BlockProducts { get; init; } = true;
    public IProgress<EstimatorProgress>? Progress { get; init; }
    public CancellationToken Cancellation { get; init; }
}

/// <summary>An estimate of the eigenvalue density φ(t) = (1/n) Σ δ(t − λᵢ) by stochastic Lanczos quadrature.</summary>
public sealed record SpectralDensity
{
    /// <summary>Quadrature nodes (Ritz values) of each run.</summary>
    public required double[][] Nodes { get; init; }
    /// <summary>Quadrature weights (squared first components of T's eigenvectors) of each run; each run's weights sum to 1.</summary>
    public required double[][] Weights { get; init; }
    [JsonIgnore] public double[] Grid { get; init; } = [];
    [JsonIgnore] public double[] Density { get; init; } = [];
    public required double Sigma2 { get; init; }
    public required int Runs { get; init; }
    public required int Steps { get; init; }
    public required long Products { get; init; }
    public required double Seconds { get; init; }
    /// <summary>Largest and smallest Ritz values over all runs (λmax and λmin estimates; extreme Ritz values converge first).</summary>
    public double LambdaMax => Nodes.SelectMany(x => x).Max();
    public double LambdaMin => Nodes.SelectMany(x => x).Min();
    /// <summary>
    /// Estimated fraction of clearly negative eigenvalues: quadrature weight of nodes below −10⁻³·max|θ|. The threshold keeps
    /// the bulk of eigenvalues at zero, whose nodes land on either side of 0 by rounding, from counting as negative.
    /// </summary>
    public double NegativeMass => MassBelow(-1e-3 * Nodes.SelectMany(x => x).Max(Math.Abs));

    /// <summary>Quadrature weight of all nodes below zero (includes the rounding of the bulk at zero).</summary>
    public double NegativeMassRaw => MassBelow(0);

    double MassBelow(double threshold) => Nodes.Select((nodes, r) => nodes.Select((t, i) => t < threshold ? Weights[r][i] : 0).Sum()).Average();
    /// <summary>Estimated trace n·E[Σ wᵢθᵢ] from the first moment of each run, and its standard error over runs.</summary>
    public required double Trace { get; init; }
    public required double TraceStandardError { get; init; }
    /// <summary>Second moment (1/n) tr(A²) estimate and its standard error over runs.</summary>
    public required double SecondMoment { get; init; }
    public required double SecondMomentStandardError { get; init; }

    /// <summary>∫ φ(t) t^p dt of the broadened density on its grid (trapezoid rule); a check of the grid and normalization.</summary>
    public double GridMoment(int p)
    {
        double s = 0;
        for (int i = 1; i < Grid.Length; i++)
            s += 0.5 * (Density[i] * Math.Pow(Grid[i], p) + Density[i - 1] * Math.Pow(Grid[i - 1], p)) * (Grid[i] - Grid[i - 1]);
        return s;
    }
}

/// <summary>
/// Stochastic Lanczos quadrature (Lin, Saad, Yang 2016; Ghorbani et al. 2019): each run starts Lanczos (full
/// reorthogonalization, float64 bookkeeping) from a normalized Rademacher vector; the Ritz values are quadrature nodes and the
/// squared first components of T's eigenvectors their weights; the density is their Gaussian-broadened average, normalized to unit area.
/// </summary>
public static class StochasticLanczosQuadrature
{
    public static SpectralDensity Estimate(ICurvatureOperator op, SpectralDensityOptions? options = null)
    {
        var o = options ?? new SpectralDensityOptions();
        if (o.Runs < 1) throw new ValleyException($"density: runs must be at least 1, got {o.Runs}");
        if (o.Steps < 2) throw new ValleyException($"density: steps must be at least 2, got {o.Steps}");
        if (o.GridPoints < 10) throw new ValleyException($"density: grid points must be at least 10, got {o.GridPoints}");
        if (!(o.Sigma2 > 0)) throw new ValleyException($"density: σ² must be positive, got {o.Sigma2}");
        // All runs' Lanczos bases [runs, steps, n] are kept for full reorthogonalization.
        MachineLimits.EnsureMemory((double)o.Runs * Math.Min(o.Steps, op.Size) * op.Size * op.DType.ElementSize() + 4.0 * o.Runs * op.Size * sizeof(double),
            $"density with {o.Runs} runs × {o.Steps} steps on {op.Size} parameters");
        var sw = Stopwatch.StartNew();
        long start = op.Products;
        int m = (int)Math.Min(o.Steps, op.Size);
        var gen = new Generator((ulong)o.Seed);
        var starts = SpectrumMath.Rademacher(o.Runs, op.Size, gen, ScalarType.Float64) / Math.Sqrt(op.Size);
        var tri = new List<(double[] Alpha, double[] Beta)>();
        if (o.BlockProducts) tri.AddRange(LanczosLockstep(op, starts, m, o, start));
        else
            for (int r = 0; r < o.Runs; r++)
                tri.AddRange(LanczosLockstep(op, starts.narrow(0, r, 1), m, o, start));
        var nodes = new double[o.Runs][];
        var weights = new double[o.Runs][];
        for (int r = 0; r < o.Runs; r++)
        {
            var (alpha, beta) = tri[r];
            int k = alpha.Length;
            var t = new double[k, k];
            for (int i = 0; i < k; i++)
            {
                t[i, i] = alpha[i];
                if (i + 1 < k) { t[i, i + 1] = beta[i]; t[i + 1, i] = beta[i]; }
            }
            var (theta, s) = SpectrumMath.SymmetricEigen(t);
            nodes[r] = theta;
            weights[r] = Enumerable.Range(0, k).Select(i => s[0, i] * s[0, i]).ToArray();
        }
        var (grid, density, sigma2) = Broaden(nodes, weights, o.Sigma2, o.GridPoints);
        var firsts = nodes.Select((nd, r) => nd.Select((t, i) => t * weights[r][i]).Sum() * op.Size).ToList();
        var seconds = nodes.Select((nd, r) => nd.Select((t, i) => t * t * weights[r][i]).Sum()).ToList();
        var (tr, trSe) = Hutchinson.MeanAndError(firsts);
        var (m2, m2Se) = Hutchinson.MeanAndError(seconds);
        return new SpectralDensity
        {
            Nodes = nodes, Weights = weights, Grid = grid, Density = density, Sigma2 = sigma2, Runs = o.Runs, Steps = m,
            Products = op.Products - start, Seconds = sw.Elapsed.TotalSeconds,
            Trace = tr, TraceStandardError = o.Runs > 1 ? trSe : double.NaN, SecondMoment = m2, SecondMomentStandardError = o.Runs > 1 ? m2Se : double.NaN,
        };
    }

    /// <summary>
    /// Gaussian broadening: φ(t) = (1/R) Σ_r Σ_i w_ri N(t; θ_ri, σ²) with σ² = σ₀² · max(1, λmax − λmin), on a grid from
    /// λmin − pad to λmax + pad, pad = 0.01 (λmax − λmin) + 5σ, normalized to unit area by the trapezoid rule.
    /// </summary>
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

    /// <summary>Lanczos runs from the given start rows, advanced together with one block product per step.</summary>
    static List<(double[] Alpha, double[] Beta)> LanczosLockstep(ICurvatureOperator op, Tensor startRows, int m, SpectralDensityOptions o, long globalStart)
    {
        int r = (int)startRows.shape[0];
        long n = op.Size;
        // Basis [r, m, n] in the operator's dtype (the products are no more accurate than that; halves the memory traffic of
        // reorthogonalization for float32 models); α, β and T in float64.
        var basisType = op.DType;
        using var basis = zeros([r, m, n], dtype: basisType, device: op.Device);
        var alpha = new double[r][];
        var beta = new double[r][];
        var length = Enumerable.Repeat(m, r).ToArray();
        for (int i = 0; i < r; i++) { alpha[i] = new double[m]; beta[i] = new double[m]; }
        basis[.., 0, ..] = (startRows / startRows.norm(1, keepdim: true)).to(basisType).to(op.Device);
        double normEst = 0;
        for (int j = 0; j < m; j++)
        {
            o.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var V = basis[.., j, ..].to(ScalarType.Float64);                      // [r, n]
            var W = SpectrumMath.Apply(op, V.t(), "density (SLQ)").t();  // [r, n]
            var a = (W * V).sum(1);
            W = W - a.unsqueeze(1) * V;
            if (j > 0) W = W - Data.OwnedTensor.From(beta.Select(b => b[j - 1]).ToArray()).to(op.Device).unsqueeze(1) * basis[.., j - 1, ..].to(ScalarType.Float64);
            var Vs = basis.narrow(1, 0, j + 1);                                    // [r, j+1, n]
            // Full reorthogonalization, classical Gram-Schmidt with the DGKS criterion: a second pass only when the
            // first removed most of the vector (‖w‖ fell below 1/√2 of its size), which is when rounding can leave a component.
            var b = W.norm(1);
            for (int pass = 0; pass < 2; pass++)
            {
                var c = Vs.bmm(W.unsqueeze(2).to(basisType));                       // [r, j+1, 1]
                W = W - c.transpose(1, 2).bmm(Vs).squeeze(1).to(ScalarType.Float64);
                var after = W.norm(1);
                bool again = (after < b * 0.7071).any().ToBoolean();
                b = after;
                if (!again) break;
            }
            var av = a.cpu().data<double>().ToArray();
            var bv = b.cpu().data<double>().ToArray();
            for (int i = 0; i < r; i++)
            {
                if (j >= length[i]) continue;
                alpha[i][j] = av[i];
                beta[i][j] = bv[i];
                normEst = Math.Max(normEst, Math.Abs(av[i]) + bv[i]);
            }
            if (j + 1 < m)
            {
                var next = W / b.clamp_min(1e-300).unsqueeze(1);
                for (int i = 0; i < r; i++)
                    if (j + 1 < length[i] && bv[i] <= 1e-10 * normEst) length[i] = j + 1; // invariant subspace: the run is exact
                basis[.., j + 1, ..] = next.to(basisType);
            }
            o.Progress?.Report(new EstimatorProgress("density", op.Products - globalStart, (long)o.Runs * m, null));
        }
        return Enumerable.Range(0, r).Select(i => (alpha[i][..length[i]], beta[i][..Math.Max(0, length[i] - 1)])).ToList();
    }
}
