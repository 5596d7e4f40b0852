using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>The Hessian ∇²L(w) of an objective over its whole data set, as an operator (docs/design.md §3).</summary>
public sealed class HessianOperator : CurvatureOperator
{
    /// <summary>The objective whose Hessian this is.</summary>
    public Objective Objective { get; }

    /// <summary>Checked between the batches of every product.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    public HessianOperator(Objective objective) => Objective = objective;

    /// <inheritdoc/>
    public override long Size => Objective.Size;

    /// <inheritdoc/>
    public override ScalarType DType => Objective.Parameters.DType;

    /// <inheritdoc/>
    public override Device Device => Objective.Parameters.Device;

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => Objective.HessianVectorProduct(v, Cancellation);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) => Objective.HessianBlockProduct(V, Cancellation);
}
