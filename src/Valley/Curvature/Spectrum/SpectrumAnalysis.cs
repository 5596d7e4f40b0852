using System.Diagnostics;

namespace Valley.Curvature.Spectrum;

/// <summary>What <see cref="SpectrumAnalysis"/> computes; the defaults are those of <c>valley hessian</c>.</summary>
public sealed record SpectrumAnalysisOptions
{
    /// <summary>Top-k eigenvalues by Lanczos (0 = skip). Default 5.</summary>
    public int Top { get; init; } = 5;

    /// <summary>Bottom-k (most negative) eigenvalues by Lanczos (0 = skip). Default 1.</summary>
    public int Bottom { get; init; } = 1;

    /// <summary>Estimate the trace. Default true.</summary>
    public bool Trace { get; init; } = true;

    /// <summary>Estimate the spectral density by SLQ. Default true.</summary>
    public bool Density { get; init; } = true;

    /// <summary>Exact dense spectrum (only for operators of up to <see cref="ExactHessian.DefaultMaxSize"/>).</summary>
    public bool Exact { get; init; }

    /// <summary>Relative residual tolerance of Lanczos, in (0, 1). Default 1e-3.</summary>
    public double Tolerance { get; init; } = 1e-3;

    /// <summary>Relative standard error the trace estimate stops at. Default 0.01.</summary>
    public double TraceRelativeError { get; init; } = 0.01;

    /// <summary>The trace estimator Valley uses unless told otherwise (the measurement behind the choice: README, "Trace estimators").</summary>
    public const TraceMethod DefaultTraceMethod = TraceMethod.Auto;

    /// <summary>The trace estimator. Default <see cref="DefaultTraceMethod"/>.</summary>
    public TraceMethod TraceMethod { get; init; } = DefaultTraceMethod;

    /// <summary>Product budget of each estimator (Lanczos top, Lanczos bottom, trace), at least 10. Default 1000.</summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>SLQ runs. Default 10 (Ghorbani et al. 2019).</summary>
    public int DensityRuns { get; init; } = 10;

    /// <summary>SLQ Lanczos steps per run, at least 2. Default 80 (Ghorbani et al. 2019).</summary>
    public int DensitySteps { get; init; } = 80;

    /// <summary>Seed; each estimator derives its own from it.</summary>
    public long Seed { get; init; }
}

/// <summary>The exact spectrum of a small operator (dense eigendecomposition), the ground truth.</summary>
/// <param name="Eigenvalues">All eigenvalues, ascending.</param>
/// <param name="Trace">The exact trace.</param>
/// <param name="Asymmetry">max |A_ij − A_ji| / max |A_ij| of the products before symmetrization.</param>
/// <param name="Products">Operator-vector products (the operator's size).</param>
/// <param name="Seconds">Wall-clock time.</param>
public sealed record ExactSpectrum(double[] Eigenvalues, double Trace, double Asymmetry, long Products, double Seconds);

/// <summary>Everything <see cref="SpectrumAnalysis"/> found, serializable to JSON.</summary>
public sealed record SpectrumReport
{
    /// <summary>The operator's size n.</summary>
    public required long Size { get; init; }

    /// <summary>The options it was computed with.</summary>
    public required SpectrumAnalysisOptions Options { get; init; }

    /// <summary>Top eigenpairs, when asked for.</summary>
    public Eigenpairs? Top { get; init; }

    /// <summary>Bottom eigenpairs, when asked for.</summary>
    public Eigenpairs? Bottom { get; init; }

    /// <summary>Trace estimate, when asked for.</summary>
    public TraceEstimate? Trace { get; init; }

    /// <summary>Spectral density, when asked for.</summary>
    public SpectralDensity? Density { get; init; }

    /// <summary>Exact spectrum, when asked for.</summary>
    public ExactSpectrum? Exact { get; init; }

    /// <summary>λmax from the most accurate estimate there is: exact, Lanczos, or the density's largest node.</summary>
    public double? LambdaMax => Exact?.Eigenvalues[^1] ?? Top?.Values[0] ?? Density?.LambdaMax;

    /// <summary>λmin, likewise.</summary>
    public double? LambdaMin => Exact?.Eigenvalues[0] ?? Bottom?.Values[0] ?? Density?.LambdaMin;

    /// <summary>|λmin / λmax|: how non-convex the neighbourhood is (Li et al. 2018).</summary>
    public double? NegativeRatio => LambdaMax is { } a && LambdaMin is { } b && a != 0 ? Math.Abs(b / a) : null;

    /// <summary>Products of all stages (those of a resumed run's finished stages included).</summary>
    public long Products { get; init; }

    /// <summary>Wall-clock time of this run.</summary>
    public double Seconds { get; init; }
}

