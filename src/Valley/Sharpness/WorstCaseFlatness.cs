using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Options of <see cref="WorstCaseFlatness"/>: the α search (<see cref="FlatnessSearchOptions"/>) and its inner ascent.</summary>
public sealed record WorstCaseFlatnessOptions : FlatnessSearchOptions
{
    /// <summary>Projected sign-gradient ascent steps per α (default 20).</summary>
    public int AscentSteps { get; init; } = 20;

    /// <summary>Magnitude-aware ε: the box |u_i| ≤ α|w_i| + ε (default 1e-3).</summary>
    public double MagnitudeEpsilon { get; init; } = 1e-3;

    /// <inheritdoc/>
    public override void Validate()
    {
        base.Validate();
        Check.AtLeast(AscentSteps, 1, nameof(AscentSteps));
        Check.PositiveFinite(MagnitudeEpsilon, nameof(MagnitudeEpsilon));
    }
}

/// <summary>
/// Worst-case flatness 1/α'² (Jiang et al. 2020, "sharpness.flatness" and its magnitude-aware variant, measures 52 and 60 of
/// Appendix C), over the objective's parameters and training data: α' is the largest box half-width at which
/// <see cref="ProjectedSignAscent"/> on the training loss (<see cref="WorstCaseFlatnessOptions.AscentSteps"/> steps of α/4, halved
/// at 50% and 75%, from u = 0) finds a point |u_i| ≤ α (magnitude-aware: α|w_i| + ε) whose accuracy drops by the target
/// (<see cref="FlatnessSearch"/>).
/// </summary>
public static class WorstCaseFlatness
{
    /// <summary>worst-case-flatness, then worst-case-mag-flatness.</summary>
    public static SharpnessResult[] Compute(Objective objective, WorstCaseFlatnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new WorstCaseFlatnessOptions();
        o.Validate();
        using var probe = new PerturbationProbe(objective);
        var acc0 = probe.EvaluateAt(null, ct: ct).Accuracy ?? throw new ValleyException("worst-case flatness needs a classification data set (accuracy)");
        var results = new List<SharpnessResult>();
        foreach (bool magnitude in new[] { false, true })
        {
            double Drop(double alpha)
            {
                using var scope = NewDisposeScope();
                var half = magnitude ? alpha * probe.Origin.abs() + o.MagnitudeEpsilon : full_like(probe.Origin, alpha);
                var (u, _, _) = ProjectedSignAscent.Run(probe, half, zeros_like(probe.Origin), o.AscentSteps, 0.25, ct);
                return Math.Abs(acc0 - probe.EvaluateAt(u, ct: ct).Accuracy!.Value);
            }
            var (alpha, evals) = FlatnessSearch.Bisect(Drop, o);
            results.Add(new SharpnessResult
            {
                Measure = magnitude ? "worst-case-mag-flatness" : "worst-case-flatness",
                Parameters = new() { ["target_drop"] = o.TargetDrop, ["tolerance"] = o.Tolerance, ["depth"] = o.Depth, ["ascent_steps"] = o.AscentSteps, ["epsilon"] = magnitude ? o.MagnitudeEpsilon : 0 },
                Value = 1 / (alpha * alpha),
                Details = new() { ["alpha"] = alpha, ["train_accuracy"] = acc0 },
                GradientEvaluations = (long)evals * o.AscentSteps, LossEvaluations = evals, Seconds = probe.Seconds,
            });
        }
        return results.ToArray();
    }
}
