using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Options of <see cref="SamSharpness"/>.</summary>
public sealed record SamSharpnessOptions
{
    /// <summary>Radius ρ (default 0.05, SAM's for CIFAR in Foret et al. 2021).</summary>
    public double Rho { get; init; } = 0.05;
}

/// <summary>
/// SAM's one-step sharpness (Foret et al. 2021, Eq. 2 with the first-order ε̂ of Eq. 3 for p = 2):
/// L(w + ρ g/‖g‖₂) − L(w), g = ∇L(w), on the objective's parameters and data.
/// </summary>
public static class SamSharpness
{
    /// <summary>The one-step sharpness at the objective's current weights; the weights are unchanged afterwards.</summary>
    public static SharpnessResult Compute(Objective objective, SamSharpnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new SamSharpnessOptions();
        Check.PositiveFinite(o.Rho, nameof(o.Rho));
        using var probe = new PerturbationProbe(objective);
        using var scope = NewDisposeScope();
        var (l0, g) = probe.GradientAt(null, ct);
        var delta = o.Rho * g / (g.norm() + 1e-12);
        double l1 = probe.EvaluateAt(delta, ct: ct).Loss;
        return new SharpnessResult
        {
            Measure = "sam-one-step", Parameters = new() { ["rho"] = o.Rho }, Value = l1 - l0, BaseLoss = l0, MaxLoss = l1, PerturbationNorm = o.Rho,
            LossEvaluations = probe.LossEvaluations, GradientEvaluations = probe.GradientEvaluations, Seconds = probe.Seconds,
        };
    }
}
