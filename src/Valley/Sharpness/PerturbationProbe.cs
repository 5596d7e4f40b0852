using System.Diagnostics;
using Valley.Curvature;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Loss, accuracy and gradients of an <see cref="Curvature.Objective"/> at perturbed weights w + δ, counting evaluations. Only
/// the objective's parameters (its <see cref="ObjectiveOptions.ParameterFilter"/>) are perturbed, and every perturbation is
/// undone from exact copies, so the weights afterwards are bit-identical to before.
/// </summary>
public sealed class PerturbationProbe : IDisposable
{
    readonly Objective _obj;
    readonly WeightSnapshot _origin;
    readonly Stopwatch _sw = Stopwatch.StartNew();

    /// <summary>Loss (and accuracy) evaluations so far.</summary>
    public long LossEvaluations { get; private set; }

    /// <summary>Loss-and-gradient evaluations so far.</summary>
    public long GradientEvaluations { get; private set; }

    /// <summary>The parameters δ applies to: the objective's.</summary>
    public ParameterSet Parameters => _obj.Parameters;

    /// <summary>The objective evaluated.</summary>
    public Objective Objective => _obj;

    /// <summary>
    /// The unperturbed weights w as a flat vector, float64 in host memory: the measures' bookkeeping (random directions from
    /// seeded CPU generators, projections, searches) happens there whatever the model's device; only evaluations run on it.
    /// </summary>
    public Tensor Origin { get; }

    /// <summary>A probe of <paramref name="objective"/> at its current weights.</summary>
    public PerturbationProbe(Objective objective)
    {
        _obj = objective;
        _origin = objective.Parameters.Snapshot();
        Origin = objective.Parameters.GetFlat().to(ScalarType.Float64).cpu().DetachFromDisposeScope();
    }

    /// <summary>Seconds since the probe was made.</summary>
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

    /// <summary>Loss and gradient (float64 flat, host memory) at w + δ, weights restored afterwards.</summary>
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

    /// <summary>Restores the weights and frees the copies.</summary>
    public void Dispose()
    {
        _origin.Restore();
        _origin.Dispose();
        Origin.Dispose();
    }
}
