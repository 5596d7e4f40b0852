using System.Diagnostics;
using System.Text.Json;
using Valley.Cli;
using Valley.Distributed;
using Valley.MpiHarness;
using Xunit;

namespace Valley.Tests.Distributed;

/// <summary>
/// Runs under <c>mpiexec.mpich -n 2</c> (MPICH, installed by scripts/setup.sh) against the same computation in one process:
/// the data-parallel objective and estimators, the valley command's hessian, landscape and study, and failing ranks.
/// </summary>
public class MpiTests
{
    public MpiTests() => TestUtil.Init();

    static readonly string Bin = AppContext.BaseDirectory;
    static readonly string Cli = Path.Combine(Bin, "Valley.Cli.dll");
    static readonly string HarnessDll = Path.Combine(Bin, "Valley.MpiHarness.dll");
    const string Mpiexec = "mpiexec.mpich";

    sealed record Run(int Code, string Stdout, string Stderr, double Seconds);

    /// <summary>Runs a program under mpiexec with <paramref name="ranks"/> ranks (0: directly); a run that hangs fails the test.</summary>
    static Run Exec(int ranks, string dll, IEnumerable<string> args, int timeoutSeconds = 240)
    {
        var psi = ranks > 0
            ? new ProcessStartInfo(Mpiexec, new[] { "-n", ranks.ToString(), "dotnet", dll }.Concat(args))
            : new ProcessStartInfo("dotnet", new[] { dll }.Concat(args));
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        // No terminal: progress bars off, as in CI.
        psi.Environment["TERM"] = "dumb";
        var sw = Stopwatch.StartNew();
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException($"{Mpiexec} not found: run scripts/setup.sh (installs MPICH)", e); }
        using var _ = p;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{string.Join(' ', psi.ArgumentList)} did not end within {timeoutSeconds} s (hung?)");
        }
        p.WaitForExit();
        return new Run(p.ExitCode, stdout.Result, stderr.Result, sw.Elapsed.TotalSeconds);
    }

    static void Close(double expected, double actual, double rel, string what) =>
        Assert.True(Math.Abs(expected - actual) <= rel * Math.Max(1, Math.Abs(expected)), $"{what}: one process {expected:R}, two ranks {actual:R}");

    static int InProcess(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        Assert.True(code == 0, e.ToString());
        return code;
    }

    [Fact]
    public void ObjectiveAndEstimatorsOnTwoRanksEqualOneProcess()
    {
        int threads = TorchSharp.torch.get_num_threads();
        HarnessResult single;
        try { single = Harness.Compute(SingleProcess.Instance); }
        finally { TorchSharp.torch.set_num_threads(threads); }
        var outFile = Path.Combine(TestUtil.TempDir("mpi-harness"), "result.json");
        var run = Exec(2, HarnessDll, [outFile]);
        Assert.True(run.Code == 0, run.Stderr);
        var two = JsonSerializer.Deserialize<HarnessResult>(File.ReadAllText(outFile))!;
        Assert.Equal(2, two.Ranks);
        Assert.Equal(600, two.Examples);
        Close(single.Loss, two.Loss, 1e-12, "loss");
        double hvScale = single.HessianVector.Max(Math.Abs), gScale = single.Gradient.Max(Math.Abs);
        Assert.Equal(single.HessianVector.Length, two.HessianVector.Length);
        for (int i = 0; i < single.HessianVector.Length; i++)
        {
            Assert.True(Math.Abs(single.HessianVector[i] - two.HessianVector[i]) <= 1e-12 * hvScale, $"Hv[{i}]: {single.HessianVector[i]:R} vs {two.HessianVector[i]:R}");
            Assert.True(Math.Abs(single.Gradient[i] - two.Gradient[i]) <= 1e-12 * gScale, $"g[{i}]");
        }
        Close(single.LambdaMax, two.LambdaMax, 1e-9, "λmax");
        Close(single.Trace, two.Trace, 1e-10, "Hutchinson trace (same seed, 40 probes)");
        Close(single.TraceError, two.TraceError, 1e-8, "trace standard error");
        Assert.True(two.Communication > 0, "the two-rank run should have spent time in collectives");
    }

    [Fact]
    public void ARankThatFailsMidwayEndsEveryRankInsteadOfHanging()
    {
        var run = Exec(2, HarnessDll, [Path.Combine(TestUtil.TempDir("mpi-fail"), "r.json"), "fail-midway"], timeoutSeconds: 90);
        Assert.NotEqual(0, run.Code);
        Assert.Contains("rank 1 of 2: rank 1 fails on purpose", run.Stderr);
    }

    [Fact]
    public void HessianCommandOnTwoRanksEqualsOneProcess()
    {
        var data = TestUtil.CsvFolder("mpi-csv", 300, 6, 3, seed: 4);
        var root = TestUtil.TempDir("mpi-hessian");
        string[] Args(string dir) => ["hessian", "--data", data, "--model", "mlp:6-10-3:tanh", "--subset", "0", "--batch-size", "64", "--threads", "1",
            "--top", "2", "--trace", "--tol", "1e-6", "--out", dir, "--format", "json"];
        InProcess(Args(Path.Combine(root, "one")));
        var run = Exec(2, Cli, Args(Path.Combine(root, "two")));
        Assert.True(run.Code == 0, run.Stderr);
        var one = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "one", "hessian.json"))).RootElement;
        var two = JsonDocument.Parse(run.Stdout).RootElement;
        Assert.Equal(300, two.GetProperty("examples").GetInt64());
        Assert.Equal(two.GetRawText(), JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "two", "hessian.json"))).RootElement.GetRawText());
        var t1 = one.GetProperty("report").GetProperty("top").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var t2 = two.GetProperty("report").GetProperty("top").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        for (int i = 0; i < 2; i++) Close(t1[i], t2[i], 1e-5, $"λ{i + 1}");
        Close(one.GetProperty("report").GetProperty("trace").GetProperty("trace").GetDouble(),
            two.GetProperty("report").GetProperty("trace").GetProperty("trace").GetDouble(), 1e-5, "trace (Hutch++, same seed)");

        // A rerun in the same folder resumes from rank 0's hessian.json on every rank (ranks deciding apart would hang).
        var again = Exec(2, Cli, Args(Path.Combine(root, "two")), timeoutSeconds: 120);
        Assert.True(again.Code == 0, again.Stderr);
        var report = JsonDocument.Parse(again.Stdout).RootElement.GetProperty("report");
        Assert.Equal(two.GetProperty("report").GetProperty("top").GetRawText(), report.GetProperty("top").GetRawText());
        Assert.Equal(two.GetProperty("report").GetProperty("trace").GetRawText(), report.GetProperty("trace").GetRawText());
    }

    [Theory]
    [InlineData("kfac")]
    [InlineData("mc-fisher")]
    public void SampledLabelsOnTwoRanksAreThoseOfOneProcess(string op)
    {
        // An example's labels are keyed by its index over all ranks, so K-FAC (sampled labels by default) and the MC Fisher
        // are the same matrices on two ranks (and with other batches) as in one process.
        var data = TestUtil.CsvFolder("mpi-csv-mc", 300, 6, 3, seed: 5);
        var root = TestUtil.TempDir("mpi-mc-" + op);
        string[] Args(string dir, string batch) => ["hessian", "--data", data, "--model", "mlp:6-10-3:tanh", "--subset", "0", "--batch-size", batch, "--threads", "1",
            "--operator", op, "--top", "2", "--tol", "1e-8", "--out", dir, "--format", "json"];
        InProcess(Args(Path.Combine(root, "one"), "300"));
        var run = Exec(2, Cli, Args(Path.Combine(root, "two"), "64"));
        Assert.True(run.Code == 0, run.Stderr);
        var one = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "one", "hessian.json"))).RootElement;
        var two = JsonDocument.Parse(run.Stdout).RootElement;
        var t1 = one.GetProperty("report").GetProperty("top").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var t2 = two.GetProperty("report").GetProperty("top").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        for (int i = 0; i < 2; i++) Close(t1[i], t2[i], 1e-6, $"{op} λ{i + 1}");
    }

    [Fact]
    public void DiagonalAndFrobeniusNormOnTwoRanksEqualOneProcessAndARerunDecidesOnRankZerosFiles()
    {
        var data = TestUtil.CsvFolder("mpi-diag", 200, 6, 3, seed: 5);
        var root = TestUtil.TempDir("mpi-diag");
        string[] Args(string dir) => ["hessian", "--data", data, "--model", "mlp:6-10-3:tanh", "--subset", "0", "--batch-size", "64", "--threads", "1",
            "--diagonal", "--diagonal-method", "hutchinson", "--diagonal-products", "40", "--frobenius", "--trace-error", "1e-9", "--max-products", "40", "--out", dir, "--format", "json"];
        string one = Path.Combine(root, "one"), two = Path.Combine(root, "two");
        Assert.Equal(0, InProcess(Args(one)));
        var run = Exec(2, Cli, Args(two));
        Assert.True(run.Code == 0, run.Stderr);
        double[] Entries(string dir) => File.ReadAllLines(Path.Combine(dir, "diagonal.csv")).Skip(1).Select(l => double.Parse(l.Split(',')[2], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        double Norm(string json) => JsonDocument.Parse(json).RootElement.GetProperty("frobenius").GetProperty("norm").GetDouble();
        // The same probes on every rank, products summed over them: the one-process numbers up to rounding.
        var (e1, e2) = (Entries(one), Entries(two));
        double scale = e1.Max(Math.Abs);
        for (int i = 0; i < e1.Length; i++) Assert.True(Math.Abs(e1[i] - e2[i]) <= 1e-5 * scale, $"entry {i}: {e1[i]} vs {e2[i]}");
        Close(Norm(File.ReadAllText(Path.Combine(one, "hessian.json"))), Norm(run.Stdout), 1e-5, "Frobenius norm");
        // Rank 0 alone sees the folder: without diagonal.csv every rank recomputes the diagonal, and keeps the finished
        // Frobenius norm (ranks deciding apart would wait forever for each other's products).
        File.Delete(Path.Combine(two, "diagonal.csv"));
        var again = Exec(2, Cli, Args(two), timeoutSeconds: 120);
        Assert.True(again.Code == 0, again.Stderr);
        Assert.Equal(e2, Entries(two));
        Assert.Equal(Norm(run.Stdout), Norm(again.Stdout));
        // The exact diagonal (the default for this MLP): each rank's examples, summed over the ranks.
        string[] Exact(string dir) => ["hessian", "--data", data, "--model", "mlp:6-10-3:tanh", "--subset", "0", "--batch-size", "64", "--threads", "1",
            "--diagonal", "--out", dir, "--format", "json"];
        string xOne = Path.Combine(root, "exact-one"), xTwo = Path.Combine(root, "exact-two");
        Assert.Equal(0, InProcess(Exact(xOne)));
        var xRun = Exec(2, Cli, Exact(xTwo));
        Assert.True(xRun.Code == 0, xRun.Stderr);
        var (x1, x2) = (Entries(xOne), Entries(xTwo));
        double xScale = x1.Max(Math.Abs);
        for (int i = 0; i < x1.Length; i++) Assert.True(Math.Abs(x1[i] - x2[i]) <= 1e-5 * xScale, $"exact entry {i}: {x1[i]} vs {x2[i]}");
        Assert.Equal("exact", JsonDocument.Parse(xRun.Stdout).RootElement.GetProperty("diagonal").GetProperty("method").GetString());
    }

    [Fact]
    public void HessianOnANpzWithBinaryCrossEntropyOnTwoRanksEqualsOneProcessOnTheCsv()
    {
        var root = TestUtil.TempDir("mpi-npz");
        string[] Args(string data, string dir, params string[] extra) => ["hessian", "--data", data, "--subset", "0", "--threads", "1",
            "--normalize", "standardize", "--top", "2", "--tol", "1e-6", "--out", dir, "--format", "json", .. extra];
        InProcess(Args(Valley.Tests.Data.NumPyFileTests.Fixture("cls.csv"), Path.Combine(root, "one"), "--model", "mlp:3-6-3:tanh"));
        var run = Exec(2, Cli, Args(Valley.Tests.Data.NumPyFileTests.Fixture("cls.npz"), Path.Combine(root, "two"), "--model", "mlp:3-6-3:tanh"));
        Assert.True(run.Code == 0, run.Stderr);
        var one = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "one", "hessian.json"))).RootElement.GetProperty("report").GetProperty("top").GetProperty("values");
        var two = JsonDocument.Parse(run.Stdout).RootElement.GetProperty("report").GetProperty("top").GetProperty("values");
        for (int i = 0; i < 2; i++) Close(one[i].GetDouble(), two[i].GetDouble(), 1e-5, $"λ{i + 1}");

        var multi = Valley.Tests.Data.NumPyFileTests.Fixture("multilabel.npz");
        InProcess(Args(multi, Path.Combine(root, "bce-one"), "--loss", "bce", "--model", "mlp:3-6-2:tanh"));
        var bce = Exec(2, Cli, Args(multi, Path.Combine(root, "bce-two"), "--loss", "bce", "--model", "mlp:3-6-2:tanh"));
        Assert.True(bce.Code == 0, bce.Stderr);
        var b1 = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "bce-one", "hessian.json"))).RootElement.GetProperty("report").GetProperty("lambda_max").GetDouble();
        var b2 = JsonDocument.Parse(bce.Stdout).RootElement.GetProperty("report").GetProperty("lambda_max").GetDouble();
        Close(b1, b2, 1e-5, "λmax under bce");
    }

    [Fact]
    public void SharpnessMeasuresOnTwoRanksEqualOneProcess()
    {
        var data = TestUtil.CsvFolder("mpi-sharp", 240, 6, 3, seed: 7);
        var root = TestUtil.TempDir("mpi-sharpness");
        string[] Args(string dir) => ["sharpness", "--data", data, "--model", "mlp:6-10-3:tanh", "--subset", "0", "--batch-size", "64", "--threads", "1",
            "--measures", "keskar,sam,pacbayes,fisher-trace,relative-flatness", "--epsilon", "1e-3", "--out", dir, "--format", "json"];
        InProcess(Args(Path.Combine(root, "one")));
        var run = Exec(2, Cli, Args(Path.Combine(root, "two")));
        Assert.True(run.Code == 0, run.Stderr);
        var one = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "one", "sharpness.json"))).RootElement.GetProperty("results").EnumerateArray().ToList();
        var two = JsonDocument.Parse(run.Stdout).RootElement.GetProperty("results").EnumerateArray().ToList();
        Assert.Equal(one.Select(r => r.GetProperty("measure").GetString()), two.Select(r => r.GetProperty("measure").GetString()));
        Assert.Contains("fisher-trace", two.Select(r => r.GetProperty("measure").GetString()));
        for (int k = 0; k < one.Count; k++)
            Close(one[k].GetProperty("value").GetDouble(), two[k].GetProperty("value").GetDouble(), 1e-4, one[k].GetProperty("measure").GetString()!);
    }

    [Fact]
    public void ARankWithAMissingShardStopsEveryRankWithOneClearError()
    {
        var shard0 = TestUtil.CsvFolder("mpi-shard", 100, 6, 3, seed: 5);
        var template = Path.Combine(TestUtil.TempDir("mpi-shards"), "no-such-shard-{rank}");
        Directory.Move(shard0, template.Replace("{rank}", "0"));
        var outDir = Path.Combine(TestUtil.TempDir("mpi-badshard"), "h");
        var run = Exec(2, Cli, ["hessian", "--data", template, "--model", "mlp:6-10-3", "--top", "1", "--out", outDir], timeoutSeconds: 90);
        Assert.Equal(ValleyCli.ExitBadInput, run.Code);
        var lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, run.Stderr);
        Assert.Contains("rank 1 of 2", lines[0]);
        Assert.Contains("no-such-shard-1", lines[0]);
        Assert.False(File.Exists(Path.Combine(outDir, "hessian.json")));
    }

    [Fact]
    public void LandscapeGridOnTwoRanksEqualsOneProcessAndResumesFromAPartialFile()
    {
        var data = TestUtil.CsvFolder("mpi-land", 200, 6, 3, seed: 6);
        var root = TestUtil.TempDir("mpi-landscape");
        string[] Args(string dir) => ["landscape", "2d", "--data", data, "--model", "mlp:6-10-3:tanh", "--points", "6x5", "--threads", "1", "--out", dir, "--format", "json"];
        InProcess(Args(Path.Combine(root, "one")));
        var onePoints = Points(Path.Combine(root, "one", "points.csv"));
        Assert.Equal(30, onePoints.Count);

        var run = Exec(2, Cli, Args(Path.Combine(root, "two")));
        Assert.True(run.Code == 0, run.Stderr);
        Same(onePoints, Points(Path.Combine(root, "two", "points.csv")));
        Assert.True(File.Exists(Path.Combine(root, "two", "surface.html")));

        // An interrupted run: 11 finished points and a torn line. Two ranks finish it, reusing the 11.
        var lines = File.ReadAllLines(Path.Combine(root, "one", "points.csv"));
        var partial = Path.Combine(root, "partial");
        Directory.CreateDirectory(partial);
        File.Copy(Path.Combine(root, "one", "run.json"), Path.Combine(partial, "run.json"));
        File.WriteAllText(Path.Combine(partial, "points.csv"), string.Join("\n", lines.Take(12)) + "\n" + lines[12][..10]);
        var resumed = Exec(2, Cli, Args(partial));
        Assert.True(resumed.Code == 0, resumed.Stderr);
        Assert.Equal(11, JsonDocument.Parse(resumed.Stdout).RootElement.GetProperty("resumed").GetInt32());
        Same(onePoints, Points(Path.Combine(partial, "points.csv")));
    }

    [Fact]
    public async Task CtrlCUnderMpiexecStopsEveryRankWithExitCode3AndTheGridResumes()
    {
        var outDir = Path.Combine(TestUtil.TempDir("mpi-ctrlc"), "l");
        string[] args = ["landscape", "2d", "--points", "31x31", "--subset", "10000", "--out", outDir, "--format", "json"];
        var psi = new ProcessStartInfo(Mpiexec, new[] { "-n", "2", "dotnet", Cli }.Concat(args)) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        _ = p.StandardOutput.ReadToEndAsync();
        var points = Path.Combine(outDir, "points.csv");
        var sw = Stopwatch.StartNew();
        while ((!File.Exists(points) || File.ReadAllLines(points).Length < 40) && !p.HasExited && sw.Elapsed.TotalSeconds < 120) Thread.Sleep(100);
        Assert.False(p.HasExited, "the grid finished before it could be interrupted");
        Process.Start("kill", ["-INT", p.Id.ToString()])!.WaitForExit();
        if (!p.WaitForExit(60_000)) { p.Kill(entireProcessTree: true); Assert.Fail("mpiexec did not end within 60 s of Ctrl-C"); }
        Assert.Equal(ValleyCli.ExitInterrupted, p.ExitCode);
        Assert.Matches(@"interrupted \(rank [01] of 2\): finished results were kept", await stderr);
        int kept = File.ReadAllLines(points).Length - 1;

        var run = Exec(2, Cli, args);
        Assert.True(run.Code == 0, run.Stderr);
        var json = JsonDocument.Parse(run.Stdout).RootElement;
        Assert.True(json.GetProperty("resumed").GetInt32() >= Math.Min(kept, 39), $"resumed {json.GetProperty("resumed").GetInt32()} of {kept} kept points");
        var keys = File.ReadAllLines(points).Skip(1).Select(l => string.Join(',', l.Split(',').Take(2))).ToList();
        Assert.Equal(31 * 31, keys.Count);
        Assert.Equal(keys.Count, keys.Distinct().Count());
    }

    static Dictionary<(int, int), double[]> Points(string path) => File.ReadAllLines(path).Skip(1)
        .Select(l => l.Split(',')).Where(c => c.Length == 8 && c[4].Length > 0)
        .ToDictionary(c => (int.Parse(c[0]), int.Parse(c[1])), c => c.Skip(2).Take(4).Select(s => double.Parse(s, System.Globalization.CultureInfo.InvariantCulture)).ToArray());

    static void Same(Dictionary<(int, int), double[]> a, Dictionary<(int, int), double[]> b)
    {
        Assert.Equal(a.Count, b.Count);
        foreach (var (k, v) in a)
        {
            Assert.True(b.TryGetValue(k, out var w), $"point {k} missing");
            for (int i = 0; i < v.Length; i++) Close(v[i], w![i], 1e-6, $"point {k} column {i}");
        }
    }

    [Fact]
    public void StudyTrainsItsModelsAcrossRanksWithTheResultsOfOneProcess()
    {
        var root = TestUtil.TempDir("mpi-study");
        string[] Args(string dir) => ["study", "--preset", "quick", "--threads", "1", "--out", dir, "--format", "json"];
        var one = Exec(0, Cli, Args(Path.Combine(root, "one")));
        Assert.True(one.Code == 0, one.Stderr);
        var two = Exec(2, Cli, Args(Path.Combine(root, "two")));
        Assert.True(two.Code == 0, two.Stderr);
        var m1 = JsonDocument.Parse(one.Stdout).RootElement.GetProperty("models").EnumerateArray().ToList();
        var m2 = JsonDocument.Parse(two.Stdout).RootElement.GetProperty("models").EnumerateArray().ToList();
        Assert.Equal(m1.Select(m => m.GetProperty("name").GetString()), m2.Select(m => m.GetProperty("name").GetString()));
        for (int k = 0; k < m1.Count; k++)
        {
            Close(m1[k].GetProperty("test_accuracy").GetDouble(), m2[k].GetProperty("test_accuracy").GetDouble(), 1e-9, "test accuracy");
            foreach (var measure in new[] { "lambda_max", "trace", "keskar_eps1e-3", "pacbayes_flatness" })
                Close(m1[k].GetProperty("measures").GetProperty(measure).GetDouble(), m2[k].GetProperty("measures").GetProperty(measure).GetDouble(), 1e-6, $"{measure} of model {k}");
        }
        foreach (var f in new[] { "report.html", "summary.json", "results.csv", "parametric.png" })
            Assert.True(File.Exists(Path.Combine(root, "two", f)), f);
        // Rank 1 trained the second model: its folder is there, written by that rank.
        Assert.True(File.Exists(Path.Combine(root, "two", "models", m2[1].GetProperty("name").GetString()!, "measures.json")));
    }

    [Fact]
    public void TrainRefusesToRunUnderMpiexecWithOneLine()
    {
        var run = Exec(2, Cli, ["train", "--out", Path.Combine(TestUtil.TempDir("mpi-train"), "t")], timeoutSeconds: 90);
        Assert.Equal(ValleyCli.ExitBadInput, run.Code);
        Assert.Single(run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("valley study", run.Stderr);
    }
}

