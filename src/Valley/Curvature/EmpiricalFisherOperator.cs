using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The empirical Fisher F̂ = (1/N) Σ_i ∇ℓ_i ∇ℓ_iᵀ of an objective: the mean outer product of the per-example gradients at
/// the data's own labels (Kunstner et al. 2019 on how it differs from the Fisher). Per-example gradients are never formed:
/// ∇ℓ_i = J_iᵀ δ_i with δ_i = ∂ℓ_i/∂f_i, so F̂ v = (1/N) Σ_i J_iᵀ δ_i (δ_iᵀ J_i v), one batched J v (double-vjp trick) and
/// one batched Jᵀ w per batch, as for the GGN with H_i replaced by δ_i δ_iᵀ. This is exact when example i's outputs depend
/// on x_i alone (eval mode, or a model without batch statistics; train mode with BatchNorm is refused). Its trace is <see cref="Sharpness.FisherTrace"/>.
/// </summary>
public sealed class EmpiricalFisherOperator : ObjectiveOperator
{
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    /// <exception cref="ArgumentOutOfRangeException">The objective is in train mode and its model has BatchNorm layers (per-example gradients are not defined).</exception>
    public EmpiricalFisherOperator(Objective objective) : base(objective) =>
        PerExampleCurvature.RequireIndependentExamples(objective, "the empirical Fisher");

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => ApplyAsBlock(v);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) =>
        GaussNewtonProduct.Block(Objective, V, Cancellation, (batch, _) =>
        {
            var delta = batch.ExampleLossGradients();
            return w => delta * (delta * w).sum(1, keepdim: true);
        });
}
