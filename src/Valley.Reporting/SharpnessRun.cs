using System.Text.Json;
using Valley.Curvature;
using Valley.Distributed;
using Valley.IO;
using Valley.Runs;

namespace Valley.Sharpness;

/// <summary>
/// What sharpness.json holds, written after every result: the run, its inputs by content, the results so far, and which
/// measures have finished (their results are the first <see cref="FinishedResults"/>).
/// </summary>
public sealed record SharpnessReport
{
    /// <summary>The model as the run names it (e.g. an architecture spec).</summary>
    public required string Model { get; init; }

    /// <summary>The weights file, if any.</summary>
    public string? Weights { get; init; }

    /// <summary>The training data's name.</summary>
    public required string Data { get; init; }

    /// <summary>Training examples over all ranks.</summary>
    public long Examples { get; init; }

    /// <summary>The seed of the run.</summary>
    public long Seed { get; init; }

    /// <summary>What the numbers are computed from, by content; a rerun resumes only from identical inputs.</summary>
    public required RunInputs Inputs { get; init; }

    /// <summary>Registry names of the measures that have given all their results.</summary>
    public IReadOnlyList<string> Finished { get; init; } = [];

    /// <summary>How many of <see cref="Results"/> belong to <see cref="Finished"/> measures (the first ones).</summary>
    public int FinishedResults { get; init; }

    /// <summary>Every result so far, in order, including those of a measure still running.</summary>
    public IReadOnlyList<SharpnessResult> Results { get; init; } = [];
}

/// <summary>
/// A resumable <see cref="SharpnessSuite"/> run into a folder: sharpness.json is written after every result; a rerun of identical
/// inputs (<see cref="RunInputs"/>) into the same folder keeps the finished measures and runs the rest, and a run of other inputs
/// starts afresh. With several ranks, rank 0 decides what is reused and every rank skips the same measures; rank 0 writes.
/// </summary>
public sealed class SharpnessRun
{
    /// <summary>The file a run writes into its folder.</summary>
    public const string FileName = "sharpness.json";

    readonly IProcessGroup _group;

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>The report as it stands (the reused results before <see cref="Compute"/>).</summary>
    public SharpnessReport Report { get; private set; }

    /// <summary>Measures reused from an earlier run of identical inputs.</summary>
    public int ReusedMeasures { get; }

    /// <summary>On rank 0, when the folder held results of other inputs: what differed (e.g. "data contents"); they are replaced.</summary>
    public string? Replaced { get; }

    SharpnessRun(string path, SharpnessReport report, string? replaced, IProcessGroup group)
    {
        Path = path;
        Report = report;
        ReusedMeasures = report.Finished.Count;
        Replaced = replaced;
        _group = group;
    }

    /// <summary>
    /// A run into <paramref name="outDir"/> described by <paramref name="header"/> (its own results are ignored): it takes over
    /// the finished measures of an earlier sharpness.json there whose inputs are identical to <see cref="SharpnessReport.Inputs"/>.
    /// Nothing is written until the first result.
    /// </summary>
    public static SharpnessRun Open(string outDir, SharpnessReport header, IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        var path = System.IO.Path.Combine(outDir, FileName);
        string? replaced = null;
        var accepted = group.Broadcast(group.IsRoot() ? header.Inputs.ReadEarlier<SharpnessReport>(path, r => r.Inputs,
            r => r.Results is not null && r.Finished is not null && r.FinishedResults <= r.Results.Count, out replaced) : []);
        var earlier = accepted.Length > 0 ? JsonSerializer.Deserialize<SharpnessReport>(accepted, AtomicFile.Json) : null;
        var report = header with
        {
            Finished = earlier?.Finished.ToList() ?? [],
            FinishedResults = earlier?.FinishedResults ?? 0,
            Results = earlier?.Results.Take(earlier.FinishedResults).ToList() ?? [],
        };
        return new SharpnessRun(path, report, replaced, group);
    }

    /// <summary>
    /// Runs the measures not finished yet (see <see cref="SharpnessSuite.Run"/>), saving the report after every result and every
    /// finished measure, and returns the final report.
    /// </summary>
    public SharpnessReport Compute(Objective objective, SharpnessSuiteOptions options, IProgress<SharpnessProgress>? progress = null, CancellationToken ct = default)
    {
        var results = Report.Results.ToList();
        var finished = Report.Finished.ToList();
        int finishedResults = Report.FinishedResults;
        void Save()
        {
            Report = Report with { Finished = finished.ToList(), FinishedResults = finishedResults, Results = results.ToList() };
            if (!_group.IsRoot()) return;
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(Path))!);
            AtomicFile.WriteJson(Path, Report);
        }
        var relay = new Relay(p =>
        {
            switch (p.Stage)
            {
                case SharpnessStage.Result:
                    results.Add(p.Result!);
                    Save();
                    break;
                case SharpnessStage.Finished:
                    finished.Add(p.Measure);
                    finishedResults = results.Count;
                    Save();
                    break;
            }
            progress?.Report(p);
        });
        SharpnessSuite.Run(objective, options, relay, finished.ToHashSet(), ct);
        Save();
        return Report;
    }

    /// <summary>Calls its handler on the reporting thread, so each result is saved before the suite goes on.</summary>
    sealed class Relay(Action<SharpnessProgress> handler) : IProgress<SharpnessProgress>
    {
        public void Report(SharpnessProgress value) => handler(value);
    }
}
