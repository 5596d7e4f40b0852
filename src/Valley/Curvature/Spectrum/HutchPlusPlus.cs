using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="HutchPlusPlus"/>. With <see cref="RelativeStandardError"/> null it is the published fixed-budget
/// algorithm of Meyer, Musco, Musco and Woodruff (2021, Algorithm 1): of m = <see cref="MaxProducts"/> products, m/3 sketch
/// A, m/3 give the exact trace of the low-rank part, and the rest are Hutchinson probes of the remainder. With a target
/// (the default, as <see cref="HutchinsonOptions"/>), the sketch is small and residual probes continue until the standard
/// error reaches the target or the budget runs out.
/// </summary>
public sealed record HutchPlusPlusOptions
{
    /// <summary>
    /// Budget of every product: sketch, low-rank part and residual probes. The sketch always leaves room for at least two
    /// residual probes (a standard error needs two); a budget too small for that gives plain Hutchinson. Default 1000.
    /// </summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>Stop when the standard error ≤ this × |estimate|. Default 0.01. Null: spend the whole budget (the published algorithm).</summary>
    public double? RelativeStandardError { get; init; } = 0.01;

    /// <summary>
    /// Columns s of the random sketch S (AS is sketched with s products, QᵀAQ costs s more). Null (default): MaxProducts/3
    /// without a target, as published; with a target, <see cref="HutchPlusPlus.DefaultSketchSize"/>, at most MaxProducts/3.
    /// </summary>
    public int? SketchSize { get; init; }

    /// <summary>Residual probes before the standard error may stop the estimator. Default 10.</summary>
    public int MinProbes { get; init; } = 10;

    /// <summary>Residual probes applied together as one block product. Default 10.</summary>
    public int BlockSize { get; init; } = 10;

    /// <summary>Seed of the sketch and the probes.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// Hutch++ (Meyer, Musco, Musco, Woodruff 2021, "Hutch++: Optimal Stochastic Trace Estimation", Algorithm 1):
/// tr(A) = tr(QᵀAQ) + tr((I − QQᵀ) A (I − QQᵀ)) with Q an orthonormal basis of A S for a Rademacher sketch S. The first
/// term is computed exactly, the second by Hutchinson's estimator on the projected probes (I − QQᵀ) z, whose variance
/// no longer holds the large eigenvalues the sketch captured. The standard error is that of the residual probes (the
/// low-rank part is exact given Q).
/// </summary>
public static class HutchPlusPlus
{
    /// <summary>
    /// The sketch size with a standard-error target: the Hessian of a classifier has about as many outlier eigenvalues as
    /// classes (Sagun et al. 2017; Papyan 2019), and they dominate Hutchinson's variance 2‖A‖_F²; ten columns take them out
    /// for up to about ten classes for 20 products, and the rest of the budget goes to residual probes.
    /// </summary>
    public const int DefaultSketchSize = 10;

    /// <summary>Estimates tr(A) within the budget: to the relative standard error asked for, or with the whole budget when there is no target.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="HutchPlusPlusOptions"/>).</exception>
    public static TraceEstimate Estimate(ICurvatureOperator op, HutchPlusPlusOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new HutchPlusPlusOptions();
        if (o.RelativeStandardError is { } rse) Check.PositiveFinite(rse, nameof(o.RelativeStandardError));
        Check.AtLeast(o.MaxProducts, 2, nameof(o.MaxProducts));
        if (o.SketchSize is { } requested) Check.AtLeast(requested, 1, nameof(o.SketchSize));
        Check.AtLeast(o.MinProbes, 2, nameof(o.MinProbes));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
        var sw = Stopwatch.StartNew();
        var budget = new ProductBudget(op, o.MaxProducts, "Hutch++");
        var gen = new Generator((ulong)o.Seed);
        long n = op.Size, m = o.MaxProducts;
        int s = SketchSize(o, n);
        if (s < 1)
        {
            // No room for a sketch and two residual probes: Hutchinson with the whole budget.
            var (samples, converged) = Hutchinson.Probe(budget, gen, null, 0, m, o.RelativeStandardError, (int)Math.Min(o.MinProbes, m), o.BlockSize,
                "hutchinson", progress, ct);
            var (mean, se) = Statistics.MeanAndStandardError(samples);
            return new TraceEstimate
            {
                Method = "hutchinson", Trace = mean, StandardError = se, Probes = samples.Count, Products = budget.Used, Converged = converged,
                Seconds = sw.Elapsed.TotalSeconds,
            };
        }
        using var scope = NewDisposeScope();
        // 1. Sketch: Q = orth(A S), S Rademacher [n, s].
        var S = SpectrumMath.Rademacher(s, n, gen, ScalarType.Float64).to(op.Device);
        var (qc, _) = linalg.qr(budget.Apply(S.t()));
        var Q = qc.t().contiguous(); // rows
        // 2. Exact trace of the low-rank part: tr(Qᵀ A Q).
        double low = (Q.t() * budget.Apply(Q.t())).sum().ToDouble();
        progress?.Report(new EstimatorProgress("hutch++ sketch", budget.Used, budget.Max, null));
        if (s >= n)
        {
            // Q spans the whole space: the low-rank part is the trace, exactly.
            return new TraceEstimate
            {
                Method = "hutch++", Trace = low, StandardError = 0, Probes = 0, Products = budget.Used, Converged = true, Seconds = sw.Elapsed.TotalSeconds,
                LowRankTrace = low, SketchSize = s,
            };
        }
        // 3. Hutchinson on (I − QQᵀ) A (I − QQᵀ) with what is left of the budget.
        var (residual, done) = Hutchinson.Probe(budget, gen, Q, low, budget.Left, o.RelativeStandardError, o.MinProbes, o.BlockSize, "hutch++",
            progress, ct);
        var (rest, err) = Statistics.MeanAndStandardError(residual);
        return new TraceEstimate
        {
            Method = "hutch++", Trace = low + rest, StandardError = err, Probes = residual.Count, Products = budget.Used,
            Converged = done, Seconds = sw.Elapsed.TotalSeconds, LowRankTrace = low, SketchSize = s,
        };
    }

    /// <summary>
    /// The sketch size s for a budget m: as asked (by default m/3 without a target, <see cref="DefaultSketchSize"/> with one,
    /// never more than m/3), and small enough that 2s + 2 ≤ m leaves two residual probes, unless s = n fits: that
    /// sketch spans the whole space and needs no probes. Below 1: no sketch fits.
    /// </summary>
    static int SketchSize(HutchPlusPlusOptions o, long n)
    {
        long m = o.MaxProducts;
        long s = o.SketchSize ?? (o.RelativeStandardError is null ? m / 3 : Math.Min(DefaultSketchSize, m / 3));
        s = Math.Min(s, n);
        if (s == n && 2 * n <= m) return (int)n; // a sketch of the whole space: exact, no probes needed
        return (int)Math.Max(0, Math.Min(s, Math.Min(n - 1, (m - 2) / 2)));
    }
}
