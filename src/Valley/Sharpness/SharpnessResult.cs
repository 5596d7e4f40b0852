namespace Valley.Sharpness;

/// <summary>A sharpness or flatness measure's value with its parameters, uncertainty and cost; serializes to JSON (snake_case).</summary>
public sealed record SharpnessResult
{
    /// <summary>Measure name as results spell it, e.g. "keskar", "sam-one-step", "worst-case-l2-adaptive", "pacbayes-flatness".</summary>
    public required string Measure { get; init; }

    /// <summary>The parameters the value was computed with (e.g. "epsilon", "rho", "steps").</summary>
    public required Dictionary<string, double> Parameters { get; init; }

    /// <summary>The measure's value.</summary>
    public required double Value { get; init; }

    /// <summary>Standard error where the value is an estimate over batches or samples (NaN when it is unknown, e.g. one batch).</summary>
    public double? StandardError { get; init; }

    /// <summary>Loss at the unperturbed weights, on the data the measure used.</summary>
    public double? BaseLoss { get; init; }

    /// <summary>Loss at the maximizing perturbation, where the measure maximizes.</summary>
    public double? MaxLoss { get; init; }

    /// <summary>‖δ‖₂ of the maximizing perturbation.</summary>
    public double? PerturbationNorm { get; init; }

    /// <summary>Further values (e.g. PAC-Bayes σ and the unperturbed training accuracy).</summary>
    public Dictionary<string, double> Details { get; init; } = [];

    /// <summary>Loss evaluations over the measure's data (forward passes only).</summary>
    public long LossEvaluations { get; init; }

    /// <summary>Loss-and-gradient evaluations over the measure's data.</summary>
    public long GradientEvaluations { get; init; }

    /// <summary>Wall-clock time of the measure.</summary>
    public double Seconds { get; init; }
}
