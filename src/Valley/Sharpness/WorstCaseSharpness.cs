using TorchSharp;
using Valley.Curvature;
using Valley.Distributed;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>The norm of the ball a perturbation lies in.</summary>
public enum PerturbationNorm
{
    /// <summary>‖u‖₂ ≤ ρ.</summary>
    L2,
    /// <summary>‖u‖_∞ ≤ ρ.</summary>
    LInf,
}

/// <summary>
/// Options of <see cref="WorstCaseSharpness"/>. The measure averages over batches of <see cref="BatchSize"/> (m = 128) from a
/// seeded subset of <see cref="Examples"/> (N = 1,024) training points, as Andriushchenko et al. (2023). The paper varies ρ per
/// setting and publishes no single default; Valley's defaults are SAM's radius 0.05 (plain L2), ASAM's 0.5 (adaptive L2),
/// 0.001 (plain L∞) and 0.01 (adaptive L∞).
/// </summary>
public sealed record WorstCaseSharpnessOptions
{
    /// <summary>The ball's norm (default L2).</summary>
    public PerturbationNorm Norm { get; init; } = PerturbationNorm.L2;

    /// <summary>Adaptive (Kwon et al. 2021): δ = |w| ⊙ u, invariant to rescaling of the weights. Default false: δ = u.</summary>
    public bool Adaptive { get; init; }

    /// <summary>Radius ρ; null: <see cref="EffectiveRho"/>'s default for the norm and adaptivity.</summary>
    public double? Rho { get; init; }

    /// <summary>Auto-PGD steps (default 20).</summary>
    public int Steps { get; init; } = 20;

    /// <summary>Examples per batch m (default 128).</summary>
    public long BatchSize { get; init; } = 128;

    /// <summary>Training examples N the value is averaged over (default 1,024; all when the data hold fewer).</summary>
    public long Examples { get; init; } = 1024;

    /// <summary>Seed of the subset and of the starting points.</summary>
    public long Seed { get; init; }

    /// <summary>ρ: <see cref="Rho"/>, or the default for <see cref="Norm"/> and <see cref="Adaptive"/>.</summary>
    public double EffectiveRho => Rho ?? (Norm, Adaptive) switch
    {
        (PerturbationNorm.L2, false) => 0.05,
        (PerturbationNorm.L2, true) => 0.5,
        (PerturbationNorm.LInf, false) => 0.001,
        _ => 0.01,
    };

    /// <summary>The result's name: worst-case-l2, worst-case-l2-adaptive, worst-case-linf, worst-case-linf-adaptive.</summary>
    public string MeasureName => $"worst-case-{(Norm == PerturbationNorm.L2 ? "l2" : "linf")}{(Adaptive ? "-adaptive" : "")}";
}

/// <summary>
/// Worst-case m-sharpness (Andriushchenko et al. 2023, Eq. 1; adaptive as in their Eq. 2 after Kwon et al. 2021):
/// max_{‖u‖_p ≤ ρ} L_B(w + c⊙u) − L_B(w) with c = 1 (plain) or |w| (adaptive), maximized by <see cref="AutoPgd"/> on each batch B
/// of m examples and averaged over the batches, with its standard error. Only the objective's parameters are perturbed, and
/// each batch is evaluated with the objective's options (dtype, train mode).
/// </summary>
public static class WorstCaseSharpness
{
    /// <summary>The batch-averaged worst-case sharpness at the objective's current weights; the weights are unchanged afterwards.</summary>
    public static SharpnessResult Compute(Objective objective, WorstCaseSharpnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new WorstCaseSharpnessOptions();
        double rho = o.EffectiveRho;
        Check.PositiveFinite(rho, nameof(o.Rho));
        Check.AtLeast(o.Steps, 1, nameof(o.Steps));
        Check.AtLeast(o.BatchSize, 1, nameof(o.BatchSize));
        Check.AtLeast(o.Examples, 1, nameof(o.Examples));
        var g = objective.Group;
        var (examples, subset) = SharpnessBatches.ShareOf(objective, o.Examples, o.Seed);
        using var _ = subset;
        var values = new List<double>();
        double maxLossSum = 0, baseSum = 0, normSum = 0;
        long lossEvals = 0, gradEvals = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        foreach (var batch in SharpnessBatches.Objectives(objective, subset, o.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var probe = new PerturbationProbe(batch);
            using var scope = NewDisposeScope();
            var c = o.Adaptive ? probe.Origin.abs() : ones_like(probe.Origin);
            var gen = new Generator((ulong)(o.Seed * 7919 + values.Count + 1_000_003L * g.Rank));
            var (best, bestU, l0) = AutoPgd.Maximize(probe, c, o.Norm, rho, o.Steps, gen, ct);
            values.Add(best - l0);
            maxLossSum += best; baseSum += l0; normSum += (c * bestU).norm().ToDouble();
            lossEvals += probe.LossEvaluations; gradEvals += probe.GradientEvaluations;
        }
        var (mean, se) = Statistics.MeanAndStandardError(g.AllGather(values.ToArray()));
        var sums = g.Total(maxLossSum, baseSum, normSum, values.Count, lossEvals, gradEvals);
        double batches = sums[3];
        return new SharpnessResult
        {
            Measure = o.MeasureName,
            Parameters = new() { ["rho"] = rho, ["steps"] = o.Steps, ["batch_size"] = o.BatchSize, ["examples"] = examples },
            Value = mean, StandardError = se, BaseLoss = sums[1] / batches, MaxLoss = sums[0] / batches, PerturbationNorm = sums[2] / batches,
            LossEvaluations = (long)sums[4], GradientEvaluations = (long)sums[5], Seconds = sw.Elapsed.TotalSeconds,
        };
    }
}
