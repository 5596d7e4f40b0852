using System.Diagnostics;
using Valley.Curvature;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>A sharpness or flatness measure's value with its parameters, uncertainty and cost.</summary>
public sealed record SharpnessResult
{
    /// <summary>Measure name, e.g. "keskar", "worst-case-l2-adaptive", "pacbayes-flatness".</summary>
    public required string Measure { get; init; }
    public required Dictionary<string, double> Parameters { get; init; }
    public required double Value { get; init; }
    /// <summary>Standard error where the value is an estimate over batches or samples.</summary>
    public double? StandardError { get; init; }
    /// <summary>Loss at the unperturbed weights, on the data the measure used.</summary>
    public double? BaseLoss { get; init; }
    /// <summary>Loss at the maximizing perturbation, where the measure maximizes.</summary>
    public double? MaxLoss { get; init; }
    /// <summary>‖δ‖₂ of the maximizing perturbation.</summary>
    public double? PerturbationNorm { get; init; }
    /// <summary>Further values (e.g. PAC-Bayes σ and bounds).</summary>
    public Dictionary<string, double> Details { get; init; } = [];
    public long LossEvaluations { get; init; }
    public long GradientEvaluations { get; init; }
    public double Seconds { get; init; }
}

/// <summary>
/// Loss, accuracy and gradients of a model on some data at perturbed weights, counting evaluations; every perturbation is
/// undone from exact copies, so the weights afterwards are bit-identical to before.
/// </summary>
public sealed class PerturbationProbe : IDisposable
{
    readonly Objective _obj;
    readonly WeightSnapshot _origin;
    readonly Stopwatch _sw = Stopwatch.StartNew();
    public long LossEvaluations { get; private set; }
    public long GradientEvaluations { get; private set; }
    public ParameterSet Parameters => _obj.Parameters;
    public Objective Objective => _obj;
    /// <summary>
    /// The unperturbed weights w as a flat vector, float64 in host memory: the measures' bookkeeping (random directions from
    /// seeded CPU generators, projections, searches) happens there whatever the model's device; only evaluations run on it.
    /// </summary>
    public Tensor Origin { get; }

    public PerturbationProbe(Objective objective)
    {
        _obj = objective;
        _origin = objective.Parameters.Snapshot();
        Origin = objective.Parameters.GetFlat().to(ScalarType.Float64).cpu().DetachFromDisposeScope();
    }

    public double Seconds => _sw.Elapsed.TotalSeconds;

    /// <summary>Loss (and accuracy) at w + δ on the objective's data (or another data set), weights restored afterwards.</summary>
    public Evaluation EvaluateAt(Tensor? delta, Dataset? data = null, CancellationToken ct = default)
    {
        try
        {
            if (delta is not null) _obj.Parameters.AddInPlace(delta.to(_obj.Parameters.DType, _obj.Parameters.Device));
            LossEvaluations++;
            return data is null ? _obj.Evaluate(ct) : _obj.Evaluate(data, ct);
        }
        finally { _origin.Restore(); }
    }

    /// <summary>Loss and gradient (float64 flat) at w + δ, weights restored afterwards.</summary>
    public (double Loss, Tensor Gradient) GradientAt(Tensor? delta, CancellationToken ct = default)
    {
        try
        {
            if (delta is not null) _obj.Parameters.AddInPlace(delta.to(_obj.Parameters.DType, _obj.Parameters.Device));
            GradientEvaluations++;
            var (l, g) = _obj.LossAndGradient(ct);
            return (l, g.to(ScalarType.Float64).cpu());
        }
        finally { _origin.Restore(); }
    }

    public void Dispose()
    {
        _origin.Restore();
        _origin.Dispose();
        Origin.Dispose();
    }
}
