using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.Optimization;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Options of <see cref="KeskarSharpness"/>; defaults as in Keskar et al. (2017), Section 2.2.1.</summary>
public sealed record KeskarOptions
{
    /// <summary>Box size ε (default 1e-3; the paper also reports 5e-4).</summary>
    public double Epsilon { get; init; } = 1e-3;

    /// <summary>Null: full space (A = I). Otherwise the dimension p of a random subspace (the paper's 100).</summary>
    public int? SubspaceDimension { get; init; }

    /// <summary>Full space: projected sign-gradient ascent steps (default 20).</summary>
    public int Steps { get; init; } = 20;

    /// <summary>Full space: the first steps' size as a fraction of the box half-width (default 0.25).</summary>
    public double StepFraction { get; init; } = 0.25;

    /// <summary>Random subspace: L-BFGS-B iterations (the paper's 10).</summary>
    public int LbfgsIterations { get; init; } = 10;

    /// <summary>Seed of the starting point (full space) or of the subspace A.</summary>
    public long Seed { get; init; }
}

/// <summary>
/// Keskar et al. (2017) ε-sharpness, Eq. (3): φ(ε, A) = 100 · (max_{y∈C_ε} L(w + Ay) − L(w)) / (1 + L(w)) with the box
/// C_ε = { y : |y_i| ≤ ε (|(A⁺w)_i| + 1) }, over the objective's parameters and data.
/// Full space (A = I): <see cref="ProjectedSignAscent"/> for <see cref="KeskarOptions.Steps"/> steps starting at a seeded random
/// point within a tenth of the box (at a minimum the gradient at y = 0 vanishes); the best point seen counts.
/// Random subspace (A ∈ R^{n×p} standard normal): L-BFGS-B (MathNet) for <see cref="KeskarOptions.LbfgsIterations"/> iterations,
/// as in the paper; the best point evaluated counts.
/// </summary>
public static class KeskarSharpness
{
    /// <summary>φ(ε, A) of the objective at its current weights; the weights are unchanged afterwards.</summary>
    public static SharpnessResult Compute(Objective objective, KeskarOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new KeskarOptions();
        Check.PositiveFinite(o.Epsilon, nameof(o.Epsilon));
        Check.AtLeast(o.Steps, 1, nameof(o.Steps));
        Check.PositiveFinite(o.StepFraction, nameof(o.StepFraction));
        Check.AtLeast(o.LbfgsIterations, 1, nameof(o.LbfgsIterations));
        if (o.SubspaceDimension is { } p && (p < 1 || p > objective.Size))
            throw Check.OutOfRange(nameof(o.SubspaceDimension), p, $"must be between 1 and the number of parameters ({objective.Size})");
        using var probe = new PerturbationProbe(objective);
        using var scope = NewDisposeScope();
        double l0 = probe.EvaluateAt(null, ct: ct).Loss;
        var (best, bestDelta) = o.SubspaceDimension is null ? FullSpace(probe, o, l0, ct) : Subspace(probe, o, l0, ct);
        return new SharpnessResult
        {
            Measure = o.SubspaceDimension is null ? "keskar" : "keskar-subspace",
            Parameters = new() { ["epsilon"] = o.Epsilon, ["subspace_dimension"] = o.SubspaceDimension ?? 0, ["steps"] = o.SubspaceDimension is null ? o.Steps : o.LbfgsIterations },
            Value = 100 * (best - l0) / (1 + l0),
            BaseLoss = l0, MaxLoss = best, PerturbationNorm = bestDelta.norm().ToDouble(),
            LossEvaluations = probe.LossEvaluations, GradientEvaluations = probe.GradientEvaluations, Seconds = probe.Seconds,
        };
    }

    /// <summary>The highest loss found in the box around w (at least L(w)) and its δ.</summary>
    static (double Best, Tensor Delta) FullSpace(PerturbationProbe probe, KeskarOptions o, double l0, CancellationToken ct)
    {
        var half = o.Epsilon * (probe.Origin.abs() + 1);
        // Start inside the box near 0, not at 0: at a minimum the gradient vanishes and sign ascent could not move.
        var start = (rand(probe.Origin.shape, dtype: ScalarType.Float64, generator: new Generator((ulong)o.Seed)) * 2 - 1) * 0.1 * half;
        var (last, ascentBest, ascentBestPoint) = ProjectedSignAscent.Run(probe, half, start, o.Steps, o.StepFraction, ct);
        double best = l0;
        Tensor bestDelta = zeros_like(probe.Origin);
        if (ascentBest > best) (best, bestDelta) = (ascentBest, ascentBestPoint);
        double atLast = probe.EvaluateAt(last, ct: ct).Loss;
        if (atLast > best) (best, bestDelta) = (atLast, last);
        return (best, bestDelta);
    }

    /// <summary>L-BFGS-B on −L(w + A y) over the subspace's box; the highest loss evaluated (at least L(w)) and its δ = A y.</summary>
    static (double Best, Tensor Delta) Subspace(PerturbationProbe probe, KeskarOptions o, double l0, CancellationToken ct)
    {
        int p = o.SubspaceDimension!.Value;
        double best = l0;
        Tensor bestDelta = zeros_like(probe.Origin);
        var A = randn([probe.Origin.shape[0], p], dtype: ScalarType.Float64, generator: new Generator((ulong)o.Seed));
        var Apinv = linalg.pinv(A);
        var half = (o.Epsilon * (Apinv.matmul(probe.Origin).abs() + 1)).data<double>().ToArray();
        var lower = Vector<double>.Build.DenseOfArray(half.Select(h => -h).ToArray());
        var upper = Vector<double>.Build.DenseOfArray(half);
        var f = ObjectiveFunction.Gradient(yv =>
        {
            using var s = NewDisposeScope();
            var delta = A.matmul(OwnedTensor.From(yv.ToArray()));
            var (l, g) = probe.GradientAt(delta, ct);
            if (l > best) { best = l; bestDelta.Dispose(); bestDelta = delta.MoveToOuterDisposeScope(); }
            return (-l, Vector<double>.Build.DenseOfArray(A.t().matmul(g).neg().data<double>().ToArray()));
        });
        try { new BfgsBMinimizer(1e-12, 1e-12, 1e-12, o.LbfgsIterations).FindMinimum(f, lower, upper, Vector<double>.Build.Dense(p)); }
        catch (MaximumIterationsException) { /* the paper runs a fixed number of iterations */ }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or EvaluationException or OptimizationException) { /* a line search that cannot progress: keep the best point evaluated */ }
        return (best, bestDelta);
    }
}
