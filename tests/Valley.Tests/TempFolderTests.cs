using System.Diagnostics;
using Xunit;

namespace Valley.Tests;

/// <summary>The test run's temporary folders: a killed run's root is removed by the next run, a live one never.</summary>
public class TempFolderTests
{
    [Fact]
    public void RootsOfLiveRunsAreKeptAndOthersRemoved()
    {
        using var exited = Process.Start(new ProcessStartInfo("true") { UseShellExecute = false })!;
        exited.WaitForExit();
        var now = DateTime.UtcNow;
        Assert.True(TestUtil.IsStale($"run-{exited.Id}-abcd1234", now));
        Assert.False(TestUtil.IsStale($"run-{Environment.ProcessId}-abcd1234", now.AddDays(-3)));
        Assert.False(TestUtil.IsStale("lanczos-1a2b3c4d", now.AddHours(-2)));
        Assert.True(TestUtil.IsStale("lanczos-1a2b3c4d", now.AddDays(-2)));
        var dir = TestUtil.TempDir("probe");
        var parent = Environment.GetEnvironmentVariable("VALLEY_TEST_ROOT") is { Length: > 0 } given ? given : Path.Combine(Path.GetTempPath(), "valley-tests");
        Assert.StartsWith(Path.Combine(parent, $"run-{Environment.ProcessId}-"), dir);
    }
}