/// <summary>The sharing rules, in one process.</summary>
public class ShardingTests
{
    public ShardingTests() => TestUtil.Init();

    sealed class FakeRank(int rank, int size) : IProcessGroup
    {
        public int Rank => rank;
        public int Size => size;
        public void Sum(double[] values) => throw new NotSupportedException();
        public double[] AllGather(double[] values) => throw new NotSupportedException();
        public byte[] Broadcast(byte[] value, int root = 0) => throw new NotSupportedException();
        public byte[][]? Gather(byte[] value, int root = 0) => throw new NotSupportedException();
        public void Barrier() => throw new NotSupportedException();
        public void Abort(int exitCode) => throw new NotSupportedException();
        public double CommunicationSeconds => 0;
    }

    [Theory]
    [InlineData(10, 3)]
    [InlineData(7, 7)]
    [InlineData(1000, 4)]
    public void ShardsCoverEveryExampleOnceInOrder(int n, int size)
    {
        using var all = Valley.Data.Synthetic.GaussianMixture(n, 3, 2, seed: 1);
        var xs = new List<float>();
        var counts = new List<long>();
        for (int r = 0; r < size; r++)
        {
            using var s = all.Shard(new FakeRank(r, size));
            counts.Add(s.Count);
            xs.AddRange(s.X.data<float>().ToArray());
        }
        Assert.Equal(all.X.data<float>().ToArray(), xs);
        Assert.True(counts.Max() - counts.Min() <= 1);
    }

