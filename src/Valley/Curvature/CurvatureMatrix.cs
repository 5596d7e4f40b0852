using Valley.Curvature.Spectrum;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>Which curvature matrix of an objective (docs/design.md, "Curvature operators").</summary>
public enum CurvatureKind
{
    /// <summary>The Hessian ∇²L (<see cref="HessianOperator"/>).</summary>
    Hessian,
    /// <summary>The generalized Gauss-Newton matrix (<see cref="GgnOperator"/>).</summary>
    Ggn,
    /// <summary>The empirical Fisher (<see cref="EmpiricalFisherOperator"/>).</summary>
    EmpiricalFisher,
    /// <summary>The Monte-Carlo Fisher (<see cref="MonteCarloFisherOperator"/>).</summary>
    MonteCarloFisher,
    /// <summary>K-FAC's Kronecker-factored approximation (<see cref="KfacOperator"/>).</summary>
    Kfac,
}

/// <summary>Options of the operators other than the Hessian.</summary>
public sealed record CurvatureOperatorOptions
{
    /// <summary>Labels sampled per example by the Monte-Carlo Fisher and K-FAC's Monte-Carlo expectation. Default 1.</summary>
    public int Samples { get; init; } = 1;

    /// <summary>Seed of the sampled labels.</summary>
    public long Seed { get; init; }

    /// <summary>K-FAC's expectation. Default Monte-Carlo (sampled labels, <see cref="Samples"/> per example), as <see cref="KfacOptions.Expectation"/>.</summary>
    public KfacExpectation KfacExpectation { get; init; } = KfacExpectation.MonteCarlo;
}

/// <summary>The curvature operators by kind, and their names ("hessian", "ggn", "ef", "mc-fisher", "kfac").</summary>
public static class CurvatureOperators
{
    /// <summary>The names <see cref="Parse"/> knows, in <see cref="CurvatureKind"/> order.</summary>
    public static IReadOnlyList<string> Names { get; } = ["hessian", "ggn", "ef", "mc-fisher", "kfac"];

    /// <summary>The short name of a kind.</summary>
    public static string NameOf(CurvatureKind kind) => Names[(int)kind];

    /// <summary>A kind by its short name.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An unknown name.</exception>
    public static CurvatureKind Parse(string name)
    {
        int i = Names.ToList().IndexOf(name);
        return i >= 0 ? (CurvatureKind)i : throw Check.OutOfRange(nameof(name), name, $"must be one of {string.Join(", ", Names)}");
    }

    /// <summary>The operator of a kind over an objective (K-FAC computes its factors here: one pass over the data).</summary>
    /// <param name="objective">The objective (not owned).</param>
    /// <param name="kind">Which matrix.</param>
    /// <param name="options">Samples, seed and K-FAC's expectation; null: the defaults.</param>
    /// <param name="ct">Checked between the batches of every product.</param>
    public static ICurvatureOperator Create(Objective objective, CurvatureKind kind, CurvatureOperatorOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new CurvatureOperatorOptions();
        return kind switch
        {
            CurvatureKind.Hessian => new HessianOperator(objective) { Cancellation = ct },
            CurvatureKind.Ggn => new GgnOperator(objective) { Cancellation = ct },
            CurvatureKind.EmpiricalFisher => new EmpiricalFisherOperator(objective) { Cancellation = ct },
            CurvatureKind.MonteCarloFisher => new MonteCarloFisherOperator(objective, o.Samples, o.Seed) { Cancellation = ct },
            CurvatureKind.Kfac => new KfacOperator(objective, new KfacOptions { Expectation = o.KfacExpectation, Samples = o.Samples, Seed = o.Seed }, ct),
            _ => throw Check.OutOfRange(nameof(kind), kind, $"must be one of {string.Join(", ", Names)}"),
        };
    }
}

/// <summary>
/// Any curvature matrix of a model's loss over a data set with the spectrum questions one call away, as <see cref="Hessian"/>
/// has them for the Hessian:
/// <code>
/// using var g = CurvatureMatrix.Of(model, Losses.CrossEntropy, data, CurvatureKind.Ggn);
/// double lambdaMax = g.TopEigenvalues(1).Values[0];
/// DiagonalEstimate diag = g.Diagonal();
/// </code>
/// For K-FAC, eigenvalues, trace, diagonal and Frobenius norm come exactly from the Kronecker factors.
/// </summary>
public sealed class CurvatureMatrix : IDisposable
{
    readonly bool _ownsObjective;

    CurvatureMatrix(Objective objective, CurvatureKind kind, CurvatureOperatorOptions? options, bool ownsObjective)
    {
        Objective = objective;
        Kind = kind;
        _ownsObjective = ownsObjective;
        try { Operator = CurvatureOperators.Create(objective, kind, options); }
        catch
        {
            if (ownsObjective) objective.Dispose();
            throw;
        }
    }

    /// <summary>The matrix of this kind of <paramref name="loss"/> of <paramref name="model"/> over <paramref name="data"/> (an <see cref="Objective"/> it owns).</summary>
    /// <param name="model">The model.</param>
    /// <param name="loss">The loss, averaged over a batch.</param>
    /// <param name="data">The data, all of it.</param>
    /// <param name="kind">Which matrix.</param>
    /// <param name="options">Batch size, dtype, train mode, parameter filter; null: the defaults.</param>
    /// <param name="operatorOptions">Samples, seed, K-FAC's expectation; null: the defaults.</param>
    public static CurvatureMatrix Of(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, CurvatureKind kind,
        ObjectiveOptions? options = null, CurvatureOperatorOptions? operatorOptions = null) =>
        new(new Objective(model, loss, data, options), kind, operatorOptions, ownsObjective: true);

