using System.Text.Json;
using Valley.Cli;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;

namespace Valley.Tests.Cli;

public class HessianCommandTests
{
    public HessianCommandTests() => TestUtil.Init();

    static string CsvData() => TestUtil.CsvFolder("csvdata", 120, 4, 3, seed: 1);

    static int Run(out string stdout, out string stderr, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        stdout = o.ToString();
        stderr = e.ToString();
        return code;
    }

    [Fact]
    public void HessianCommandWritesJsonCsvAndPngWhoseValuesMatchTheExactSpectrum()
    {
        var data = CsvData();
        var outDir = Path.Combine(TestUtil.TempDir("hessian-out"), "h");
        int code = Run(out _, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64",
            "--top", "3", "--bottom", "2", "--trace", "--density", "--exact", "--tol", "1e-8", "--density-runs", "3", "--density-steps", "20", "--out", outDir);
        Assert.True(code == 0, err);
        foreach (var f in new[] { "hessian.json", "density.csv", "density-nodes.csv", "density.png" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
        var report = json.GetProperty("report");
        var exact = report.GetProperty("exact").GetProperty("eigenvalues").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var top = report.GetProperty("top").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var bottom = report.GetProperty("bottom").GetProperty("values").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(4 * 6 + 6 + 6 * 3 + 3, json.GetProperty("parameters").GetInt32());
        for (int i = 0; i < 3; i++) Assert.Equal(exact[^(i + 1)], top[i], 6);
        for (int i = 0; i < 2; i++) Assert.Equal(exact[i], bottom[i], 6);
        var trace = report.GetProperty("trace");
        Assert.True(Math.Abs(trace.GetProperty("trace").GetDouble() - exact.Sum()) <= 4 * trace.GetProperty("standard_error").GetDouble() + 1e-9);
        Assert.Equal(exact[^1], report.GetProperty("lambda_max").GetDouble(), 9);
        var png = File.ReadAllBytes(Path.Combine(outDir, "density.png"));
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, png[..4]);
    }

    [Theory]
    [InlineData("--top", "1000000", "--top: must be between 0 and the number of parameters")]
    [InlineData("--tol", "-1", "--tol: must be in (0, 1)")]
    [InlineData("--max-products", "0", "--max-products")]
    [InlineData("--density-steps", "1", "--density-steps")]
    public void BadHessianOptionsGiveClearErrors(string option, string value, string expected)
    {
        var data = CsvData();
        int code = Run(out _, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3", "--out", TestUtil.TempDir("bad"), option, value);
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains(expected, err);
    }

    [Fact]
    public void TheTraceOnASmallBudgetStaysWithinItAndHasAStandardError()
    {
        var data = CsvData();
        int code = Run(out var stdout, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3", "--subset", "0", "--dtype", "float64", "--trace", "--exact",
            "--trace-method", "xtrace", "--max-products", "15", "--format", "json", "--out", TestUtil.TempDir("small-budget"));
        Assert.True(code == 0, err);
        var report = JsonDocument.Parse(stdout).RootElement.GetProperty("report");
        var trace = report.GetProperty("trace");
        Assert.True(trace.GetProperty("products").GetInt64() <= 15, trace.GetRawText());
        double se = trace.GetProperty("standard_error").GetDouble();
        Assert.True(se > 0 && double.IsFinite(se), trace.GetRawText());
        double exact = report.GetProperty("exact").GetProperty("trace").GetDouble();
        Assert.True(Math.Abs(trace.GetProperty("trace").GetDouble() - exact) <= 5 * se, $"{trace.GetRawText()} exact {exact}");
    }

    [Fact]
    public void TheTableSaysWhyAnEigenvalueDidNotConverge()
    {
        var spectrum = Enumerable.Range(0, 300).Select(i => i < 3 ? 1.0 - 0.1 * i : 0.5 * Math.Sin(i)).ToArray();
        using var f64 = DenseOperator.WithSpectrum(spectrum, seed: 1);
        using var f32 = new DenseOperator(f64.Matrix.to(TorchSharp.torch.ScalarType.Float32));
        var top = Valley.Curvature.Spectrum.Lanczos.Compute(f32, new Valley.Curvature.Spectrum.LanczosOptions { Tolerance = 1e-8 });
        var report = new Valley.Curvature.Spectrum.SpectrumReport { Size = 300, Options = new(), Top = top };
        var text = new StringWriter();
        var term = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings
        {
            Out = new Spectre.Console.AnsiConsoleOutput(text), Ansi = Spectre.Console.AnsiSupport.No, ColorSystem = Spectre.Console.ColorSystemSupport.NoColors,
        });
        term.Profile.Width = 400;
        Valley.Cli.Commands.HessianCommand.Render(term, report, "hessian.json", TorchSharp.torch.ScalarType.Float32);
        var output = text.ToString();
        Assert.Contains("(not converged: precision floor)", output);
        Assert.Contains($"λ top: {top.StopMessage} (--dtype float64)", output);
    }

    [Fact]
    public void JsonFormatPrintsTheReportOnStdout()
    {
        var data = CsvData();
        int code = Run(out var stdout, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3", "--top", "1", "--format", "json", "--out", TestUtil.TempDir("json"));
        Assert.True(code == 0, err);
        var doc = JsonDocument.Parse(stdout).RootElement;
        Assert.True(doc.GetProperty("report").GetProperty("top").GetProperty("values")[0].GetDouble() > 0);
    }
}

public class TrainCommandTests
{
    public TrainCommandTests() => TestUtil.Init();

    [Fact]
    public async Task TrainCommandWritesItsFilesAndResumeContinuesToTheSameWeights()
    {
        var data = TestUtil.CsvFolder("train-data", 90, 4, 3, seed: 1);
        string[] Args(string outDir, int epochs, bool resume = false) =>
            new[] { "train", "--data", data, "--model", "mlp:4-8-3", "--optimizer", "sam", "--epochs", epochs.ToString(), "--batch-size", "30",
                    "--monitor-every", "3", "--monitor-examples", "90", "--save-pt", "--out", outDir }.Concat(resume ? new[] { "--resume" } : []).ToArray();
        var full = TestUtil.TempDir("train-full");
        Assert.Equal(0, await ValleyCli.RunAsync(Args(full, 3), new StringWriter(), new StringWriter()));
        foreach (var f in new[] { "model.dat", "model.pt", "train.json", "log.csv", "monitor.csv", "training.png", "checkpoints/epoch-0003.dat", "checkpoints/epoch-0001.pt" })
            Assert.True(File.Exists(Path.Combine(full, f)), f);
        var part = TestUtil.TempDir("train-part");
        Assert.Equal(0, await ValleyCli.RunAsync(Args(part, 1), new StringWriter(), new StringWriter()));
        var err = new StringWriter();
        Assert.Equal(ValleyCli.ExitBadInput, await ValleyCli.RunAsync(Args(part, 3), new StringWriter(), err));
        Assert.Contains("--resume", err.ToString());
        Assert.Equal(0, await ValleyCli.RunAsync(Args(part, 3, resume: true), new StringWriter(), new StringWriter()));
        Assert.Equal(File.ReadAllBytes(Path.Combine(full, "model.dat")), File.ReadAllBytes(Path.Combine(part, "model.dat")));
        var options = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(part, "train.json"))).RootElement.GetProperty("options");
        Assert.Equal("sam", options.GetProperty("optimizer").GetString());
        Assert.Equal("sgd", options.GetProperty("base_optimizer").GetString());
        Assert.Equal("constant", options.GetProperty("schedule").GetString());
    }

