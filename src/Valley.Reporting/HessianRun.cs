using System.Text.Json;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Distributed;
using Valley.IO;
using Valley.Runs;

namespace Valley.Reporting;

/// <summary>
/// What hessian.json holds: a description of the run, its inputs by content (<see cref="RunInputs"/>: a rerun into the same
/// folder resumes only from a report of identical inputs) and the report (null until the first estimator finished).
/// </summary>
/// <param name="Model">The model, as its maker names it (e.g. a spec such as "mlp:784-128-10").</param>
/// <param name="Weights">The weights file, if any.</param>
/// <param name="Data">The data's name.</param>
/// <param name="Examples">Examples the loss is averaged over (all ranks').</param>
/// <param name="Parameters">Parameters the Hessian is taken over.</param>
/// <param name="Layer">The parameter selection, if any.</param>
/// <param name="DType">The dtype of the products.</param>
/// <param name="Seed">The seed.</param>
/// <param name="Threads">LibTorch threads.</param>
/// <param name="Inputs">The run's inputs by content.</param>
/// <param name="Report">The results so far.</param>
public sealed record HessianOutput(string Model, string? Weights, string Data, long Examples, long Parameters, string? Layer, string DType, long Seed, int Threads,
    RunInputs Inputs, SpectrumReport? Report = null);

/// <summary>
/// A resumable Hessian spectrum run in an output folder: <see cref="SpectrumAnalysis"/> with hessian.json rewritten after
/// every estimator, and the density as density.csv (the broadened density), density-nodes.csv (the quadrature nodes and
/// weights) and density.png. A run into a folder whose hessian.json holds a report of the same inputs keeps its finished
/// estimators and computes only the rest; a folder holding another run's results is cleared first. With a process group,
/// rank 0 reads, decides and writes, and every rank resumes from the report rank 0 broadcasts (ranks deciding apart would
/// run different estimators and wait forever for each other's products). The caller keeps other processes out of the
/// folder (the valley command holds a lock file).
/// </summary>
public sealed class HessianRun
{
    /// <summary>The report's file name.</summary>
    public const string JsonFile = "hessian.json";

    /// <summary>The files a run writes besides hessian.json; an earlier run's are removed when a run of other inputs starts.</summary>
    public static readonly IReadOnlyList<string> DensityFiles = ["density.csv", "density-nodes.csv", "density.png"];

    readonly IProcessGroup _group;

    HessianRun(string folder, HessianOutput description, SpectrumReport? earlier, string? replaced, IProcessGroup group)
    {
        Folder = folder;
        Description = description with { Report = null };
        Earlier = earlier;
        Replaced = replaced;
        _group = group;
    }

    /// <summary>The output folder.</summary>
    public string Folder { get; }

    /// <summary>The run's description and inputs (without a report).</summary>
    public HessianOutput Description { get; }

    /// <summary>The report of an earlier run of the same inputs the run resumes from; null when it starts afresh.</summary>
    public SpectrumReport? Earlier { get; }

    /// <summary>On rank 0, when the folder held results of other inputs (now removed): what differed. Else null.</summary>
    public string? Replaced { get; }

    /// <summary>Path of hessian.json.</summary>
    public string JsonPath => Path.Combine(Folder, JsonFile);

    /// <summary>
    /// Decides whether to resume: rank 0 reads hessian.json and broadcasts the report of identical inputs, if any. When
    /// there is none, rank 0 removes hessian.json and the density files of an earlier run.
    /// </summary>
    /// <param name="folder">The output folder.</param>
    /// <param name="description">The run's description and inputs (its report is ignored).</param>
    /// <param name="group">The ranks of a data-parallel run; null: this process alone.</param>
    public static HessianRun Open(string folder, HessianOutput description, IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        var path = Path.Combine(folder, JsonFile);
        string? replaced = null;
        var accepted = group.Broadcast(group.IsRoot() ? description.Inputs.ReadEarlier<HessianOutput>(path, h => h.Inputs, h => h.Report is not null, out replaced) : []);
        var earlier = accepted.Length > 0 ? JsonSerializer.Deserialize<HessianOutput>(accepted, AtomicFile.Json)!.Report : null;
        if (group.IsRoot() && earlier is null && Directory.Exists(folder))
            foreach (var f in DensityFiles.Append(JsonFile)) File.Delete(Path.Combine(folder, f));
        return new HessianRun(folder, description, earlier, earlier is null ? replaced : null, group);
    }

    /// <summary>
    /// Runs the estimators the options ask for (those the earlier run did not finish), writing hessian.json after each and
    /// the density files at the end (rank 0).
    /// </summary>
    /// <param name="op">The Hessian (or any operator the description describes).</param>
    /// <param name="options">What to compute.</param>
    /// <param name="progress">Progress of each estimator.</param>
    /// <param name="ct">Checked by every estimator.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="SpectrumAnalysisOptions"/>).</exception>
    public SpectrumReport Run(ICurvatureOperator op, SpectrumAnalysisOptions options, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var report = SpectrumAnalysis.Run(op, options, progress, partial: r => { if (_group.IsRoot()) AtomicFile.WriteJson(JsonPath, Output(r)); },
            ct: ct, resumeFrom: Earlier);
        if (_group.IsRoot()) WriteDensity(report);
        return report;
    }

    /// <summary>What hessian.json holds for <paramref name="report"/>.</summary>
    public HessianOutput Output(SpectrumReport report) => Description with { Report = report };

    void WriteDensity(SpectrumReport r)
    {
        if (r.Density is not { } d) return;
        Csv.Write(Path.Combine(Folder, "density.csv"), ["eigenvalue", "density"], d.Grid.Select((g, i) => new object[] { g, d.Density[i] }));
        Csv.Write(Path.Combine(Folder, "density-nodes.csv"), ["run", "node", "weight"],
            d.Nodes.SelectMany((nodes, run) => nodes.Select((t, i) => new object[] { run, t, d.Weights[run][i] })));
        Plots.SpectralDensity(d, Path.Combine(Folder, "density.png"), $"Hessian spectral density: {Description.Model}", r.LambdaMax, r.LambdaMin);
    }
}
