using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>The Hessian ∇²L(w) of an objective over its whole data set, as an operator (docs/design.md §3).</summary>
public sealed class HessianOperator : ObjectiveOperator
{
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    public HessianOperator(Objective objective) : base(objective) { }

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => Objective.HessianVectorProduct(v, Cancellation);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) => Objective.HessianBlockProduct(V, Cancellation);
}