    [Fact]
    public async Task RefusedOptionsAreNamedAsTheCommandSpellsThem()
    {
        var data = TestUtil.CsvFolder("train-names", 60, 4, 3, seed: 1);
        string Error(string outDir, params string[] extra)
        {
            var err = new StringWriter();
            Assert.Equal(ValleyCli.ExitBadInput, ValleyCli.RunAsync(["train", "--data", data, "--model", "mlp:4-6-3", "--epochs", "1", "--out", outDir, .. extra],
                new StringWriter(), err).GetAwaiter().GetResult());
            Assert.Single(err.ToString().Trim().Split('\n'));
            return err.ToString();
        }
        var fresh = TestUtil.TempDir("train-names-out");
        Assert.Contains("--m: must be positive, or 0 for the whole batch, got -2", Error(fresh, "--optimizer", "sam", "--m", "-2"));
        Assert.Contains("--swa-start: must be at least 1", Error(fresh, "--swa-start", "0"));
        Assert.Contains("--lr: must be a positive finite number, got 0", Error(fresh, "--lr", "0"));
        Assert.Contains("--checkpoint-every: must be at least 1, got 0", Error(fresh, "--checkpoint-every", "0"));
        // Resuming with another option names it, with the value the run was started with.
        Assert.Equal(0, await ValleyCli.RunAsync(["train", "--data", data, "--model", "mlp:4-6-3", "--epochs", "1", "--out", fresh, "--optimizer", "sam"],
            new StringWriter(), new StringWriter()));
        Assert.Contains("--optimizer: the run in", Error(fresh, "--optimizer", "asam", "--resume"));
        Assert.Contains("was started with sam", Error(fresh, "--optimizer", "asam", "--resume"));
        Assert.Contains("--lr: the run in", Error(fresh, "--optimizer", "sam", "--lr", "0.5", "--resume"));
    }

