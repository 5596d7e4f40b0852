using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Which measures <see cref="SharpnessSuite"/> runs and their shared parameters (null: each measure's published default).</summary>
public sealed record SharpnessSuiteOptions
{
    /// <summary>
    /// The measures, in order (see <see cref="SharpnessMeasures"/>). Null: every registered measure the objective has what it
    /// needs for (e.g. the Fisher-Rao norm only for bias-free ReLU MLPs, the accuracy searches only for classification).
    /// </summary>
    public IReadOnlyList<SharpnessMeasure>? Measures { get; init; }

    /// <summary>Keskar ε values, one result each (default 1e-3 and 5e-4, the paper's).</summary>
    public IReadOnlyList<double> Epsilons { get; init; } = [1e-3, 5e-4];

    /// <summary>Radius ρ of SAM, worst-case and average-case sharpness (null: each measure's default).</summary>
    public double? Rho { get; init; }

    /// <summary>Ascent steps of Keskar, worst-case sharpness and worst-case flatness (null: each measure's default, 20).</summary>
    public int? Steps { get; init; }

    /// <summary>Monte-Carlo samples: average-case per batch (default 20), PAC-Bayes per σ (default 10).</summary>
    public int? Samples { get; init; }

    /// <summary>Seed of every measure's random draws; each measure draws from its own generators.</summary>
    public long Seed { get; init; }

    /// <summary>
    /// w₀ for the PAC-Bayes "init" bounds: a module of the model's architecture holding the weights training started from. Null
    /// leaves those bounds out.
    /// </summary>
    public nn.Module? Initialization { get; init; }

    /// <summary>Relative flatness: the weight matrix by name (default: the last weight matrix among the objective's parameters).</summary>
    public string? Layer { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bad option.</summary>
    public void Validate()
    {
        if (Epsilons.Count == 0) throw new ArgumentException("must hold at least one ε", nameof(Epsilons));
        foreach (var e in Epsilons) Check.PositiveFinite(e, nameof(Epsilons));
        if (Rho is { } rho) Check.PositiveFinite(rho, nameof(Rho));
        if (Steps is { } steps) Check.AtLeast(steps, 1, nameof(Steps));
        if (Samples is { } samples) Check.AtLeast(samples, 1, nameof(Samples));
        if (Measures is { Count: 0 }) throw new ArgumentException("must name at least one measure, or be null for all", nameof(Measures));
    }
}

/// <summary>Where a suite run is: a measure starts, gives a result, or has given all of its results.</summary>
public enum SharpnessStage
{
    /// <summary>The measure starts.</summary>
    Started,
    /// <summary>The measure gave a result (<see cref="SharpnessProgress.Result"/>).</summary>
    Result,
    /// <summary>The measure has given all of its results.</summary>
    Finished,
}

/// <summary>A report of <see cref="SharpnessSuite.Run"/>.</summary>
/// <param name="Measure">The measure's registry name (e.g. "pacbayes").</param>
/// <param name="Stage">Started, a result, or finished.</param>
/// <param name="Result">The result, at <see cref="SharpnessStage.Result"/>.</param>
public sealed record SharpnessProgress(string Measure, SharpnessStage Stage, SharpnessResult? Result = null);

/// <summary>Runs a list of sharpness measures on one objective, in order, reporting each result as it finishes.</summary>
public static class SharpnessSuite
{
    /// <summary>The measures the options choose for this objective (<see cref="SharpnessSuiteOptions.Measures"/>, or all that apply).</summary>
    public static IReadOnlyList<SharpnessMeasure> Measures(Objective objective, SharpnessSuiteOptions options) =>
        options.Measures ?? SharpnessMeasures.All.Where(m => m.AppliesTo(objective)).ToList();

    /// <summary>
    /// Runs the chosen measures on the objective (its parameters, data, dtype, train mode and ranks) and returns their results in
    /// order. The options and every chosen measure's needs are checked before anything runs. The weights are bit-identical
    /// afterwards.
    /// </summary>
    /// <param name="objective">Model, loss, data and the options every measure evaluates with.</param>
    /// <param name="options">Measures and parameters; null: every measure that applies, with its defaults.</param>
    /// <param name="progress">
    /// Told when a measure starts, of each result as it comes, and when a measure has given all its results. Called on the
    /// computing thread before the run goes on, so a handler that saves results saves each before the next is computed.
    /// </param>
    /// <param name="skip">
    /// Measures not to run (e.g. finished by an earlier, interrupted run of the same inputs), by name. Every measure draws from its
    /// own seeded generators, so skipping some does not change the others.
    /// </param>
    /// <param name="ct">Stops the run between evaluations.</param>
    public static List<SharpnessResult> Run(Objective objective, SharpnessSuiteOptions? options = null, IProgress<SharpnessProgress>? progress = null,
        IReadOnlySet<string>? skip = null, CancellationToken ct = default)
    {
        var o = options ?? new SharpnessSuiteOptions();
        o.Validate();
        var measures = Measures(objective, o);
        foreach (var m in measures)
            if (m.Unmet(objective) is { } problem) throw problem;
        var results = new List<SharpnessResult>();
        foreach (var m in measures)
        {
            ct.ThrowIfCancellationRequested();
            if (skip?.Contains(m.Name) == true) continue;
            progress?.Report(new SharpnessProgress(m.Name, SharpnessStage.Started));
            foreach (var r in m.Run(objective, o, ct))
            {
                results.Add(r);
                progress?.Report(new SharpnessProgress(m.Name, SharpnessStage.Result, r));
            }
            progress?.Report(new SharpnessProgress(m.Name, SharpnessStage.Finished));
        }
        return results;
    }
}