    /// <summary>The matrix of this kind of an objective (which stays yours to dispose).</summary>
    public static CurvatureMatrix Of(Objective objective, CurvatureKind kind, CurvatureOperatorOptions? operatorOptions = null) =>
        new(objective, kind, operatorOptions, ownsObjective: false);

    /// <summary>The objective.</summary>
    public Objective Objective { get; }

    /// <summary>Which matrix.</summary>
    public CurvatureKind Kind { get; }

    /// <summary>The matrix as an operator, for the estimators.</summary>
    public ICurvatureOperator Operator { get; }

    /// <summary>Number of parameters n.</summary>
    public long Size => Operator.Size;

    /// <summary>The k largest eigenvalues: Lanczos, or K-FAC's exact factor eigenvalues.</summary>
    /// <param name="k">How many.</param>
    /// <param name="options">Tolerance, budget, seed (Lanczos).</param>
    public Eigenpairs TopEigenvalues(int k = 1, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Operator is KfacOperator kfac ? kfac.TopEigenvalues(k)
            : Lanczos.Compute(Operator, (options ?? new LanczosOptions()) with { K = k, Target = EigenTarget.Largest }, progress, ct);

    /// <summary>The k smallest eigenvalues, likewise.</summary>
    /// <param name="k">How many.</param>
    /// <param name="options">Tolerance, budget, seed (Lanczos).</param>
    public Eigenpairs BottomEigenvalues(int k = 1, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Operator is KfacOperator kfac ? kfac.TopEigenvalues(k, EigenTarget.Smallest)
            : Lanczos.Compute(Operator, (options ?? new LanczosOptions()) with { K = k, Target = EigenTarget.Smallest }, progress, ct);

    /// <summary>The trace: K-FAC's exactly from its factors; the Hessian's and GGN's exactly from their diagonal for a stack of
    /// Linear layers (<see cref="TraceMethod.Auto"/>); otherwise by XTrace with its default options.</summary>
    public TraceEstimate Trace(IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Operator is KfacOperator kfac ? kfac.TraceEstimate() : ExactDiagonalEstimates.TryTrace(Operator, ct) ?? XTrace.Estimate(Operator, new XTraceOptions(), progress, ct);

    /// <summary>The spectral density by stochastic Lanczos quadrature.</summary>
    /// <param name="options">Runs, steps, broadening, seed.</param>
    public SpectralDensity Density(SpectralDensityOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        StochasticLanczosQuadrature.Estimate(Operator, options ?? new SpectralDensityOptions(), progress, ct);

    /// <summary>The diagonal by <see cref="DiagonalEstimator"/> (exact for the Hessian and GGN of a stack of Linear layers under
    /// <see cref="DiagonalMethod.Auto"/>), or K-FAC's exact diagonal (standard errors 0).</summary>
    /// <param name="options">Method, products, seed.</param>
    public DiagonalEstimate Diagonal(DiagonalOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Operator is KfacOperator kfac ? ExactDiagonal(kfac) : DiagonalEstimator.Estimate(Operator, options, progress, ct);

    /// <summary>The Frobenius norm by <see cref="Spectrum.FrobeniusNorm"/>, or K-FAC's exact norm.</summary>
    /// <param name="options">Target, budget, seed.</param>
    public FrobeniusEstimate FrobeniusNorm(FrobeniusOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default) =>
        Operator is KfacOperator kfac ? ExactFrobenius(kfac) : Spectrum.FrobeniusNorm.Estimate(Operator, options, progress, ct);

    /// <summary>The exact dense matrix (n products).</summary>
    public DenseMatrix Exact() => ExactHessian.Compute(Operator);

    /// <summary>K-FAC's diagonal as an estimate record (exact: standard errors 0).</summary>
    public static DiagonalEstimate ExactDiagonal(KfacOperator kfac)
    {
        using var d = kfac.Diagonal();
        var values = d.cpu().data<double>().ToArray();
        return new DiagonalEstimate { Method = "kfac-factors", Diagonal = values, StandardErrors = new double[values.Length], Probes = 0, Products = 0 };
    }

    /// <summary>K-FAC's Frobenius norm as an estimate record (exact: standard error 0).</summary>
    public static FrobeniusEstimate ExactFrobenius(KfacOperator kfac)
    {
        double norm = kfac.FrobeniusNorm();
        return new FrobeniusEstimate { Norm = norm, StandardError = 0, SquaredNorm = norm * norm, SquaredStandardError = 0, Probes = 0, Products = 0, Converged = true };
    }

    /// <summary>Disposes the objective when <see cref="Of(nn.Module{Tensor, Tensor}, LossFunction, Dataset, CurvatureKind, ObjectiveOptions?, CurvatureOperatorOptions?)"/> made it, and K-FAC's factors.</summary>
    public void Dispose()
    {
        (Operator as IDisposable)?.Dispose();
        if (_ownsObjective) Objective.Dispose();
    }
}
