using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Which measures <see cref="SharpnessSuite"/> runs and their parameters (null: each measure's published default).</summary>
public sealed record SharpnessSuiteOptions
{
    /// <summary>Measure names (see <see cref="SharpnessSuite.All"/>), or "all".</summary>
    public IReadOnlyList<string> Measures { get; init; } = ["all"];
    public IReadOnlyList<double> Epsilons { get; init; } = [1e-3, 5e-4];
    public double? Rho { get; init; }
    public int? Steps { get; init; }
    public int? Samples { get; init; }
    public long Seed { get; init; }
    public long BatchSize { get; init; } = 1024;
    /// <summary>Relative flatness: the layer (default the last weight matrix).</summary>
    public string? Layer { get; init; }
    /// <summary>Data-parallel ranks; the data set is then this rank's shard (see <see cref="ObjectiveOptions.Group"/>).</summary>
    public Distributed.IProcessGroup? Group { get; init; }
}

/// <summary>Runs a list of sharpness measures on one model and data set, in order, reporting each result as it finishes.</summary>
public static class SharpnessSuite
{
    public static readonly string[] All =
    [
        "keskar", "keskar-subspace", "sam", "worst-case-l2", "worst-case-l2-adaptive", "worst-case-linf", "worst-case-linf-adaptive",
        "average-case", "average-case-adaptive", "pacbayes", "worst-case-flatness", "relative-flatness", "fisher-trace", "fisher-rao",
    ];

    public static IReadOnlyList<string> Resolve(IReadOnlyList<string> names, nn.Module model)
    {
        var list = names.SelectMany(n => n == "all" ? All.Where(a => a != "fisher-rao" || model is Mlp { Bias: false, Activation: "relu" }) : [n]).Distinct().ToList();
        var unknown = list.Where(n => !All.Contains(n)).ToList();
        if (unknown.Count > 0) throw new ValleyException($"--measures: unknown measure '{unknown[0]}' (known: {string.Join(", ", All)}, all)");
        return list;
    }

    /// <param name="starting">Called with a measure's name before it runs.</param>
    /// <param name="finished">Called with every result as it comes (a measure may give several, e.g. one per ε).</param>
    /// <param name="measureDone">Called with a measure's name once all of its results have been reported.</param>
    /// <param name="skip">
    /// Measures not to run (finished by an earlier, interrupted run of the same inputs). Every measure draws from its own seeded
    /// generator, so skipping some does not change the others.
    /// </param>
    public static List<SharpnessResult> Run(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, Tensor? initialWeights, SharpnessSuiteOptions o,
        Action<string>? starting = null, Action<SharpnessResult>? finished = null, CancellationToken ct = default,
        Action<string>? measureDone = null, IReadOnlySet<string>? skip = null)
    {
        var measures = Resolve(o.Measures, model);
        var results = new List<SharpnessResult>();
        void Add(SharpnessResult r) { results.Add(r); finished?.Invoke(r); }
        using var obj = new Objective(model, loss, data, new ObjectiveOptions { BatchSize = o.BatchSize, Group = o.Group });
        foreach (var name in measures)
        {
            ct.ThrowIfCancellationRequested();
            if (skip?.Contains(name) == true) continue;
            starting?.Invoke(name);
            switch (name)
            {
                case "keskar":
                    foreach (var e in o.Epsilons) Add(KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = e, Steps = o.Steps ?? 20, Seed = o.Seed }, ct));
                    break;
                case "keskar-subspace":
                    foreach (var e in o.Epsilons) Add(KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = e, SubspaceDimension = (int)Math.Min(100, obj.Size), Seed = o.Seed }, ct));
                    break;
                case "sam":
                    Add(SamSharpness.Compute(obj, o.Rho ?? 0.05, ct));
                    break;
                case "fisher-trace":
                    Add(FisherProxies.EmpiricalFisherTrace(obj, ct));
                    break;
                case "fisher-rao":
                    Add(FisherProxies.FisherRaoNorm(obj));
                    break;
                case "relative-flatness":
                    Add(RelativeFlatness.Compute(model, loss, data, o.Layer, o.BatchSize, o.Group));
                    break;
                case "pacbayes":
                    foreach (var r in FlatnessSearch.PacBayes(obj, initialWeights, new FlatnessSearchOptions { Seed = o.Seed, Samples = o.Samples ?? 10 }, ct)) Add(r);
                    break;
                case "worst-case-flatness":
                    foreach (var r in FlatnessSearch.WorstCase(obj, new FlatnessSearchOptions { Seed = o.Seed, AscentSteps = o.Steps ?? 20 }, ct)) Add(r);
                    break;
                default:
                {
                    bool average = name.StartsWith("average-case");
                    var wc = new WorstCaseOptions
                    {
                        Norm = name.Contains("linf") ? PerturbationNorm.LInf : PerturbationNorm.L2,
                        Adaptive = name.EndsWith("adaptive"), Rho = o.Rho, Steps = o.Steps ?? 20, Samples = o.Samples ?? 20, Seed = o.Seed, Group = o.Group,
                    };
                    Add(average ? WorstCaseSharpness.AverageCase(model, loss, data, wc, ct) : WorstCaseSharpness.Compute(model, loss, data, wc, ct));
                    break;
                }
            }
            measureDone?.Invoke(name);
        }
        return results;
    }
}
