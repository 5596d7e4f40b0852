using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// A curvature matrix of an <see cref="Valley.Curvature.Objective"/> (the Hessian, the GGN, the Fishers): it acts on the
/// objective's selected parameters, in their dtype and on their device, over the objective's whole data.
/// </summary>
public abstract class ObjectiveOperator : CurvatureOperator
{
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    protected ObjectiveOperator(Objective objective) => Objective = objective;

    /// <summary>The objective whose curvature this is.</summary>
    public Objective Objective { get; }

    /// <summary>Checked between the batches of every product.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <inheritdoc/>
    public override long Size => Objective.Size;

    /// <inheritdoc/>
    public override ScalarType DType => Objective.Parameters.DType;

    /// <inheritdoc/>
    public override Device Device => Objective.Parameters.Device;

    /// <summary>One product as a block of one column (for operators whose block product is the primitive).</summary>
    protected Tensor ApplyAsBlock(Tensor v)
    {
        using var scope = NewDisposeScope();
        return ApplyBlockCore(v.unsqueeze(1)).squeeze(1).MoveToOuterDisposeScope();
    }
}
