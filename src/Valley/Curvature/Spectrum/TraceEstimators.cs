using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>A stochastic trace estimate with its standard error.</summary>
public sealed record TraceEstimate
{
    public required string Method { get; init; }
    public required double Trace { get; init; }
    /// <summary>Standard error of <see cref="Trace"/> (sample standard deviation of the probe values / √probes).</summary>
    public required double StandardError { get; init; }
    public required int Probes { get; init; }
    public required long Products { get; init; }
    public required bool Converged { get; init; }
    public double Seconds { get; init; }
    /// <summary>Hutch++ only: the exactly computed trace of the low-rank part QᵀAQ, and the sketch size.</summary>
    public double? LowRankTrace { get; init; }
    public int? SketchSize { get; init; }
}

/// <summary>Options of <see cref="Hutchinson"/>. PyHessian stops on the running mean (maxIter 100, tol 1e-3); Valley stops on the standard error.</summary>
public sealed record HutchinsonOptions
{
    /// <summary>Stop when SE ≤ this × |mean|.</summary>
    public double RelativeStandardError { get; init; } = 0.01;
    public int MinProbes { get; init; } = 10;
    public long MaxProducts { get; init; } = 1000;
    /// <summary>Probes applied together as one block product.</summary>
    public int BlockSize { get; init; } = 10;
    public long Seed { get; init; }
    public IProgress<EstimatorProgress>? Progress { get; init; }
    public CancellationToken Cancellation { get; init; }
}

/// <summary>Hutchinson's estimator tr(A) ≈ (1/m) Σ zᵢᵀ A zᵢ with Rademacher probes zᵢ (Hutchinson 1989).</summary>
public static class Hutchinson
{
    public static TraceEstimate Estimate(ICurvatureOperator op, HutchinsonOptions? options = null)
    {
        var o = options ?? new HutchinsonOptions();
        Validate(o.RelativeStandardError, o.MinProbes, o.MaxProducts, o.BlockSize);
        var sw = Stopwatch.StartNew();
        long start = op.Products;
        var gen = new Generator((ulong)o.Seed);
        var samples = new List<double>();
        bool converged = false;
        while (samples.Count < o.MaxProducts)
        {
            o.Cancellation.ThrowIfCancellationRequested();
            int k = (int)Math.Min(o.BlockSize, o.MaxProducts - samples.Count);
            samples.AddRange(QuadraticForms(op, SpectrumMath.Rademacher(k, op.Size, gen, ScalarType.Float64), null));
            var (mean, se) = MeanAndError(samples);
            o.Progress?.Report(new EstimatorProgress("hutchinson", op.Products - start, o.MaxProducts, se / Math.Max(Math.Abs(mean), 1e-300)));
            if (samples.Count >= o.MinProbes && se <= o.RelativeStandardError * Math.Abs(mean)) { converged = true; break; }
        }
        var (m, s) = MeanAndError(samples);
        return new TraceEstimate { Method = "hutchinson", Trace = m, StandardError = s, Probes = samples.Count, Products = op.Products - start, Converged = converged, Seconds = sw.Elapsed.TotalSeconds };
    }

    /// <summary>zᵢᵀ A zᵢ for probe rows zᵢ (optionally projected by P = I − QQᵀ first), one block product.</summary>
    internal static double[] QuadraticForms(ICurvatureOperator op, Tensor probes, Tensor? q)
    {
        using var scope = NewDisposeScope();
        var z = probes.to(op.Device);
        if (q is not null) z = z - q.matmul(z.t()).t().matmul(q);
        var Az = SpectrumMath.Apply(op, z.t(), "trace").t();
        return (z * Az).sum(1).cpu().data<double>().ToArray();
    }

    internal static (double Mean, double StandardError) MeanAndError(IReadOnlyList<double> x)
    {
        double mean = x.Average();
        if (x.Count < 2) return (mean, double.PositiveInfinity);
        double var = x.Sum(v => (v - mean) * (v - mean)) / (x.Count - 1);
        return (mean, Math.Sqrt(var / x.Count));
    }

