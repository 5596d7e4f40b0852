namespace Valley.Curvature.Spectrum;

/// <summary>A stochastic trace estimator.</summary>
public enum TraceMethod
{
    /// <summary><see cref="Spectrum.Hutchinson"/>: the mean of zᵀAz over random probes.</summary>
    Hutchinson,

    /// <summary><see cref="Spectrum.HutchPlusPlus"/>: the exact trace of a low-rank sketch plus Hutchinson on the rest.</summary>
    HutchPlusPlus,

    /// <summary><see cref="Spectrum.XTrace"/>: every test vector both sketches and probes, exchangeably (Epperly, Tropp, Webber 2024).</summary>
    XTrace,

    /// <summary>
    /// The exact trace, Σ diag(A), when the operator can give its diagonal (<see cref="IExactDiagonal"/>: the Hessian or GGN
    /// of a stack of Linear layers, for about one product's work); <see cref="XTrace"/> otherwise.
    /// </summary>
    Auto,
}

/// <summary>A stochastic trace estimate with its standard error.</summary>
public sealed record TraceEstimate
{
    /// <summary>The estimator that produced it: "hutchinson", "hutch++", "xtrace", or "exact" (from the operator's exact diagonal, <see cref="TraceMethod.Auto"/>).</summary>
    public required string Method { get; init; }

    /// <summary>The estimate of tr(A).</summary>
    public required double Trace { get; init; }

    /// <summary>
    /// Standard error of <see cref="Trace"/>: the sample standard deviation of the probe values / √probes. NaN (unknown) with
    /// fewer than two probes; zero only when the estimate is exact (a Hutch++ sketch that spans the whole space).
    /// </summary>
    public required double StandardError { get; init; }

    /// <summary>Random probes (Hutchinson's, Hutch++'s residual probes, or XTrace's test vectors).</summary>
    public required int Probes { get; init; }

    /// <summary>Operator-vector products asked for, all of them (sketch and low-rank part included).</summary>
    public required long Products { get; init; }

    /// <summary>Whether the standard error reached the target (always true for Hutch++'s fixed-budget form).</summary>
    public required bool Converged { get; init; }

    /// <summary>Wall-clock time.</summary>
    public double Seconds { get; init; }

    /// <summary>Hutch++ and XTrace: the exactly computed trace of the low-rank part QᵀAQ (XTrace: of the whole sketch).</summary>
    public double? LowRankTrace { get; init; }

    /// <summary>Hutch++ and XTrace: the sketch size s (columns of Q).</summary>
    public int? SketchSize { get; init; }
}
