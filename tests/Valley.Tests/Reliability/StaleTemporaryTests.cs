using System.Diagnostics;
using Valley.IO;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>A process killed mid-write leaves its temporary file; the next process writing into the folder removes it.</summary>
public class StaleTemporaryTests
{
    [Fact]
    public void TemporariesOfProcessesThatAreGoneAreRemovedAndOthersKept()
    {
        using var exited = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        exited.WaitForExit();
        var dir = TestUtil.TempDir("stale-tmp");
        string[] stale = [$".model.dat.{exited.Id}.tmp", $".plot.png.{exited.Id}.tmp.png"];
        string[] kept = [$".log.json.{Environment.ProcessId}.tmp", "notes.tmp", ".hidden", $"model.dat.{exited.Id}.txt"];
        foreach (var f in stale.Concat(kept)) File.WriteAllText(Path.Combine(dir, f), "x");
        AtomicFile.WriteAllText(Path.Combine(dir, "summary.json"), "{}");
        foreach (var f in stale) Assert.False(File.Exists(Path.Combine(dir, f)), f);
        foreach (var f in kept) Assert.True(File.Exists(Path.Combine(dir, f)), f);
        Assert.Equal("{}", File.ReadAllText(Path.Combine(dir, "summary.json")));
        Assert.DoesNotContain(Directory.GetFiles(dir, $"*.{Environment.ProcessId}.tmp*"), f => !f.EndsWith($".log.json.{Environment.ProcessId}.tmp", StringComparison.Ordinal));
    }

    [Fact]
    public void SavingWeightsRemovesTheTemporaryOfAWriterThatWasKilled()
    {
        // A training run killed while writing checkpoints/epoch-0060.dat leaves .epoch-0060.dat.PID.tmp; the resumed run's
        // only writes into that folder are weights, so Weights.Save must sweep it as AtomicFile's writes do.
        using var exited = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        exited.WaitForExit();
        var dir = TestUtil.TempDir("stale-weights");
        var stale = Path.Combine(dir, $".epoch-0060.dat.{exited.Id}.tmp");
        File.WriteAllText(stale, "half a file");
        using var data = Valley.Data.Synthetic.GaussianMixture(10, 3, 2, seed: 1);
        var model = Valley.Models.ModelSpec.Parse("mlp:3-4-2").Build(data, 1);
        Valley.Models.Weights.Save(model, Path.Combine(dir, "epoch-0080.dat"));
        Assert.False(File.Exists(stale));
        Assert.True(File.Exists(Path.Combine(dir, "epoch-0080.dat")));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }
}