    internal static void Validate(double rse, int minProbes, long maxProducts, int block)
    {
        if (!(rse > 0) || !double.IsFinite(rse)) throw new ValleyException($"trace: relative standard error target must be positive, got {rse}");
        if (minProbes < 2) throw new ValleyException($"trace: at least 2 probes are needed for a standard error, got {minProbes}");
        if (maxProducts < minProbes) throw new ValleyException($"trace: max products {maxProducts} is below the minimum of {minProbes} probes");
        if (block < 1) throw new ValleyException($"trace: block size must be at least 1, got {block}");
    }
}

/// <summary>
/// Options of <see cref="HutchPlusPlus"/> (Meyer, Musco, Musco, Woodruff 2021). With <see cref="RelativeStandardError"/> null
/// the published fixed-budget algorithm runs with exactly <see cref="Products"/> products (m, divisible by 3): m/3 to sketch,
/// m/3 for the exact trace of the low-rank part, m/3 Hutchinson probes on the rest. With a target, the sketch has m/3 columns
/// and residual probes continue until the standard error reaches it.
/// </summary>
public sealed record HutchPlusPlusOptions
{
    public int Products { get; init; } = 99;
    public double? RelativeStandardError { get; init; }
    public long MaxProducts { get; init; } = 1000;
    public int BlockSize { get; init; } = 10;
    public long Seed { get; init; }
    public IProgress<EstimatorProgress>? Progress { get; init; }
    public CancellationToken Cancellation { get; init; }
}

public static class HutchPlusPlus
{
    public static TraceEstimate Estimate(ICurvatureOperator op, HutchPlusPlusOptions? options = null)
    {
        var o = options ?? new HutchPlusPlusOptions();
        if (o.Products < 6 || o.Products % 3 != 0) throw new ValleyException($"Hutch++: the number of products m must be a positive multiple of 3 (at least 6), got {o.Products}");
        var sw = Stopwatch.StartNew();
        long start = op.Products;
        var gen = new Generator((ulong)o.Seed);
        int s = (int)Math.Min(o.Products / 3, op.Size);
        // 1. Sketch: Q = orth(A S), S Rademacher [n, s].
        using var scope = NewDisposeScope();
        var S = SpectrumMath.Rademacher(s, op.Size, gen, ScalarType.Float64).to(op.Device);
        var AS = SpectrumMath.Apply(op, S.t(), "Hutch++");
        var (qc, _) = linalg.qr(AS);
        var Q = qc.t().contiguous(); // rows
        // 2. Exact trace of the low-rank part: tr(Qᵀ A Q).
        var AQ = SpectrumMath.Apply(op, Q.t(), "Hutch++");
        double low = (Q.t() * AQ).sum().ToDouble();
        o.Progress?.Report(new EstimatorProgress("hutch++ sketch", op.Products - start, o.MaxProducts, null));
        // 3. Hutchinson on (I − QQᵀ) A (I − QQᵀ).
        var samples = new List<double>();
        int fixedProbes = o.Products / 3;
        bool converged = o.RelativeStandardError is null;
        while (true)
        {
            o.Cancellation.ThrowIfCancellationRequested();
            int k;
            if (o.RelativeStandardError is null)
            {
                k = Math.Min(o.BlockSize, fixedProbes - samples.Count);
                if (k <= 0) break;
            }
            else
            {
                long left = o.MaxProducts - (op.Products - start);
                if (left <= 0) break;
                k = (int)Math.Min(o.BlockSize, left);
            }
            samples.AddRange(Hutchinson.QuadraticForms(op, SpectrumMath.Rademacher(k, op.Size, gen, ScalarType.Float64), Q));
            var (m, se) = Hutchinson.MeanAndError(samples);
            o.Progress?.Report(new EstimatorProgress("hutch++", op.Products - start, o.MaxProducts, se / Math.Max(Math.Abs(low + m), 1e-300)));
            if (o.RelativeStandardError is { } target && samples.Count >= 2 && se <= target * Math.Abs(low + m)) { converged = true; break; }
        }
        var (mean, err) = samples.Count > 0 ? Hutchinson.MeanAndError(samples) : (0, 0);
        if (samples.Count == 1) err = double.PositiveInfinity;
        return new TraceEstimate
        {
            Method = "hutch++", Trace = low + mean, StandardError = err, Probes = samples.Count, Products = op.Products - start,
            Converged = converged, Seconds = sw.Elapsed.TotalSeconds, LowRankTrace = low, SketchSize = s,
        };
    }
}
