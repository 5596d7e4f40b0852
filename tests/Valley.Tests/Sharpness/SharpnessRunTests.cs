using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.IO;
using Valley.Models;
using Valley.Runs;
using Valley.Sharpness;
using Xunit;

namespace Valley.Tests.Sharpness;

/// <summary>A sharpness run into a folder resumes from the finished measures of identical inputs and starts afresh otherwise.</summary>
public class SharpnessRunTests
{
    public SharpnessRunTests() => TestUtil.Init();

    static SharpnessReport Header(RunInputs inputs) => new() { Model = "mlp:4-6-3", Data = "mixture", Examples = 40, Inputs = inputs };

    [Fact]
    public void ARerunOfIdenticalInputsRunsOnlyTheUnfinishedMeasures()
    {
        using var data = Synthetic.GaussianMixture(40, 4, 3, seed: 1);
        var model = ModelSpec.Parse("mlp:4-6-3").Build(data, seed: 1);
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        var options = new SharpnessSuiteOptions { Measures = [SharpnessMeasures.Sam, SharpnessMeasures.FisherTrace] };
        var inputs = new RunInputs().With("--seed", 0);
        var dir = TestUtil.TempDir("sharpness-run");
        var path = Path.Combine(dir, SharpnessRun.FileName);

        // A run that fails before its first result leaves the folder as it was.
        Assert.Throws<ArgumentOutOfRangeException>(() => SharpnessRun.Open(dir, Header(inputs)).Compute(obj, options with { Rho = -1 }));
        Assert.False(File.Exists(path));

        var first = SharpnessRun.Open(dir, Header(inputs));
        Assert.Equal(0, first.ReusedMeasures);
        var report = first.Compute(obj, options);
        Assert.Equal(["sam", "fisher-trace"], report.Finished);
        Assert.Equal(2, report.FinishedResults);
        Assert.Equal(AtomicFile.ToJson(report), File.ReadAllText(path).TrimEnd());

        List<string> Started(SharpnessRun run, out SharpnessReport result)
        {
            var started = new List<string>();
            result = run.Compute(obj, options, new SyncProgress<SharpnessProgress>(p => { if (p.Stage == SharpnessStage.Started) started.Add(p.Measure); }));
            return started;
        }

        // Identical inputs: nothing runs, the results are the earlier ones.
        var again = SharpnessRun.Open(dir, Header(inputs));
        Assert.Equal(2, again.ReusedMeasures);
        Assert.Null(again.Replaced);
        Assert.Empty(Started(again, out var same));
        Assert.Equal(AtomicFile.ToJson(report.Results), AtomicFile.ToJson(same.Results));

        // Interrupted during fisher-trace (its result written, the measure not finished): only fisher-trace runs again.
        AtomicFile.WriteJson(path, report with { Finished = ["sam"], FinishedResults = 1 });
        var resumed = SharpnessRun.Open(dir, Header(inputs));
        Assert.Equal(1, resumed.ReusedMeasures);
        Assert.Single(resumed.Report.Results);
        Assert.Equal(["fisher-trace"], Started(resumed, out var completed));
        Assert.Equal(["sam-one-step", "fisher-trace"], completed.Results.Select(r => r.Measure));
        Assert.Equal(AtomicFile.ToJson(report.Results[0]), AtomicFile.ToJson(completed.Results[0]));

        // Other inputs: everything runs, and the run says what differed.
        var other = SharpnessRun.Open(dir, Header(inputs.With("--seed", 1)));
        Assert.Equal(0, other.ReusedMeasures);
        Assert.Contains("--seed (0 → 1)", other.Replaced);
        Assert.Equal(["sam", "fisher-trace"], Started(other, out _));
    }
}
