using Valley.Curvature.Spectrum;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The Hessian of a model's loss over a data set with the common spectrum questions one call away, as PyHessian's
/// <c>hessian(model, criterion, data)</c> has them (<c>eigenvalues</c>, <c>trace</c>, <c>density</c>):
/// <code>
/// using var h = Hessian.Of(model, Losses.CrossEntropy, data);
/// double lambdaMax = h.TopEigenvalues(1).Values[0];   // Lanczos
/// TraceEstimate trace = h.Trace();                    // to 1 % standard error
/// SpectralDensity density = h.Density();              // stochastic Lanczos quadrature
/// </code>
/// Each call runs one estimator on <see cref="Operator"/> with its documented defaults and returns the estimator's own
/// result record; pass an options record for anything else. For several estimators written as they finish, use
/// <see cref="SpectrumAnalysis"/>; for another operator, call the estimators (<see cref="Lanczos"/>,
/// <see cref="HutchPlusPlus"/>, ...) directly.
/// </summary>
public sealed class Hessian : IDisposable
{
    readonly bool _ownsObjective;

    Hessian(Objective objective, bool ownsObjective)
    {
        Objective = objective;
        Operator = new HessianOperator(objective);
        _ownsObjective = ownsObjective;
    }

    /// <summary>The Hessian of <paramref name="loss"/> of <paramref name="model"/> over <paramref name="data"/> (an <see cref="Objective"/> it owns).</summary>
    /// <param name="model">The model; its trainable parameters (or those <see cref="ObjectiveOptions.ParameterFilter"/> selects) are the Hessian's variables.</param>
    /// <param name="loss">The loss, averaged over a batch (e.g. <see cref="Losses.CrossEntropy"/>).</param>
    /// <param name="data">The data the loss is averaged over, all of it.</param>
    /// <param name="options">Batch size, dtype, train mode, parameter filter; null: the defaults.</param>
    public static Hessian Of(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, ObjectiveOptions? options = null) =>
        new(new Objective(model, loss, data, options), ownsObjective: true);

    /// <summary>The Hessian of an objective (which stays yours to dispose).</summary>
    public static Hessian Of(Objective objective) => new(objective, ownsObjective: false);

    /// <summary>The objective L(w) whose Hessian this is.</summary>
    public Objective Objective { get; }

    /// <summary>The Hessian as an operator, for the estimators.</summary>
    public HessianOperator Operator { get; }

    /// <summary>Number of parameters n (the Hessian is n × n).</summary>
    public long Size => Operator.Size;

    /// <summary>The k largest eigenvalues by Lanczos (<see cref="Eigenpairs.Values"/>, largest first), with their residuals and stop reason.</summary>
    /// <param name="k">How many.</param>
    /// <param name="options">Tolerance, budget, seed; <see cref="LanczosOptions.K"/> and <see cref="LanczosOptions.Target"/> are set from the call.</param>
    public Eigenpairs TopEigenvalues(int k = 1, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Lanczos.Compute(For(ct), (options ?? new LanczosOptions()) with { K = k, Target = EigenTarget.Largest }, progress, ct);

    /// <summary>As <see cref="TopEigenvalues"/>, with the eigenvectors in <see cref="Eigenpairs.Vectors"/> (rows [k, n], float64).</summary>
    /// <param name="k">How many.</param>
    /// <param name="options">As for <see cref="TopEigenvalues"/>.</param>
    public Eigenpairs TopEigenpairs(int k = 1, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Lanczos.Compute(For(ct), (options ?? new LanczosOptions()) with { K = k, Target = EigenTarget.Largest, ReturnVectors = true }, progress, ct);

    /// <summary>The k smallest (most negative) eigenvalues by Lanczos, smallest first.</summary>
    /// <param name="k">How many.</param>
    /// <param name="options">As for <see cref="TopEigenvalues"/>.</param>
    public Eigenpairs BottomEigenvalues(int k = 1, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Lanczos.Compute(For(ct), (options ?? new LanczosOptions()) with { K = k, Target = EigenTarget.Smallest }, progress, ct);

    /// <summary>
    /// The trace by <paramref name="method"/>: by default (<see cref="TraceMethod.Auto"/>) exactly from the Hessian's diagonal
    /// when the model is a stack of Linear layers, else by XTrace; an estimator with its default options (to 1 % relative
    /// standard error, at most 1,000 products).
    /// </summary>
    /// <param name="method">The method; default <see cref="SpectrumAnalysisOptions.DefaultTraceMethod"/>.</param>
    public TraceEstimate Trace(TraceMethod method = SpectrumAnalysisOptions.DefaultTraceMethod, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) => method switch
    {
        TraceMethod.Hutchinson => Trace(new HutchinsonOptions(), progress, ct),
        TraceMethod.HutchPlusPlus => Trace(new HutchPlusPlusOptions(), progress, ct),
        TraceMethod.Auto when ExactDiagonalEstimates.TryTrace(For(ct), ct) is { } exact => exact,
        _ => Trace(new XTraceOptions(), progress, ct),
    };

    /// <summary>
    /// The diagonal: by default (<see cref="DiagonalMethod.Auto"/>) exactly when the model is a stack of Linear layers, else
    /// by Hutchinson's estimator with 100 products.
    /// </summary>
    /// <param name="options">Method, products, seed; null: the defaults.</param>
    public DiagonalEstimate Diagonal(DiagonalOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        DiagonalEstimator.Estimate(For(ct), options, progress, ct);

    /// <summary>The trace by XTrace with these options.</summary>
    /// <param name="options">Target, budget, test vectors, seed.</param>
    public TraceEstimate Trace(XTraceOptions options, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        XTrace.Estimate(For(ct), options, progress, ct);

    /// <summary>The trace by Hutch++ with these options.</summary>
    /// <param name="options">Target, budget, sketch size, seed.</param>
    public TraceEstimate Trace(HutchPlusPlusOptions options, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        HutchPlusPlus.Estimate(For(ct), options, progress, ct);

    /// <summary>The trace by Hutchinson's estimator with these options.</summary>
    /// <param name="options">Target, budget, seed.</param>
    public TraceEstimate Trace(HutchinsonOptions options, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Hutchinson.Estimate(For(ct), options, progress, ct);

    /// <summary>The spectral density by stochastic Lanczos quadrature (default: 10 runs × 80 steps, Ghorbani et al. 2019).</summary>
    /// <param name="options">Runs, steps, broadening, seed.</param>
    public SpectralDensity Density(SpectralDensityOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        StochasticLanczosQuadrature.Estimate(For(ct), options ?? new SpectralDensityOptions(), progress, ct);

    /// <summary>The exact Hessian matrix (n products; for models of up to <see cref="ExactHessian.DefaultMaxSize"/> parameters).</summary>
    public DenseMatrix Exact() => ExactHessian.Compute(Operator);

    /// <summary>The operator with the estimator's cancellation token, so that a long product stops between batches too.</summary>
    HessianOperator For(CancellationToken ct) => ct.CanBeCanceled ? new HessianOperator(Objective) { Cancellation = ct } : Operator;

    /// <summary>Disposes the objective when <see cref="Of(nn.Module{Tensor, Tensor}, LossFunction, Dataset, ObjectiveOptions?)"/> made it (the model stays yours).</summary>
    public void Dispose()
    {
        if (_ownsObjective) Objective.Dispose();
    }
}
