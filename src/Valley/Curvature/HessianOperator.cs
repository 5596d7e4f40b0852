using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>The Hessian ∇²L(w) of an objective over its whole data set, as an operator (docs/design.md §3).</summary>
public sealed class HessianOperator : ObjectiveOperator, IExactDiagonal
{
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    public HessianOperator(Objective objective) : base(objective) { }

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => Objective.HessianVectorProduct(v, Cancellation);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) => Objective.HessianBlockProduct(V, Cancellation);

    /// <inheritdoc/>
    /// <remarks>Exact for a stack of Linear layers under <see cref="HessianProductMethod.Auto"/> (the layers' R-pass models);
    /// null for every other model.</remarks>
    public Tensor? ExactDiagonal(CancellationToken ct = default) =>
        Objective.LayerStack is { } stack ? Objective.StackDiagonal(stack, ct.CanBeCanceled ? ct : Cancellation) : null;
}
