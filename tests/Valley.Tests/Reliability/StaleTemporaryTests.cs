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
}
