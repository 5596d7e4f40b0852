using Valley.Curvature;
using Valley.Data;

namespace Valley.Sharpness;

/// <summary>What a measure needs of the objective it runs on.</summary>
[Flags]
public enum MeasureNeeds
{
    /// <summary>Any model, parameters and data.</summary>
    None = 0,
    /// <summary>Classification data: the measure searches on the training accuracy.</summary>
    Classification = 1,
    /// <summary>A weight tensor (rank ≥ 2) among the objective's parameters.</summary>
    WeightTensor = 2,
    /// <summary>A weight matrix (rank 2) among the objective's parameters.</summary>
    WeightMatrix = 4,
    /// <summary>A bias-free ReLU <see cref="Models.Mlp"/> over all its parameters.</summary>
    BiasFreeReluMlp = 8,
    /// <summary>Per-example gradients: not in train mode on a model with BatchNorm, whose batch statistics couple the examples.</summary>
    IndependentExamples = 16,
}

/// <summary>
/// A measure as <see cref="SharpnessSuite"/> knows it: its name as the valley command and the results' JSON spell it, what it
/// computes, what it needs, and how it runs from the suite's options. The registry is <see cref="SharpnessMeasures"/>.
/// </summary>
public sealed record SharpnessMeasure
{
    /// <summary>The name the command line and sharpness.json's "finished" list use (e.g. "worst-case-l2-adaptive").</summary>
    public required string Name { get; init; }

    /// <summary>One line on what it computes and after whom.</summary>
    public required string Description { get; init; }

    /// <summary>What it needs of the objective.</summary>
    public MeasureNeeds Needs { get; init; }

    /// <summary>
    /// Runs the measure on an objective with the suite's options, giving its results one by one as they are computed (a measure
    /// may give several, e.g. one per ε).
    /// </summary>
    public required Func<Objective, SharpnessSuiteOptions, CancellationToken, IEnumerable<SharpnessResult>> Run { get; init; }

    /// <summary>Whether the objective has what the measure needs.</summary>
    public bool AppliesTo(Objective objective) => Unmet(objective) is null;

    /// <summary>The error that running the measure on this objective would end in for lack of what it needs; null when it has it.</summary>
    internal Exception? Unmet(Objective objective)
    {
        var tensors = objective.Parameters.Tensors;
        if (Needs.HasFlag(MeasureNeeds.Classification) && objective.Data.Task != TaskKind.Classification)
            return new ValleyException($"{Name}: needs a classification data set (it searches on the training accuracy)");
        if (Needs.HasFlag(MeasureNeeds.WeightTensor) && !tensors.Any(t => t.dim() >= 2))
            return MissingParameters(objective, $"{Name}: needs a weight tensor (rank ≥ 2)");
        if (Needs.HasFlag(MeasureNeeds.WeightMatrix) && !tensors.Any(t => t.dim() == 2))
            return MissingParameters(objective, $"{Name}: needs a weight matrix (rank-2 parameter)");
        if (Needs.HasFlag(MeasureNeeds.BiasFreeReluMlp) && !FisherRaoNorm.Applies(objective))
            return new ValleyException($"{Name}: needs a bias-free ReLU MLP (e.g. mlp:784-128-64-10:nobias) over all its parameters");
        if (Needs.HasFlag(MeasureNeeds.IndependentExamples) && PerExampleCurvature.DependentExamples(objective, Name, "use eval mode") is { } coupled)
            return coupled;
        return null;
    }

    /// <summary>
    /// The error for a measure that finds none of the parameters it needs among the objective's: a bad argument (the parameter
    /// filter) when the objective selects some parameters, a problem of the model otherwise.
    /// </summary>
    internal static Exception MissingParameters(Objective objective, string need)
    {
        var selected = string.Join(", ", objective.Parameters.Names);
        return objective.Options.ParameterFilter is null
            ? new ValleyException($"{need}; the model's trainable parameters are {selected}")
            : new ArgumentException($"{need} among the selected parameters ({selected})", nameof(ObjectiveOptions.ParameterFilter));
    }

    /// <summary>The name.</summary>
    public override string ToString() => Name;
}

