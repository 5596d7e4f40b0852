using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The generalized Gauss-Newton matrix G = (1/N) Σ_i J_iᵀ H_i J_i of an objective (Schraudolph 2002; Martens 2020 §8):
/// J_i the Jacobian of example i's outputs with respect to the parameters and H_i = ∇²_f ℓ_i the loss's Hessian with
/// respect to the outputs. It is the Hessian without the term Σ_i Σ_c (∂ℓ_i/∂f_c) ∇²f_c, so it is positive semi-definite
/// for a loss convex in the outputs, and equals the Hessian when that term vanishes: a model linear in its parameters, or
/// MSE at zero residual. Each product is, per batch, one J v by the double-vjp trick (TorchSharp has reverse mode only:
/// a backward pass through the graph of Jᵀu, built once per batch), H_out times it in closed form (cross-entropy, MSE, BCE;
/// other losses by double backward through the loss alone) and one Jᵀ w backward pass: no second-order backward pass
/// through the model. For a stack of Linear layers (<see cref="HessianProductMethod.Auto"/>), J v and Jᵀ w are explicit
/// matrix passes instead. Full data, batches weighted by size, the objective's mode, parameter filter and process group.
/// </summary>
public sealed class GgnOperator : ObjectiveOperator, IExactDiagonal
{
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    public GgnOperator(Objective objective) : base(objective) { }

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => ApplyAsBlock(v);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) =>
        // A stack of Linear layers: J v and Jᵀ w by explicit passes over the kept forward quantities (LinearStack), which the
        // Hessian's products share.
        Objective.LayerStack is { } stack ? Objective.StackBlockProduct(stack, V, Cancellation, gaussNewton: true) :
        // (1/N) Σ_B J_Bᵀ (|B| ∇²_f L_B) J_B V: the batch's mean-loss Hessian times |B| is Σ_{i∈B} H_i.
        GaussNewtonProduct.Block(Objective, V, Cancellation, (batch, _) =>
        {
            batch.PrepareOutputHessian();
            return w => batch.OutputHessian(w) * batch.Size;
        });

    /// <inheritdoc/>
    /// <remarks>Exact for a stack of Linear layers under <see cref="HessianProductMethod.Auto"/>; null for every other model.</remarks>
    public Tensor? ExactDiagonal(CancellationToken ct = default) =>
        Objective.LayerStack is { } stack ? Objective.StackDiagonal(stack, ct.CanBeCanceled ? ct : Cancellation, gaussNewton: true) : null;
}
