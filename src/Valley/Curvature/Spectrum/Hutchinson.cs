using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="Hutchinson"/>. PyHessian stops on the running mean (maxIter 100, tol 1e-3); Valley stops on the
/// standard error, which says how far the estimate may be from the trace.
/// </summary>
public sealed record HutchinsonOptions
{
    /// <summary>Stop when the standard error ≤ this × |estimate|. Default 0.01.</summary>
    public double RelativeStandardError { get; init; } = 0.01;

    /// <summary>Probes before the standard error may stop the estimator (a standard error of few probes is itself noisy). Default 10.</summary>
    public int MinProbes { get; init; } = 10;

    /// <summary>Budget of products, one per probe. Default 1000.</summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>Probes applied together as one block product. Default 10.</summary>
    public int BlockSize { get; init; } = 10;

    /// <summary>Seed of the probes.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// Hutchinson's estimator (Hutchinson 1989, "A stochastic estimator of the trace of the influence matrix for Laplacian
/// smoothing splines"): tr(A) ≈ (1/m) Σ zᵢᵀ A zᵢ with Rademacher probes zᵢ, whose variance 2(‖A‖_F² − Σ A_ii²)/m is the
/// least among i.i.d. probes; the standard error is the sample standard deviation of zᵢᵀ A zᵢ over √m.
/// </summary>
public static class Hutchinson
{
    /// <summary>Estimates tr(A) to the relative standard error asked for, or until the budget runs out.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="HutchinsonOptions"/>).</exception>
    public static TraceEstimate Estimate(ICurvatureOperator op, HutchinsonOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new HutchinsonOptions();
        Check.PositiveFinite(o.RelativeStandardError, nameof(o.RelativeStandardError));
        Check.AtLeast(o.MinProbes, 2, nameof(o.MinProbes));
        Check.AtLeast(o.MaxProducts, o.MinProbes, nameof(o.MaxProducts));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
        var sw = Stopwatch.StartNew();
        var budget = new ProductBudget(op, o.MaxProducts, "Hutchinson");
        var gen = new Generator((ulong)o.Seed);
        var (samples, converged) = Probe(budget, gen, null, 0, o.MaxProducts, o.RelativeStandardError, o.MinProbes, o.BlockSize, "hutchinson", progress, ct);
        var (mean, se) = Statistics.MeanAndStandardError(samples);
        return new TraceEstimate
        {
            Method = "hutchinson", Trace = mean, StandardError = se, Probes = samples.Count, Products = budget.Used, Converged = converged,
            Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// Rademacher probes zᵢᵀ P A P zᵢ (P = I − QQᵀ when <paramref name="q"/> is given, else I) in blocks, up to
    /// <paramref name="maxProbes"/> and the budget; with a <paramref name="target"/>, stops once at least
    /// <paramref name="minProbes"/> probes have a standard error ≤ target × |offset + mean|.
    /// </summary>
    internal static (List<double> Samples, bool Converged) Probe(ProductBudget budget, Generator gen, Tensor? q, double offset, long maxProbes,
        double? target, int minProbes, int blockSize, string stage, IProgress<EstimatorProgress>? progress, CancellationToken ct)
    {
        var samples = new List<double>();
        while (samples.Count < maxProbes && budget.Left > 0)
        {
            ct.ThrowIfCancellationRequested();
            int k = (int)Math.Min(blockSize, Math.Min(maxProbes - samples.Count, budget.Left));
            samples.AddRange(QuadraticForms(budget, SpectrumMath.Rademacher(k, budget.Size, gen, ScalarType.Float64), q));
            var (mean, se) = Statistics.MeanAndStandardError(samples);
            double relative = se / Math.Max(Math.Abs(offset + mean), 1e-300);
            progress?.Report(new EstimatorProgress(stage, budget.Used, budget.Max, double.IsNaN(relative) ? null : relative));
            if (target is { } t && samples.Count >= minProbes && relative <= t) return (samples, true);
        }
        return (samples, target is null);
    }

    /// <summary>zᵢᵀ A zᵢ for probe rows zᵢ (projected by P = I − QQᵀ first when <paramref name="q"/> holds Q's columns as rows), one block product.</summary>
    static double[] QuadraticForms(ProductBudget budget, Tensor probes, Tensor? q)
    {
        using var scope = NewDisposeScope();
        var z = probes.to(budget.Device);
        if (q is not null) z = z - q.matmul(z.t()).t().matmul(q);
        var Az = budget.Apply(z.t()).t();
        return (z * Az).sum(1).cpu().data<double>().ToArray();
    }
}
