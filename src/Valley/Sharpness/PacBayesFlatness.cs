using TorchSharp;
using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Options of <see cref="PacBayesFlatness"/>: the σ search (<see cref="FlatnessSearchOptions"/>) and its noise.</summary>
public sealed record PacBayesFlatnessOptions : FlatnessSearchOptions
{
    /// <summary>Monte-Carlo samples of the noise per σ (default 10).</summary>
    public int Samples { get; init; } = 10;

    /// <summary>Magnitude-aware ε of Jiang et al. (2020): noise standard deviation sqrt(σ² w_i² + ε²) (default 1e-3).</summary>
    public double MagnitudeEpsilon { get; init; } = 1e-3;

    /// <summary>Seed of the noise.</summary>
    public long Seed { get; init; }

    /// <inheritdoc/>
    public override void Validate()
    {
        base.Validate();
        Check.AtLeast(Samples, 1, nameof(Samples));
        Check.PositiveFinite(MagnitudeEpsilon, nameof(MagnitudeEpsilon));
    }
}

/// <summary>
/// PAC-Bayes flatness and bounds (Jiang et al. 2020, measures 48–61 of Appendix C; the magnitude-aware variants after
/// Dziugaite et al. 2020), over the objective's parameters and training data:
/// σ is the largest noise standard deviation whose noise N(0, σ²I) drops the training accuracy by the target
/// (<see cref="FlatnessSearch"/>); flatness = 1/σ², orig = ‖w‖²/(4σ²) + log(m/σ) + 10, init the same with w − w₀.
/// Magnitude-aware: σ' with noise standard deviation sqrt(σ'² w_i² + ε²); mag-flatness = 1/σ'²,
/// mag-orig/init = ¼ Σ_i log((ε² + (σ'² + 1)‖r‖²/ω) / (ε² + σ'² (w_i − w₀_i)²)) + log(m/σ') + 10 with r = w or w − w₀.
/// Norms run over the weight tensors (rank ≥ 2, ω entries; Jiang et al. leave out biases and BatchNorm); m is the number of
/// training examples. σ is a standard deviation (a known port passes σ² where the standard deviation belongs).
/// </summary>
public static class PacBayesFlatness
{
    /// <summary>
    /// pacbayes-flatness, -orig and (given the initialization) -init, then the same three with the prefix pacbayes-mag.
    /// </summary>
    /// <param name="objective">Model, loss and classification data (the search needs accuracies).</param>
    /// <param name="initialization">
    /// w₀ for the "init" bounds: a module of the same architecture holding the weights training started from (its parameters of
    /// the objective's names are used); null leaves the init bounds out.
    /// </param>
    /// <param name="options">The search and its noise; null: the published defaults.</param>
    /// <param name="ct">Stops the search between evaluations.</param>
    public static SharpnessResult[] Compute(Objective objective, nn.Module? initialization = null, PacBayesFlatnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new PacBayesFlatnessOptions();
        o.Validate();
        if (!objective.Parameters.Tensors.Any(t => t.dim() >= 2))
            throw SharpnessMeasure.MissingParameters(objective, "PAC-Bayes bounds need a weight tensor (rank ≥ 2)");
        using var probe = new PerturbationProbe(objective);
        var acc0 = probe.EvaluateAt(null, ct: ct).Accuracy ?? throw new ValleyException("PAC-Bayes flatness needs a classification data set (accuracy)");
        using var scope = NewDisposeScope();
        var w = WeightsOnly(objective.Parameters, probe.Origin);
        var w0 = initialization is null ? null : WeightsOnly(objective.Parameters, InitialWeights(objective.Parameters, initialization));
        long m = objective.Examples;
        var results = new List<SharpnessResult>();
        foreach (bool magnitude in new[] { false, true })
        {
            var gen = new Generator((ulong)(10348628753 + o.Seed));
            double Drop(double sigma)
            {
                double accSum = 0;
                for (int s = 0; s < o.Samples; s++)
                {
                    using var sample = NewDisposeScope();
                    var z = randn(probe.Origin.shape, dtype: ScalarType.Float64, generator: gen);
                    var std = magnitude ? (sigma * sigma * probe.Origin.pow(2) + o.MagnitudeEpsilon * o.MagnitudeEpsilon).sqrt() : full_like(probe.Origin, sigma);
                    accSum += probe.EvaluateAt(std * z, ct: ct).Accuracy!.Value;
                }
                return Math.Abs(accSum / o.Samples - acc0);
            }
            var (sigma, evals) = FlatnessSearch.Bisect(Drop, o);
            var details = new Dictionary<string, double> { ["sigma"] = sigma, ["train_accuracy"] = acc0, ["examples"] = m };
            string prefix = magnitude ? "pacbayes-mag" : "pacbayes";
            var common = new Dictionary<string, double> { ["target_drop"] = o.TargetDrop, ["tolerance"] = o.Tolerance, ["depth"] = o.Depth, ["samples"] = o.Samples };
            if (magnitude) common["epsilon"] = o.MagnitudeEpsilon;
            double omega = w.shape[0];
            double Bound(Tensor reference)
            {
                using var bound = NewDisposeScope();
                if (!magnitude) return reference.pow(2).sum().ToDouble() / (4 * sigma * sigma) + Math.Log(m / sigma) + 10;
                var dist = w0 is null ? w : w - w0;
                var num = o.MagnitudeEpsilon * o.MagnitudeEpsilon + (sigma * sigma + 1) * reference.pow(2).sum() / omega;
                var den = o.MagnitudeEpsilon * o.MagnitudeEpsilon + sigma * sigma * dist.pow(2);
                return 0.25 * (num / den).log().sum().ToDouble() + Math.Log(m / sigma) + 10;
            }
            SharpnessResult R(string name, double value) => new()
            {
                Measure = name, Parameters = common, Value = value, Details = details, LossEvaluations = (long)evals * o.Samples, Seconds = probe.Seconds,
            };
            results.Add(R($"{prefix}-flatness", 1 / (sigma * sigma)));
            results.Add(R($"{prefix}-orig", Bound(w)));
            if (w0 is not null) results.Add(R($"{prefix}-init", Bound(w - w0)));
        }
        return results.ToArray();
    }

    /// <summary>The entries of a flat vector over <paramref name="ps"/> that belong to weight tensors (rank ≥ 2).</summary>
    static Tensor WeightsOnly(ParameterSet ps, Tensor flat)
    {
        var views = ps.Unflatten(flat);
        return cat(views.Where((v, i) => ps.Tensors[i].dim() >= 2).Select(v => v.reshape(-1)).ToArray());
    }

    /// <summary>The initialization's parameters of the objective's names, flat, float64 in host memory.</summary>
    static Tensor InitialWeights(ParameterSet ps, nn.Module initialization)
    {
        var byName = initialization.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var parts = new List<Tensor>();
        for (int i = 0; i < ps.Names.Count; i++)
        {
            if (!byName.TryGetValue(ps.Names[i], out var p0) || !p0.shape.SequenceEqual(ps.Shapes[i]))
                throw new ArgumentException($"the initialization has no parameter '{ps.Names[i]}' of shape [{string.Join(", ", ps.Shapes[i])}]; " +
                                            "it must be a module of the objective's architecture", nameof(initialization));
            parts.Add(p0.detach().to(ScalarType.Float64).cpu().reshape(-1));
        }
        return cat(parts.ToArray());
    }
}
