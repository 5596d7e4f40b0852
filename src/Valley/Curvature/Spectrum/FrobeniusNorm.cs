using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Options of <see cref="FrobeniusNorm"/>.</summary>
public sealed record FrobeniusOptions
{
    /// <summary>Stop when the standard error of ‖A‖_F² ≤ this × the estimate. Default 0.01.</summary>
    public double RelativeStandardError { get; init; } = 0.01;

    /// <summary>Probes before the standard error may stop the estimator. Default 10.</summary>
    public int MinProbes { get; init; } = 10;

    /// <summary>Budget of products, one per probe. Default 1000.</summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>Probes applied together as one block product. Default 10.</summary>
    public int BlockSize { get; init; } = 10;

    /// <summary>Gaussian probes instead of Rademacher ones (both have E[v vᵀ] = I). Default false.</summary>
    public bool Gaussian { get; init; }

    /// <summary>Seed of the probes.</summary>
    public long Seed { get; init; }
}

/// <summary>A Frobenius-norm estimate with its standard error.</summary>
public sealed record FrobeniusEstimate
{
    /// <summary>The estimate of ‖A‖_F = √(mean ‖A v‖²).</summary>
    public required double Norm { get; init; }

    /// <summary>Standard error of <see cref="Norm"/> (delta method: SE(‖A‖_F²) / (2 ‖A‖_F)).</summary>
    public required double StandardError { get; init; }

    /// <summary>The estimate of ‖A‖_F² (the mean of ‖Av‖²; unbiased).</summary>
    public required double SquaredNorm { get; init; }

    /// <summary>Standard error of <see cref="SquaredNorm"/>: the sample standard deviation of ‖Av‖² over √probes.</summary>
    public required double SquaredStandardError { get; init; }

    /// <summary>Random probes.</summary>
    public required int Probes { get; init; }

    /// <summary>Operator products.</summary>
    public required long Products { get; init; }

    /// <summary>Whether the standard error reached the target.</summary>
    public required bool Converged { get; init; }

    /// <summary>Wall-clock time.</summary>
    public double Seconds { get; init; }
}

/// <summary>
/// The state of an unfinished Frobenius-norm estimate, handed out after every block of probes so that a caller can save it
/// and an interrupted estimate can continue from it (<see cref="FrobeniusNorm.Estimate"/>): the probes are drawn from the
/// seed again and those already applied skipped, so a resumed estimate equals an uninterrupted one.
/// </summary>
public sealed record FrobeniusCheckpoint
{
    /// <summary>The options of the estimate (a checkpoint of other options is ignored).</summary>
    public required FrobeniusOptions Options { get; init; }

    /// <summary>The operator's size n (a checkpoint of another size is ignored).</summary>
    public required long Size { get; init; }

    /// <summary>‖A v‖² of every probe so far, in order.</summary>
    public required double[] Samples { get; init; }

    /// <summary>Products spent so far.</summary>
    public required long Products { get; init; }

    /// <summary>Wall-clock time spent so far.</summary>
    public double Seconds { get; init; }
}

/// <summary>
/// The Frobenius norm of an operator from its products: ‖A‖_F² = tr(AᵀA) = E‖A v‖² for probes with E[v vᵀ] = I
/// (Rademacher or Gaussian), Hutchinson's estimator applied to AᵀA with one product per probe.
/// </summary>
public static class FrobeniusNorm
{
    /// <summary>Estimates ‖A‖_F to the relative standard error asked for (of ‖A‖_F²), or until the budget runs out.</summary>
    /// <param name="op">The operator.</param>
    /// <param name="options">Target, budget, block size, probes, seed; null: the defaults.</param>
    /// <param name="progress">Products so far and the relative standard error.</param>
    /// <param name="ct">Checked before every block of probes.</param>
    /// <param name="resumeFrom">
    /// A checkpoint of an interrupted estimate with the same options on an operator of the same size: its probes are kept and
    /// the estimate continues (the result is that of an uninterrupted estimate); ignored when options or size differ.
    /// </param>
    /// <param name="checkpoint">Called with the state after every block of probes.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="FrobeniusOptions"/>).</exception>
    public static FrobeniusEstimate Estimate(ICurvatureOperator op, FrobeniusOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default,
        FrobeniusCheckpoint? resumeFrom = null, Action<FrobeniusCheckpoint>? checkpoint = null)
    {
        var o = options ?? new FrobeniusOptions();
        Validate(o);
        if (resumeFrom is not null && (resumeFrom.Options != o || resumeFrom.Size != op.Size || resumeFrom.Products != resumeFrom.Samples.Length || resumeFrom.Products > o.MaxProducts))
            resumeFrom = null;
        var sw = Stopwatch.StartNew();
        double earlier = resumeFrom?.Seconds ?? 0;
        var budget = new ProductBudget(op, o.MaxProducts, "frobenius", resumeFrom?.Products ?? 0);
        var gen = new Generator((ulong)o.Seed);
        var samples = new List<double>(resumeFrom?.Samples ?? []);
        Tensor Probes(int k) => o.Gaussian ? randn([k, op.Size], dtype: ScalarType.Float64, generator: gen) : SpectrumMath.Rademacher(k, op.Size, gen, ScalarType.Float64);
        // The interrupted run's blocks of probes, drawn again and skipped, so that the generator continues where it stopped.
        for (long done = 0; done < samples.Count;)
        {
            using var scope = NewDisposeScope();
            int k = (int)Math.Min(o.BlockSize, o.MaxProducts - done);
            Probes(k);
            done += k;
        }
        bool converged = false;
        while (true)
        {
            if (samples.Count > 0)
            {
                var (m, e) = Statistics.MeanAndStandardError(samples);
                double relative = e / Math.Max(Math.Abs(m), 1e-300);
                progress?.Report(new EstimatorProgress("frobenius", budget.Used, budget.Max, double.IsNaN(relative) ? null : relative));
                if (samples.Count >= o.MinProbes && relative <= o.RelativeStandardError) { converged = true; break; }
            }
            if (budget.Left <= 0) break;
            ct.ThrowIfCancellationRequested();
            using (var scope = NewDisposeScope())
            {
                int k = (int)Math.Min(o.BlockSize, budget.Left);
                var Av = budget.Apply(Probes(k).to(op.Device).t());
                samples.AddRange(Av.pow(2).sum(0L).cpu().data<double>().ToArray());
            }
            checkpoint?.Invoke(new FrobeniusCheckpoint { Options = o, Size = op.Size, Samples = samples.ToArray(), Products = budget.Used, Seconds = earlier + sw.Elapsed.TotalSeconds });
        }
        var (mean, se) = Statistics.MeanAndStandardError(samples);
        double norm = Math.Sqrt(Math.Max(mean, 0));
        return new FrobeniusEstimate
        {
            Norm = norm, StandardError = norm > 0 ? se / (2 * norm) : se, SquaredNorm = mean, SquaredStandardError = se, Probes = samples.Count,
            Products = budget.Used, Converged = converged, Seconds = earlier + sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>Checks the options.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="FrobeniusOptions"/>).</exception>
    public static void Validate(FrobeniusOptions o)
    {
        Check.PositiveFinite(o.RelativeStandardError, nameof(o.RelativeStandardError));
        Check.AtLeast(o.MinProbes, 2, nameof(o.MinProbes));
        Check.AtLeast(o.MaxProducts, o.MinProbes, nameof(o.MaxProducts));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
    }
}
