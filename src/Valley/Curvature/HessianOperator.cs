using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>The Hessian ∇²L(w) of an objective over its whole data set, as an operator (DESIGN.md §3).</summary>
public sealed class HessianOperator : CurvatureOperator
{
    public Objective Objective { get; }
    public CancellationToken Cancellation { get; init; }

    public HessianOperator(Objective objective) => Objective = objective;

    public override long Size => Objective.Size;
    public override ScalarType DType => Objective.Parameters.DType;
    public override Device Device => Objective.Parameters.Device;

    protected override Tensor ApplyCore(Tensor v) => Objective.HessianVectorProduct(v, Cancellation);
    protected override Tensor ApplyBlockCore(Tensor V) => Objective.HessianBlockProduct(V, Cancellation);
}
