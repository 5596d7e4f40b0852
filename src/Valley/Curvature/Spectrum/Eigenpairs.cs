using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Why an eigen-solver stopped.</summary>
public enum StopReason
{
    /// <summary>Every wanted pair has ‖Av − θv‖ within the tolerance.</summary>
    Converged,

    /// <summary>
    /// The Krylov space became invariant before the wanted pairs were found: it spans every direction there is (orthogonal
    /// to the locked vectors), and fewer eigenvalues than asked for live in it. (A space that becomes invariant with all the
    /// wanted pairs is <see cref="Converged"/>; a breakdown inside a larger space is refilled with a random direction and
    /// does not stop Lanczos.)
    /// </summary>
    InvariantSubspace,

    /// <summary>The product budget (Lanczos) or the iteration limit (power iteration) ran out first.</summary>
    BudgetExhausted,

    /// <summary>The Lanczos basis is no longer orthonormal, so its residual estimates cannot be trusted.</summary>
    LossOfOrthogonality,

    /// <summary>
    /// Lanczos' own residual estimate reached the tolerance, but the residual ‖Av − θv‖ recomputed with a product does not:
    /// the operator's products are less accurate than the tolerance asks. This is what happens to a float32 Hessian near
    /// zero loss: its rounding errors are relative to the loss's intermediate terms (softmax probabilities near 1, whose
    /// differences make the curvature), not to the tiny curvature itself, so a product can be off by 10⁻³ to 10⁻² of ‖H‖
    /// where float32's precision is 10⁻⁷ (measured on small MLPs trained to a loss of 10⁻⁶ to 10⁻⁸). Float64 products fix it.
    /// </summary>
    PrecisionFloor,
}

/// <summary>
/// Eigenpairs of an operator from Lanczos, power iteration or a dense eigendecomposition, ordered as
/// the target asks (largest first for <see cref="EigenTarget.Largest"/>, most negative first for Smallest).
/// </summary>
public sealed record Eigenpairs
{
    /// <summary>The solver: "lanczos", "block-lanczos(b=3)", "power-iteration (PyHessian)".</summary>
    public required string Method { get; init; }

    /// <summary>Which end of the spectrum was asked for.</summary>
    public required EigenTarget Target { get; init; }

    /// <summary>The eigenvalue estimates (Ritz values), best first.</summary>
    public required double[] Values { get; init; }

    /// <summary>‖Av − θv‖ for each pair (computed with explicit products when <see cref="ResidualsVerified"/>; else the solver's estimate).</summary>
    public required double[] Residuals { get; init; }

    /// <summary>Whether <see cref="Residuals"/> were recomputed with explicit products.</summary>
    public bool ResidualsVerified { get; init; }

    /// <summary>Operator-vector products the solver asked for, verification included.</summary>
    public required long Products { get; init; }

    /// <summary>Solver iterations (Lanczos steps or power iterations).</summary>
    public required int Iterations { get; init; }

    /// <summary>Whether every wanted pair met the tolerance.</summary>
    public required bool Converged { get; init; }

    /// <summary>Why the solver stopped.</summary>
    public required StopReason StopReason { get; init; }

    /// <summary>The stop reason in one line, with the numbers behind it and what to do when it did not converge.</summary>
    public required string StopMessage { get; init; }

    /// <summary>The relative residual tolerance the solver worked to.</summary>
    public double Tolerance { get; init; }

    /// <summary>Wall-clock time.</summary>
    public double Seconds { get; init; }

    /// <summary>The eigenvectors as rows [k, n] (float64), when asked for. Not serialized.</summary>
    [JsonIgnore] public Tensor? Vectors { get; init; }

    /// <summary>‖Av − θv‖ / max(|θ|, tiny): the relative residual of each pair.</summary>
    public double[] RelativeResiduals => Values.Select((v, i) => Residuals[i] / Math.Max(Math.Abs(v), 1e-300)).ToArray();
}
