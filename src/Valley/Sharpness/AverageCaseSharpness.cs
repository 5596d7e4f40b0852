using TorchSharp;
using Valley.Curvature;
using Valley.Distributed;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Options of <see cref="AverageCaseSharpness"/>: batches of <see cref="BatchSize"/> (m = 128) from a seeded subset of
/// <see cref="Examples"/> (N = 1,024) training points, as Andriushchenko et al. (2023). The paper publishes no single ρ;
/// Valley's defaults are 0.01 (plain) and 0.1 (adaptive).
/// </summary>
public sealed record AverageCaseSharpnessOptions
{
    /// <summary>Adaptive: noise scaled by |w| (δ ~ N(0, ρ² diag(w²))), invariant to rescaling of the weights. Default false.</summary>
    public bool Adaptive { get; init; }

    /// <summary>Noise scale ρ; null: <see cref="EffectiveRho"/>'s default.</summary>
    public double? Rho { get; init; }

    /// <summary>Gaussian samples per batch (default 20).</summary>
    public int Samples { get; init; } = 20;

    /// <summary>Examples per batch m (default 128).</summary>
    public long BatchSize { get; init; } = 128;

    /// <summary>Training examples N the value is averaged over (default 1,024; all when the data hold fewer).</summary>
    public long Examples { get; init; } = 1024;

    /// <summary>Seed of the subset and of the noise.</summary>
    public long Seed { get; init; }

    /// <summary>ρ: <see cref="Rho"/>, or 0.01 (plain) and 0.1 (adaptive).</summary>
    public double EffectiveRho => Rho ?? (Adaptive ? 0.1 : 0.01);

    /// <summary>The result's name: average-case or average-case-adaptive.</summary>
    public string MeasureName => Adaptive ? "average-case-adaptive" : "average-case";
}

/// <summary>
/// Average-case sharpness (Andriushchenko et al. 2023, Section 3): E_{δ ~ N(0, ρ² diag(c²))} L_B(w + δ) − L_B(w) with c = 1 (plain)
/// or |w| (adaptive), estimated with <see cref="AverageCaseSharpnessOptions.Samples"/> samples per batch B and averaged over
/// samples and batches, with its standard error. Only the objective's parameters are perturbed, and each batch is evaluated with
/// the objective's options (dtype, train mode).
/// </summary>
public static class AverageCaseSharpness
{
    /// <summary>The average-case sharpness at the objective's current weights; the weights are unchanged afterwards.</summary>
    public static SharpnessResult Compute(Objective objective, AverageCaseSharpnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new AverageCaseSharpnessOptions();
        double rho = o.EffectiveRho;
        Check.PositiveFinite(rho, nameof(o.Rho));
        Check.AtLeast(o.Samples, 1, nameof(o.Samples));
        Check.AtLeast(o.BatchSize, 1, nameof(o.BatchSize));
        Check.AtLeast(o.Examples, 1, nameof(o.Examples));
        var g = objective.Group;
        var (examples, subset) = SharpnessBatches.ShareOf(objective, o.Examples, o.Seed);
        using var _ = subset;
        var gen = new Generator((ulong)o.Seed + 101 + 1_000_003UL * (ulong)g.Rank);
        var diffs = new List<double>();
        long lossEvals = 0;
        double baseSum = 0;
        int batches = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        foreach (var batch in SharpnessBatches.Objectives(objective, subset, o.BatchSize))
        {
            using var probe = new PerturbationProbe(batch);
            double l0 = probe.EvaluateAt(null, ct: ct).Loss;
            baseSum += l0;
            batches++;
            using var c = o.Adaptive ? probe.Origin.abs() : ones_like(probe.Origin);
            for (int s = 0; s < o.Samples; s++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var delta = rho * c * randn(probe.Origin.shape, dtype: ScalarType.Float64, generator: gen);
                diffs.Add(probe.EvaluateAt(delta, ct: ct).Loss - l0);
            }
            lossEvals += probe.LossEvaluations;
        }
        var (mean, se) = Statistics.MeanAndStandardError(g.AllGather(diffs.ToArray()));
        var sums = g.Total(baseSum, batches, lossEvals);
        return new SharpnessResult
        {
            Measure = o.MeasureName,
            Parameters = new() { ["rho"] = rho, ["samples"] = o.Samples, ["batch_size"] = o.BatchSize, ["examples"] = examples },
            Value = mean, StandardError = se, BaseLoss = sums[0] / sums[1], LossEvaluations = (long)sums[2], Seconds = sw.Elapsed.TotalSeconds,
        };
    }
}
