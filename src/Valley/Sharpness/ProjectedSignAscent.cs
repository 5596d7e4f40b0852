using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Projected sign-gradient ascent of the loss in a box |y_i| ≤ h_i, the inner maximization of Keskar et al. (2017) ε-sharpness
/// and of Jiang et al. (2020) worst-case flatness: y ← clip(y + α h ⊙ sign ∇L(w + y), −h, h), with α a fraction of the box's
/// half-width, halved at 50% and quartered at 75% of the steps.
/// </summary>
internal static class ProjectedSignAscent
{
    /// <summary>
    /// <paramref name="steps"/> gradient evaluations starting at <paramref name="start"/>. Returns the last point (not itself
    /// evaluated) and the highest loss among the evaluated points with the first point that reached it. The tensors returned
    /// belong to the caller's dispose scope.
    /// </summary>
    public static (Tensor Last, double BestLoss, Tensor BestPoint) Run(PerturbationProbe probe, Tensor half, Tensor start, int steps, double stepFraction,
        CancellationToken ct)
    {
        var y = start;
        var best = start;
        double bestLoss = double.NegativeInfinity;
        for (int k = 0; k < steps; k++)
        {
            Tensor next;
            using (var scope = NewDisposeScope())
            {
                var (loss, g) = probe.GradientAt(y, ct);
                if (loss > bestLoss)
                {
                    if (!ReferenceEquals(best, start) && !ReferenceEquals(best, y)) best.Dispose();
                    (bestLoss, best) = (loss, y);
                }
                double alpha = stepFraction * (k >= 0.75 * steps ? 0.25 : k >= 0.5 * steps ? 0.5 : 1);
                next = minimum(maximum(y + alpha * half * g.sign(), -half), half).MoveToOuterDisposeScope();
            }
            if (!ReferenceEquals(y, best) && !ReferenceEquals(y, start)) y.Dispose();
            y = next;
        }
        return (y, bestLoss, best);
    }
}