    [Fact]
    public void ASecondProcessOnTheSameOutputFolderIsRefused()
    {
        var dir = TestUtil.TempDir("locked");
        using var held = OutputLock.Acquire(dir);
        Assert.Contains("another valley process", Assert.Throws<ValleyException>(() => OutputLock.Acquire(dir)).Message);
    }
}

public class SharpnessCommandTests
{
    public SharpnessCommandTests() => TestUtil.Init();

    [Fact]
    public async Task SharpnessCommandWritesEveryRequestedMeasureAndRefusesBadOptions()
    {
        var data = TestUtil.CsvFolder("sharp-data", 80, 4, 3, seed: 1);
        var outDir = TestUtil.TempDir("sharp-out");
        var stdout = new StringWriter();
        int code = await ValleyCli.RunAsync(["sharpness", "--data", data, "--model", "mlp:4-6-3", "--measures", "keskar,sam,worst-case-l2-adaptive,pacbayes",
            "--steps", "5", "--samples", "3", "--format", "json", "--out", outDir], stdout, new StringWriter());
        Assert.Equal(0, code);
        var doc = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        var names = doc.GetProperty("results").EnumerateArray().Select(r => r.GetProperty("measure").GetString()).ToList();
        Assert.Equal(2, names.Count(n => n == "keskar")); // ε = 1e-3 and 5e-4
        Assert.Contains("sam-one-step", names);
        Assert.Contains("worst-case-l2-adaptive", names);
        Assert.Contains("pacbayes-init", names);
        Assert.True(File.Exists(Path.Combine(outDir, "sharpness.json")));
        foreach (var (opt, val, msg) in new[] { ("--measures", "sharpest", "unknown measure 'sharpest'"), ("--epsilon", "-1", "--epsilon"), ("--rho", "0", "--rho") })
        {
            var err = new StringWriter();
            Assert.Equal(ValleyCli.ExitBadInput, await ValleyCli.RunAsync(["sharpness", "--data", data, "--model", "mlp:4-6-3", "--out", outDir, opt, val], new StringWriter(), err));
            Assert.Contains(msg, err.ToString());
        }
    }

    [Fact]
    public void LayerRestrictsEveryMeasureAndBadValuesAreOneLineErrorsInTheCommandsNames()
    {
        var data = TestUtil.CsvFolder("sharp-layer", 64, 4, 3, seed: 2);
        (int Code, string Out, string Err) Run(params string[] extra)
        {
            var (o, e) = (new StringWriter(), new StringWriter());
            int code = ValleyCli.RunAsync(["sharpness", "--data", data, "--model", "mlp:4-6-3", "--subset", "0",
                "--format", "json", "--out", TestUtil.TempDir("sharp-layer-out"), .. extra], o, e).GetAwaiter().GetResult();
            return (code, o.ToString(), e.ToString());
        }
        Dictionary<string, double> Values(params string[] extra)
        {
            var (code, stdout, err) = Run(["--measures", "worst-case-l2,average-case,sam", "--steps", "3", "--samples", "3", .. extra]);
            Assert.True(code == 0, err);
            return System.Text.Json.JsonDocument.Parse(stdout).RootElement.GetProperty("results").EnumerateArray()
                .ToDictionary(r => r.GetProperty("measure").GetString()!, r => r.GetProperty("value").GetDouble());
        }
        var all = Values();
        var last = Values("--layer", "2");
        foreach (var m in new[] { "worst-case-l2", "average-case", "sam-one-step" })
            Assert.True(all[m] != last[m], $"{m}: --layer 2 gave the value over all parameters ({all[m]})");
        foreach (var (extra, expected) in new[]
                 {
                     (new[] { "--layer", "2.bias", "--measures", "relative-flatness" }, "--layer: relative-flatness: needs a weight matrix"),
                     (new[] { "--epsilon", "1e-3,-1" }, "--epsilon: must be a positive finite number, got -1"),
                     (new[] { "--epsilon", "x" }, "--epsilon: 'x' is not a number"),
                     (new[] { "--rho", "0" }, "--rho: must be a positive finite number, got 0"),
                     (new[] { "--steps", "0" }, "--steps: must be at least 1, got 0"),
                     (new[] { "--samples", "0" }, "--samples: must be at least 1, got 0"),
                     (new[] { "--measures", "sam,sharpest" }, "--measures: unknown measure 'sharpest'"),
                 })
        {
            var (code, _, err) = Run(extra);
            Assert.Equal(ValleyCli.ExitBadInput, code);
            Assert.Single(err.Trim().Split('\n'));
            Assert.Contains(expected, err);
        }
    }