    [Fact]
    public void MoreRanksThanExamplesIsAClearError()
    {
        using var all = Valley.Data.Synthetic.GaussianMixture(3, 2, 2, seed: 1);
        var e = Assert.Throws<ValleyException>(() => all.Shard(new FakeRank(0, 4)));
        Assert.Contains("cannot be shared by 4 ranks", e.Message);
    }

    [Fact]
    public void OneProcessIsAGroupWhoseCollectivesAreTheIdentity()
    {
        var g = SingleProcess.Instance;
        var v = new[] { 1.5, -2.0 };
        g.Sum(v);
        Assert.Equal(new[] { 1.5, -2.0 }, v);
        Assert.Equal(v, g.AllGather(v));
        Assert.Equal((0L, 9L), g.Share(9));
        Assert.Equal(42, g.Agree(() => 42));
        Assert.Throws<ValleyException>(() => g.Agree(() => throw new ValleyException("x")));
    }
}

/// <summary>--device under mpiexec: cuda:{rank} names the GPU of the rank's local index.</summary>
public class DeviceOptionTests
{
    public DeviceOptionTests() => TestUtil.Init();

    [Fact]
    public void CudaRankPlaceholderIsTheLocalRankAndCpuIsUnchanged()
    {
        var saved = Environment.GetEnvironmentVariable("MPI_LOCALRANKID");
        try
        {
            Environment.SetEnvironmentVariable("MPI_LOCALRANKID", "1");
            Assert.Equal(TorchSharp.DeviceType.CPU, Valley.Cli.Commands.CommonOptions.ParseDevice("cpu").type);
            // This build has no CUDA: the error names the device the placeholder became.
            var e = Assert.Throws<ValleyException>(() => Valley.Cli.Commands.CommonOptions.ParseDevice("cuda:{rank}"));
            Assert.Contains("--device cuda:1:", e.Message);
        }
        finally { Environment.SetEnvironmentVariable("MPI_LOCALRANKID", saved); }
    }
}

/// <summary>Standardization statistics over shards: with one process, the data set's own mean and standard deviation.</summary>
public class ShardStatisticsTests
{
    public ShardStatisticsTests() => TestUtil.Init();

    [Fact]
    public void StatisticsOfOneProcessAreTheMeanAndUnbiasedStandardDeviationOfAllInputs()
    {
        using var data = Valley.Data.Synthetic.GaussianMixture(50, 4, 2, seed: 9);
        var x = data.X.data<float>().ToArray().Select(v => (double)v).ToArray();
        double mean = x.Average(), std = Math.Sqrt(x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1));
        var (m, s) = Valley.Data.DataSources.Statistics(data, SingleProcess.Instance);
        Assert.Equal(mean, m, 10);
        Assert.Equal(std, s, 10);
    }
}