/// <summary>
/// Runs the spectrum estimators on one operator in turn (top-k, bottom-k, trace, density, exact), reporting partial
/// results after every stage so that callers can write them as they come.
/// </summary>
public static class SpectrumAnalysis
{
    /// <summary>Runs every stage the options ask for.</summary>
    /// <param name="op">The operator (e.g. a <see cref="HessianOperator"/>).</param>
    /// <param name="o">What to compute.</param>
    /// <param name="progress">Progress of each estimator.</param>
    /// <param name="partial">Called with the report after every finished stage.</param>
    /// <param name="ct">Checked by every estimator.</param>
    /// <param name="resumeFrom">
    /// An earlier, interrupted run with the same options on the same operator: its finished stages are kept and only the
    /// missing ones are computed (every stage is deterministic given the seed, so the result is that of an uninterrupted run).
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="SpectrumAnalysisOptions"/>).</exception>
    public static SpectrumReport Run(ICurvatureOperator op, SpectrumAnalysisOptions o, IProgress<EstimatorProgress>? progress = null,
        Action<SpectrumReport>? partial = null, CancellationToken ct = default, SpectrumReport? resumeFrom = null)
    {
        Validate(op, o);
        var sw = Stopwatch.StartNew();
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
        }
        SpectrumReport Update(SpectrumReport r)
        {
            r = r with
            {
                Products = (r.Top?.Products ?? 0) + (r.Bottom?.Products ?? 0) + (r.Trace?.Products ?? 0) + (r.Density?.Products ?? 0) + (r.Exact?.Products ?? 0),
                Seconds = sw.Elapsed.TotalSeconds,
            };
            partial?.Invoke(r);
            return r;
        }
        if (o.Top > 0 && report.Top is null)
            report = Update(report with { Top = Lanczos.Compute(op, new LanczosOptions { K = o.Top, Target = EigenTarget.Largest, Tolerance = o.Tolerance, MaxProducts = o.MaxProducts, Seed = o.Seed }, progress, ct) });
        if (o.Bottom > 0 && report.Bottom is null)
            report = Update(report with { Bottom = Lanczos.Compute(op, new LanczosOptions { K = o.Bottom, Target = EigenTarget.Smallest, Tolerance = o.Tolerance, MaxProducts = o.MaxProducts, Seed = o.Seed + 1 }, progress, ct) });
        if (o.Trace && report.Trace is null)
            report = Update(report with
            {
                Trace = (o.TraceMethod == TraceMethod.Auto ? ExactDiagonalEstimates.TryTrace(op, ct) : null) ?? o.TraceMethod switch
                {
                    TraceMethod.Hutchinson => Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = o.TraceRelativeError, MaxProducts = o.MaxProducts, Seed = o.Seed + 2 }, progress, ct),
                    TraceMethod.HutchPlusPlus => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { RelativeStandardError = o.TraceRelativeError, MaxProducts = o.MaxProducts, Seed = o.Seed + 2 }, progress, ct),
                    _ => XTrace.Estimate(op, new XTraceOptions { RelativeStandardError = o.TraceRelativeError, MaxProducts = o.MaxProducts, Seed = o.Seed + 2 }, progress, ct),
                },
            });
        if (o.Density && report.Density is null)
            report = Update(report with { Density = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = o.DensityRuns, Steps = o.DensitySteps, Seed = o.Seed + 3 }, progress, ct) });
        if (o.Exact && report.Exact is null)
        {
            var esw = Stopwatch.StartNew();
            var dense = ExactHessian.Compute(op, progress: new SyncProgress<long>(done => progress?.Report(new EstimatorProgress("exact", done, op.Size, null))));
            report = Update(report with { Exact = new ExactSpectrum(dense.Eigenvalues(), dense.Trace(), dense.Asymmetry, op.Size, esw.Elapsed.TotalSeconds) });
        }
        return Update(report);
    }

    /// <summary>Checks the options against the operator before anything is computed.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="SpectrumAnalysisOptions"/>).</exception>
    public static void Validate(ICurvatureOperator op, SpectrumAnalysisOptions o)
    {
        if (o.Top < 0 || o.Top > op.Size) throw Check.OutOfRange(nameof(o.Top), o.Top, $"must be between 0 and the number of parameters ({op.Size})");
        if (o.Bottom < 0 || o.Bottom > op.Size) throw Check.OutOfRange(nameof(o.Bottom), o.Bottom, $"must be between 0 and the number of parameters ({op.Size})");
        Check.Between(o.Tolerance, 0, 1, nameof(o.Tolerance));
        Check.PositiveFinite(o.TraceRelativeError, nameof(o.TraceRelativeError));
        // At least 10, and enough for Lanczos to find the top and bottom eigenpairs and verify them.
        Check.AtLeast(o.MaxProducts, Math.Max(10, Math.Max(Lanczos.MinimumProducts(op.Size, new LanczosOptions { K = Math.Max(1, o.Top) }),
            Lanczos.MinimumProducts(op.Size, new LanczosOptions { K = Math.Max(1, o.Bottom) }))), nameof(o.MaxProducts));
        if (!Enum.IsDefined(o.TraceMethod)) throw Check.OutOfRange(nameof(o.TraceMethod), o.TraceMethod, "must be Auto, Hutchinson, HutchPlusPlus or XTrace");
        Check.AtLeast(o.DensityRuns, 1, nameof(o.DensityRuns));
        Check.AtLeast(o.DensitySteps, 2, nameof(o.DensitySteps));
        if (o.Exact && op.Size > ExactHessian.DefaultMaxSize)
            throw Check.OutOfRange(nameof(o.Exact), null,
                $"the exact spectrum is for up to {ExactHessian.DefaultMaxSize} parameters and this operator has {op.Size} (select fewer parameters, e.g. one layer)");
    }
}
