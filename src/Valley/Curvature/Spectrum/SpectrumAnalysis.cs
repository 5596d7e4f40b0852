using System.Diagnostics;

namespace Valley.Curvature.Spectrum;

/// <summary>What <see cref="SpectrumAnalysis"/> computes; the defaults are those of <c>valley hessian</c>.</summary>
public sealed record SpectrumAnalysisOptions
{
    /// <summary>Top-k eigenvalues (0 = skip).</summary>
    public int Top { get; init; } = 5;
    /// <summary>Bottom-k (most negative) eigenvalues (0 = skip).</summary>
    public int Bottom { get; init; } = 1;
    public bool Trace { get; init; } = true;
    public bool Density { get; init; } = true;
    /// <summary>Exact dense spectrum (only for operators of up to <see cref="ExactHessian.DefaultMaxSize"/>).</summary>
    public bool Exact { get; init; }
    /// <summary>Relative residual tolerance of Lanczos.</summary>
    public double Tolerance { get; init; } = 1e-3;
    /// <summary>Relative standard error the trace estimate stops at.</summary>
    public double TraceRelativeError { get; init; } = 0.01;
    public string TraceMethod { get; init; } = "hutch++";
    /// <summary>Product budget of each estimator.</summary>
    public long MaxProducts { get; init; } = 1000;
    public int DensityRuns { get; init; } = 10;
    public int DensitySteps { get; init; } = 80;
    public long Seed { get; init; }
}

/// <summary>The exact spectrum of a small operator (dense eigendecomposition), the ground truth.</summary>
public sealed record ExactSpectrum(double[] Eigenvalues, double Trace, double Asymmetry, long Products, double Seconds);

/// <summary>Everything <see cref="SpectrumAnalysis"/> found, serializable to JSON.</summary>
public sealed record SpectrumReport
{
    public required long Size { get; init; }
    public required SpectrumAnalysisOptions Options { get; init; }
    public Eigenpairs? Top { get; init; }
    public Eigenpairs? Bottom { get; init; }
    public TraceEstimate? Trace { get; init; }
    public SpectralDensity? Density { get; init; }
    public ExactSpectrum? Exact { get; init; }
    public double? LambdaMax => Exact?.Eigenvalues[^1] ?? Top?.Values[0] ?? Density?.LambdaMax;
    public double? LambdaMin => Exact?.Eigenvalues[0] ?? Bottom?.Values[0] ?? Density?.LambdaMin;
    /// <summary>|λmin / λmax|: how non-convex the neighbourhood is (Li et al. 2018).</summary>
    public double? NegativeRatio => LambdaMax is { } a && LambdaMin is { } b && a != 0 ? Math.Abs(b / a) : null;
    public long Products { get; init; }
    public double Seconds { get; init; }
}