    [Fact]
    public async Task MeasuresListDescribesEveryRegisteredMeasure()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, await ValleyCli.RunAsync(["sharpness", "--measures", "list"], stdout, new StringWriter()));
        foreach (var m in Valley.Sharpness.SharpnessMeasures.All)
            Assert.Contains(m.Name, stdout.ToString());
        Assert.Contains("Petzka", stdout.ToString());
    }
}

public class LandscapeCommandTests
{
    public LandscapeCommandTests() => TestUtil.Init();

    [Fact]
    public async Task TrajectoryOfATrainingRunWritesEveryFileAndAResumedRunReusesItsPoints()
    {
        var data = TestUtil.CsvFolder("land-data", 90, 4, 3, seed: 2);
        var train = TestUtil.TempDir("land-train");
        Assert.Equal(0, await ValleyCli.RunAsync(["train", "--data", data, "--model", "mlp:4-8-3", "--epochs", "4", "--batch-size", "30", "--out", train],
            new StringWriter(), new StringWriter()));
        var outDir = Path.Combine(TestUtil.TempDir("land-out"), "traj");
        string[] args = ["landscape", "trajectory", "--data", data, "--model", "mlp:4-8-3", "--checkpoints", Path.Combine(train, "checkpoints"),
            "--points", "7x7", "--out", outDir, "--format", "json"];
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.True(await ValleyCli.RunAsync(args, stdout, stderr) == 0, stderr.ToString());
        foreach (var f in new[] { "grid.json", "points.csv", "landscape.png", "surface.html", "surface.vtk" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        var doc = System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
        Assert.Equal(49, doc.GetProperty("points").GetArrayLength());
        Assert.Equal(4, doc.GetProperty("trajectory_x").GetArrayLength());
        Assert.True(doc.GetProperty("explained_variance")[0].GetDouble() > 0.3);
        var again = new StringWriter();
        Assert.Equal(0, await ValleyCli.RunAsync(args, again, new StringWriter()));
        Assert.Equal(49, System.Text.Json.JsonDocument.Parse(again.ToString()).RootElement.GetProperty("resumed").GetInt32());
        var vtk = File.ReadAllLines(Path.Combine(outDir, "surface.vtk"));
        Assert.Equal("DIMENSIONS 7 7 1", vtk[4]);
        // A different run in the same folder is refused; bad options are one-line errors.
        var err = new StringWriter();
        Assert.Equal(ValleyCli.ExitBadInput, await ValleyCli.RunAsync(["landscape", "2d", "--data", data, "--model", "mlp:4-8-3", "--out", outDir], new StringWriter(), err));
        Assert.Contains("holds a landscape run of other inputs (--checkpoints contents", err.ToString());
        foreach (var (opt, val) in new[] { ("--range", "1:-1"), ("--points", "0"), ("--points", "5y5") })
        {
            var e2 = new StringWriter();
            Assert.Equal(ValleyCli.ExitBadInput, await ValleyCli.RunAsync(["landscape", "1d", "--data", data, "--model", "mlp:4-8-3", "--out", TestUtil.TempDir("bad"), opt, val], new StringWriter(), e2));
            Assert.Contains(opt, e2.ToString());
        }
    }
}