/// <summary>
/// The registry of the measures <see cref="SharpnessSuite"/> runs, in the order "all" runs them. Each runs with the suite's
/// options where it has them (ε list, ρ, steps, samples, seed) and its published defaults otherwise.
/// </summary>
public static class SharpnessMeasures
{
    /// <summary>Keskar et al. (2017) ε-sharpness in the full space, one result per ε.</summary>
    public static SharpnessMeasure Keskar { get; } = new()
    {
        Name = "keskar", Description = "Keskar et al. 2017 ε-sharpness, full space (projected sign ascent), one per ε",
        Run = (obj, o, ct) => o.Epsilons.Select(e =>
        {
            var k = new KeskarOptions { Epsilon = e, Seed = o.Seed };
            return KeskarSharpness.Compute(obj, o.Steps is { } s ? k with { Steps = s } : k, ct);
        }),
    };

    /// <summary>Keskar et al. (2017) ε-sharpness in a random subspace of dimension min(100, n), one result per ε.</summary>
    public static SharpnessMeasure KeskarSubspace { get; } = new()
    {
        Name = "keskar-subspace", Description = "Keskar et al. 2017 ε-sharpness in a random 100-dimensional subspace (L-BFGS-B), one per ε",
        Run = (obj, o, ct) => o.Epsilons.Select(e =>
            KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = e, SubspaceDimension = (int)Math.Min(100, obj.Size), Seed = o.Seed }, ct)),
    };

    /// <summary>SAM's one-step sharpness (Foret et al. 2021); its result is "sam-one-step".</summary>
    public static SharpnessMeasure Sam { get; } = new()
    {
        Name = "sam", Description = "SAM one-step sharpness L(w + ρ g/‖g‖) − L(w), ρ = 0.05 (Foret et al. 2021)",
        Run = (obj, o, ct) => [SamSharpness.Compute(obj, o.Rho is { } rho ? new SamSharpnessOptions { Rho = rho } : null, ct)],
    };

    /// <summary>Worst-case L2 sharpness (Andriushchenko et al. 2023).</summary>
    public static SharpnessMeasure WorstCaseL2 { get; } = WorstCase(PerturbationNorm.L2, adaptive: false);

    /// <summary>Adaptive worst-case L2 sharpness (Andriushchenko et al. 2023 after Kwon et al. 2021).</summary>
    public static SharpnessMeasure WorstCaseL2Adaptive { get; } = WorstCase(PerturbationNorm.L2, adaptive: true);

    /// <summary>Worst-case L∞ sharpness (Andriushchenko et al. 2023).</summary>
    public static SharpnessMeasure WorstCaseLInf { get; } = WorstCase(PerturbationNorm.LInf, adaptive: false);

    /// <summary>Adaptive worst-case L∞ sharpness (Andriushchenko et al. 2023).</summary>
    public static SharpnessMeasure WorstCaseLInfAdaptive { get; } = WorstCase(PerturbationNorm.LInf, adaptive: true);

    /// <summary>Average-case sharpness under Gaussian noise (Andriushchenko et al. 2023).</summary>
    public static SharpnessMeasure AverageCase { get; } = AverageCaseOf(adaptive: false);

    /// <summary>Adaptive average-case sharpness: noise scaled by |w|.</summary>
    public static SharpnessMeasure AverageCaseAdaptive { get; } = AverageCaseOf(adaptive: true);

    /// <summary>PAC-Bayes flatness and bounds, plain and magnitude-aware (Jiang et al. 2020; Dziugaite et al. 2020).</summary>
    public static SharpnessMeasure PacBayes { get; } = new()
    {
        Name = "pacbayes", Description = "PAC-Bayes flatness 1/σ² and bounds, plain and magnitude-aware (Jiang et al. 2020, Dziugaite et al. 2020)",
        Needs = MeasureNeeds.Classification | MeasureNeeds.WeightTensor,
        Run = (obj, o, ct) =>
        {
            var p = new PacBayesFlatnessOptions { Seed = o.Seed };
            return PacBayesFlatness.Compute(obj, o.Initialization, o.Samples is { } n ? p with { Samples = n } : p, ct);
        },
    };

    /// <summary>Worst-case flatness 1/α², plain and magnitude-aware (Jiang et al. 2020).</summary>
    public static SharpnessMeasure WorstCaseFlatness { get; } = new()
    {
        Name = "worst-case-flatness", Description = "worst-case flatness 1/α², plain and magnitude-aware (Jiang et al. 2020)",
        Needs = MeasureNeeds.Classification,
        Run = (obj, o, ct) => Sharpness.WorstCaseFlatness.Compute(obj, o.Steps is { } s ? new WorstCaseFlatnessOptions { AscentSteps = s } : null, ct),
    };

    /// <summary>Relative flatness of one layer (Petzka et al. 2021).</summary>
    public static SharpnessMeasure RelativeFlatness { get; } = new()
    {
        Name = "relative-flatness", Description = "relative flatness of the last weight matrix, from its exact Hessian (Petzka et al. 2021)",
        Needs = MeasureNeeds.WeightMatrix,
        Run = (obj, o, ct) => [Sharpness.RelativeFlatness.Compute(obj, new RelativeFlatnessOptions { Layer = o.Layer }, ct)],
    };

    /// <summary>Trace of the empirical Fisher.</summary>
    public static SharpnessMeasure FisherTrace { get; } = new()
    {
        Name = "fisher-trace", Description = "trace of the empirical Fisher: mean squared per-example gradient norm",
        Needs = MeasureNeeds.IndependentExamples,
        Run = (obj, _, ct) => [Sharpness.FisherTrace.Compute(obj, ct)],
    };

    /// <summary>Fisher-Rao norm (Liang et al. 2019); its result is "fisher-rao-norm".</summary>
    public static SharpnessMeasure FisherRao { get; } = new()
    {
        Name = "fisher-rao", Description = "Fisher-Rao norm of a bias-free ReLU MLP (Liang et al. 2019)",
        Needs = MeasureNeeds.BiasFreeReluMlp,
        Run = (obj, _, ct) => [FisherRaoNorm.Compute(obj, ct)],
    };

    /// <summary>Every measure, in the order "all" runs them.</summary>
    public static IReadOnlyList<SharpnessMeasure> All { get; } =
    [
        Keskar, KeskarSubspace, Sam, WorstCaseL2, WorstCaseL2Adaptive, WorstCaseLInf, WorstCaseLInfAdaptive, AverageCase, AverageCaseAdaptive,
        PacBayes, WorstCaseFlatness, RelativeFlatness, FisherTrace, FisherRao,
    ];

    /// <summary>The measure of this name; <see cref="ArgumentException"/> for an unknown one.</summary>
    public static SharpnessMeasure Get(string name) =>
        All.FirstOrDefault(m => m.Name == name)
        ?? throw new ArgumentException($"unknown measure '{name}' (known: {string.Join(", ", All.Select(m => m.Name))}, all)", nameof(SharpnessSuiteOptions.Measures));

    /// <summary>
    /// Measures by name, in the order given, each once. "all" among them means every measure the objective can run, which
    /// <see cref="SharpnessSuiteOptions.Measures"/> spells null.
    /// </summary>
    public static IReadOnlyList<SharpnessMeasure>? Resolve(IEnumerable<string> names)
    {
        var list = names.ToList();
        if (list.Contains("all")) return null;
        if (list.Count == 0) throw new ArgumentException("must name at least one measure, or all", nameof(SharpnessSuiteOptions.Measures));
        return list.Distinct().Select(Get).ToList();
    }

    static SharpnessMeasure WorstCase(PerturbationNorm norm, bool adaptive)
    {
        var defaults = new WorstCaseSharpnessOptions { Norm = norm, Adaptive = adaptive };
        return new()
        {
            Name = defaults.MeasureName,
            Description = $"{(adaptive ? "adaptive " : "")}worst-case {(norm == PerturbationNorm.L2 ? "L2" : "L∞")} m-sharpness by Auto-PGD, " +
                          $"ρ = {defaults.EffectiveRho.ToString(System.Globalization.CultureInfo.InvariantCulture)} (Andriushchenko et al. 2023)",
            Run = (obj, o, ct) =>
            {
                var w = defaults with { Rho = o.Rho, Seed = o.Seed };
                return [WorstCaseSharpness.Compute(obj, o.Steps is { } s ? w with { Steps = s } : w, ct)];
            },
        };
    }

    static SharpnessMeasure AverageCaseOf(bool adaptive)
    {
        var defaults = new AverageCaseSharpnessOptions { Adaptive = adaptive };
        return new()
        {
            Name = defaults.MeasureName,
            Description = $"{(adaptive ? "adaptive " : "")}average-case sharpness under Gaussian noise, " +
                          $"ρ = {defaults.EffectiveRho.ToString(System.Globalization.CultureInfo.InvariantCulture)} (Andriushchenko et al. 2023)",
            Run = (obj, o, ct) =>
            {
                var a = defaults with { Rho = o.Rho, Seed = o.Seed };
                return [AverageCaseSharpness.Compute(obj, o.Samples is { } n ? a with { Samples = n } : a, ct)];
            },
        };
    }
}