/// <summary>
/// Runs the spectrum estimators on one operator in turn (top-k, bottom-k, trace, density, exact), reporting partial
/// results after every stage so that callers can write them as they come.
/// </summary>
public static class SpectrumAnalysis
{
    /// <param name="resumeFrom">
    /// An earlier, interrupted run with the same options on the same operator: its finished stages are kept and only the
    /// missing ones are computed (every stage is deterministic given the seed, so the result is that of an uninterrupted run).
    /// </param>
    public static SpectrumReport Run(ICurvatureOperator op, SpectrumAnalysisOptions o, IProgress<EstimatorProgress>? progress = null,
        Action<SpectrumReport>? partial = null, CancellationToken ct = default, SpectrumReport? resumeFrom = null)
    {
        Validate(op, o);
        var sw = Stopwatch.StartNew();
        long start = op.Products;
        if (resumeFrom is not null && (resumeFrom.Size != op.Size || resumeFrom.Options != o)) resumeFrom = null;
        var report = new SpectrumReport { Size = op.Size, Options = o };
        if (resumeFrom is not null)
        {
            var d = resumeFrom.Density;
            if (d is not null)
            {
                var (grid, density, _) = StochasticLanczosQuadrature.Broaden(d.Nodes, d.Weights, new SpectralDensityOptions().Sigma2, new SpectralDensityOptions().GridPoints);
                d = d with { Grid = grid, Density = density };
            }
            report = report with { Top = resumeFrom.Top, Bottom = resumeFrom.Bottom, Trace = resumeFrom.Trace, Density = d, Exact = resumeFrom.Exact };
            start -= (report.Top?.Products ?? 0) + (report.Bottom?.Products ?? 0) + (report.Trace?.Products ?? 0) + (report.Density?.Products ?? 0) + (report.Exact?.Products ?? 0);
        }
        SpectrumReport Update(SpectrumReport r)
        {
            r = r with { Products = op.Products - start, Seconds = sw.Elapsed.TotalSeconds };
            partial?.Invoke(r);
            return r;
        }
        if (o.Top > 0 && report.Top is null)
            report = Update(report with { Top = Lanczos.Compute(op, new LanczosOptions { K = o.Top, Target = EigenTarget.Largest, Tolerance = o.Tolerance, MaxProducts = o.MaxProducts, Seed = o.Seed, Progress = progress, Cancellation = ct }) });
        if (o.Bottom > 0 && report.Bottom is null)
            report = Update(report with { Bottom = Lanczos.Compute(op, new LanczosOptions { K = o.Bottom, Target = EigenTarget.Smallest, Tolerance = o.Tolerance, MaxProducts = o.MaxProducts, Seed = o.Seed + 1, Progress = progress, Cancellation = ct }) });
        if (o.Trace && report.Trace is null)
            report = Update(report with
            {
                Trace = o.TraceMethod == "hutchinson"
                    ? Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = o.TraceRelativeError, MaxProducts = o.MaxProducts, Seed = o.Seed + 2, Progress = progress, Cancellation = ct })
                    : HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { Products = 30, RelativeStandardError = o.TraceRelativeError, MaxProducts = o.MaxProducts, Seed = o.Seed + 2, Progress = progress, Cancellation = ct }),
            });
        if (o.Density && report.Density is null)
            report = Update(report with { Density = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = o.DensityRuns, Steps = o.DensitySteps, Seed = o.Seed + 3, Progress = progress, Cancellation = ct }) });
        if (o.Exact && report.Exact is null)
        {
            var esw = Stopwatch.StartNew();
            long p0 = op.Products;
            var dense = ExactHessian.Compute(op, progress: new SyncProgress<long>(done => progress?.Report(new EstimatorProgress("exact", done, op.Size, null))));
            report = Update(report with { Exact = new ExactSpectrum(dense.Eigenvalues(), dense.Trace(), dense.Asymmetry, op.Products - p0, esw.Elapsed.TotalSeconds) });
        }
        return Update(report);
    }

    public static void Validate(ICurvatureOperator op, SpectrumAnalysisOptions o)
    {
        if (o.Top < 0 || o.Top > op.Size) throw new ValleyException($"--top: must be between 0 and the number of parameters ({op.Size}), got {o.Top}");
        if (o.Bottom < 0 || o.Bottom > op.Size) throw new ValleyException($"--bottom: must be between 0 and the number of parameters ({op.Size}), got {o.Bottom}");
        if (!(o.Tolerance > 0) || o.Tolerance >= 1) throw new ValleyException($"--tol: must be in (0, 1), got {o.Tolerance}");
        if (!(o.TraceRelativeError > 0) || !double.IsFinite(o.TraceRelativeError)) throw new ValleyException($"--trace-error: must be a positive finite number, got {o.TraceRelativeError}");
        if (o.MaxProducts < 10) throw new ValleyException($"--max-products: must be at least 10, got {o.MaxProducts}");
        if (o.TraceMethod is not ("hutchinson" or "hutch++")) throw new ValleyException($"--trace-method: hutchinson or hutch++, got '{o.TraceMethod}'");
        if (o.DensityRuns < 1 || o.DensitySteps < 2) throw new ValleyException($"--density-runs must be ≥ 1 and --density-steps ≥ 2, got {o.DensityRuns} and {o.DensitySteps}");
        if (o.Exact && op.Size > ExactHessian.DefaultMaxSize) throw new ValleyException($"--exact: the model has {op.Size} parameters; the exact Hessian is for up to {ExactHessian.DefaultMaxSize} (restrict with --layer)");
    }
}

/// <summary>An <see cref="IProgress{T}"/> that calls its handler synchronously on the reporting thread.</summary>
public sealed class SyncProgress<T>(Action<T> handler) : IProgress<T>
{
    public void Report(T value) => handler(value);
}
