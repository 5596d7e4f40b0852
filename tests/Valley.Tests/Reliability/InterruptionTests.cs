using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Valley.Cli;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>Processes killed with SIGKILL at random moments, or stopped with Ctrl-C, resume to the results of an uninterrupted run.</summary>
public class InterruptionTests
{
    public InterruptionTests() => TestUtil.Init();

    static readonly string Cli = Path.Combine(AppContext.BaseDirectory, "Valley.Cli.dll");

    static Process Start(IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo("dotnet", new[] { Cli }.Concat(args)) { RedirectStandardOutput = true, RedirectStandardError = true };
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    static int RunToEnd(IEnumerable<string> args)
    {
        using var p = Start(args);
        p.WaitForExit();
        return p.ExitCode;
    }

    static double TimedRun(IEnumerable<string> args)
    {
        var sw = Stopwatch.StartNew();
        Assert.Equal(0, RunToEnd(args));
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// Start, SIGKILL at a random moment between 30% and 90% of an uninterrupted run's time, several times; then run to the end.
    /// Returns how many runs were killed mid-way.
    /// </summary>
    static int KillRepeatedly(string[] args, int kills, int seed, double cleanSeconds)
    {
        var rng = new Random(seed);
        int killed = 0;
        for (int k = 0; k < kills; k++)
        {
            using var p = Start(args);
            if (p.WaitForExit(TimeSpan.FromSeconds(cleanSeconds * (0.3 + 0.6 * rng.NextDouble())))) continue; // finished before the kill
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            killed++;
        }
        Assert.Equal(0, RunToEnd(args));
        return killed;
    }

    /// <summary>
    /// Start and SIGKILL once the run has committed at least each of <paramref name="epochs"/> (read from its resume files),
    /// after a random further delay, so that the kill lands at a random moment of a later epoch whatever the machine's speed;
    /// then run to the end. Returns how many runs were killed before they finished.
    /// </summary>
    static int KillAfterEpochs(string[] args, string dir, int[] epochs, int seed)
    {
        var rng = new Random(seed);
        int killed = 0;
        foreach (int epoch in epochs)
        {
            using var p = Start(args);
            while (!p.HasExited && CommittedEpoch(dir) < epoch) Thread.Sleep(5);
            if (p.WaitForExit(rng.Next(0, 60))) continue; // finished before the kill
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            killed++;
        }
        Assert.Equal(0, RunToEnd(args));
        return killed;
    }

    /// <summary>The latest epoch whose resume state is on disk (0 before the first).</summary>
    static int CommittedEpoch(string dir)
    {
        var resume = Path.Combine(dir, "resume");
        if (!Directory.Exists(resume)) return 0;
        try
        {
            return Directory.EnumerateFiles(resume).Select(f => System.Text.RegularExpressions.Regex.Match(Path.GetFileName(f), @"-(\d{4})\."))
                .Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).DefaultIfEmpty(0).Max();
        }
        catch (IOException) { return 0; } // a file deleted while listing: look again
    }

    [Fact]
    public void TrainingKilledAtRandomMomentsResumesToTheUninterruptedWeights()
    {
        var data = TestUtil.CsvFolder("kill-data", 200, 6, 3, seed: 3);
        string[] Args(string dir) => ["train", "--data", data, "--model", "mlp:6-32-32-3", "--optimizer", "sam", "--epochs", "150", "--batch-size", "10",
                                      "--schedule", "cosine", "--threads", "2", "--out", dir, "--resume"];
        var clean = TestUtil.TempDir("kill-clean");
        Assert.Equal(0, RunToEnd(Args(clean)));
        var dir = TestUtil.TempDir("kill-run");
        int killed = KillAfterEpochs(Args(dir), dir, epochs: [20, 60, 100], seed: 11);
        Assert.True(killed == 3, $"{killed} of 3 runs were killed mid-way");
        Assert.Equal(File.ReadAllBytes(Path.Combine(clean, "model.dat")), File.ReadAllBytes(Path.Combine(dir, "model.dat")));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories));
    }

    [Fact]
    public void LandscapeKilledAtRandomMomentsResumesToTheUninterruptedGrid()
    {
        var data = TestUtil.CsvFolder("kill-land", 1500, 20, 3, seed: 4);
        string[] Args(string dir) => ["landscape", "2d", "--data", data, "--model", "mlp:20-128-128-3", "--points", "41x41", "--subset", "0", "--threads", "2", "--out", dir];
        var clean = Path.Combine(TestUtil.TempDir("land-clean"), "g");
        double seconds = TimedRun(Args(clean));
        var dir = Path.Combine(TestUtil.TempDir("land-run"), "g");
        KillRepeatedly(Args(dir), kills: 3, seed: 12, seconds);
        static JsonNode Points(string d) => JsonNode.Parse(File.ReadAllText(Path.Combine(d, "grid.json")))!["points"]!;
        Assert.Equal(Points(clean).ToJsonString(), Points(dir).ToJsonString());
    }

    [Fact]
    public async Task CtrlCStopsTrainingCleanlyWithExitCode3AndTheRunResumes()
    {
        var data = TestUtil.CsvFolder("int-data", 200, 6, 3, seed: 5);
        var dir = TestUtil.TempDir("int-run");
        string[] args = ["train", "--data", data, "--model", "mlp:6-32-32-3", "--epochs", "2000", "--batch-size", "10", "--out", dir, "--resume"];
        var psi = new ProcessStartInfo("dotnet", new[] { Cli }.Concat(args)) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outp = p.StandardOutput.ReadToEndAsync();
        // Ctrl-C once two epochs are committed, however long the start-up takes on a loaded machine (the run has 2,000).
        var waited = Stopwatch.StartNew();
        while (!p.HasExited && CommittedEpoch(dir) < 2 && waited.Elapsed < TimeSpan.FromMinutes(3)) Thread.Sleep(10);
        Assert.False(p.HasExited, "training ended before Ctrl-C");
        Assert.True(CommittedEpoch(dir) >= 2, "no epoch committed within 3 minutes");
        Process.Start("kill", ["-INT", p.Id.ToString()])!.WaitForExit();
        Assert.True(p.WaitForExit(30_000), "the process did not stop after Ctrl-C");
        Assert.Equal(ValleyCli.ExitInterrupted, p.ExitCode);
        Assert.Contains("interrupted", await err);
        var state = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "train.json"))).RootElement;
        Assert.True(state.GetProperty("completed_epochs").GetInt32() > 0);
        Assert.False(state.GetProperty("finished").GetBoolean());
    }

    /// <summary>
    /// Same seed and threads give bit-identical results whatever must not matter: the output folder's name (its length once
    /// decided the alignment of the data in memory, and with it MKL's float32 kernels) and what was allocated before the run.
    /// </summary>
    [Fact]
    public void SameSeedAndThreadsGiveIdenticalJsonApartFromTimings()
    {
        var data = TestUtil.CsvFolder("det-data", 150, 5, 3, seed: 6);
        var keep = new List<object>();
        JsonNode Run(string folderName, int garbage)
        {
            // Managed allocations of odd sizes before the run move where the next arrays land.
            for (int i = 0; i < garbage; i++) keep.Add(new byte[1 + 7 * i]);
            var o = new StringWriter();
            Assert.Equal(0, ValleyCli.RunAsync(["hessian", "--data", data, "--model", "mlp:5-8-3", "--subset", "0", "--seed", "4", "--density-runs", "3", "--density-steps", "15",
                "--format", "json", "--out", Path.Combine(TestUtil.TempDir("det"), folderName)], o, new StringWriter()).GetAwaiter().GetResult());
            var node = JsonNode.Parse(o.ToString())!;
            Strip(node);
            return node;
        }
        var first = Run("o", 0).ToJsonString();
        foreach (var (name, garbage) in new[] { ("out-folder-with-a-much-longer-name", 3), ("x", 17), (new string('y', 101), 1), ("z2", 64) })
            Assert.Equal(first, Run(name, garbage).ToJsonString());
        GC.KeepAlive(keep);
    }

    [Fact]
    public async Task AnInterruptedHessianRunKeepsItsFinishedEstimatorsAndEndsWithTheSameResults()
    {
        var data = TestUtil.CsvFolder("hess-resume", 150, 5, 3, seed: 7);
        var dir = TestUtil.TempDir("hess-resume-out");
        string[] args = ["hessian", "--data", data, "--model", "mlp:5-8-3", "--subset", "0", "--seed", "2", "--top", "2", "--trace", "--density",
                         "--density-runs", "3", "--density-steps", "15", "--max-products", "100", "--out", dir, "--format", "json"];
        var full = new StringWriter();
        Assert.Equal(0, await ValleyCli.RunAsync(args, full, new StringWriter()));
        // What a kill after the first estimator leaves behind: hessian.json with only the top eigenvalues.
        var path = Path.Combine(dir, "hessian.json");
        var partial = JsonNode.Parse(File.ReadAllText(path))!;
        partial["report"]!.AsObject().Remove("trace");
        partial["report"]!.AsObject().Remove("density");
        File.WriteAllText(path, partial.ToJsonString());
        var resumed = new StringWriter();
        Assert.Equal(0, await ValleyCli.RunAsync(args, resumed, new StringWriter()));
        var a = JsonNode.Parse(full.ToString())!; Strip(a);
        var b = JsonNode.Parse(resumed.ToString())!; Strip(b);
        Assert.Equal(a.ToJsonString(), b.ToJsonString());
    }

    [Fact]
    public void AHessianRunKilledDuringItsDiagonalAndFrobeniusNormResumesToTheUninterruptedResults()
    {
        var data = TestUtil.CsvFolder("kill-diag", 1500, 20, 3, seed: 8);
        string[] Args(string dir) => ["hessian", "--data", data, "--model", "mlp:20-64-64-3", "--subset", "0", "--threads", "2", "--seed", "3",
                                      "--diagonal", "--diagonal-method", "hutchinson", "--diagonal-products", "200", "--frobenius", "--trace-error", "1e-9", "--max-products", "200", "--out", dir];
        var clean = Path.Combine(TestUtil.TempDir("kill-diag-clean"), "h");
        Assert.Equal(0, RunToEnd(Args(clean)));
        var dir = Path.Combine(TestUtil.TempDir("kill-diag-run"), "h");
        var json = Path.Combine(dir, "hessian.json");
        bool Saved(string what)
        {
            try { return what == "diagonal" ? File.Exists(Path.Combine(dir, "diagonal-progress.bin")) : File.Exists(json) && File.ReadAllText(json).Contains("\"frobenius_progress\""); }
            catch (IOException) { return false; }
        }
        // Killed once the diagonal has saved probes, then once the Frobenius norm has: each rerun continues from them.
        var rng = new Random(13);
        int killed = 0;
        foreach (var what in new[] { "diagonal", "frobenius" })
        {
            using var p = Start(Args(dir));
            while (!p.HasExited && !Saved(what)) Thread.Sleep(2);
            if (p.WaitForExit(rng.Next(0, 40))) continue;
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            killed++;
        }
        Assert.Equal(0, RunToEnd(Args(dir)));
        Assert.True(killed == 2, $"{killed} of 2 runs were killed mid-way");
        Assert.Equal(File.ReadAllText(Path.Combine(clean, "diagonal.csv")), File.ReadAllText(Path.Combine(dir, "diagonal.csv")));
        var a = JsonNode.Parse(File.ReadAllText(Path.Combine(clean, "hessian.json")))!; Strip(a);
        var b = JsonNode.Parse(File.ReadAllText(json))!; Strip(b);
        Assert.Equal(a.ToJsonString(), b.ToJsonString());
        Assert.False(File.Exists(Path.Combine(dir, "diagonal-progress.bin")));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories));
    }

    /// <summary>Remove timing fields (seconds) recursively.</summary>
    static void Strip(JsonNode? n)
    {
        if (n is JsonObject o)
        {
            foreach (var k in o.Select(kv => kv.Key).Where(k => k == "seconds").ToList()) o.Remove(k);
            foreach (var kv in o.ToList()) Strip(kv.Value);
        }
        else if (n is JsonArray a) foreach (var x in a) Strip(x);
    }
}
