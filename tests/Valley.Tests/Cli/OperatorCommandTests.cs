using System.Text.Json;
using Valley.Cli;
using Xunit;

namespace Valley.Tests.Cli;

/// <summary><c>valley hessian --operator ...</c>, <c>--diagonal</c> and <c>--frobenius</c> (issue 18).</summary>
public class OperatorCommandTests
{
    public OperatorCommandTests() => TestUtil.Init();

    static string CsvData() => TestUtil.CsvFolder("csvdata-ops", 80, 4, 3, seed: 2);

    static int Run(out string stdout, out string stderr, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        stdout = o.ToString();
        stderr = e.ToString();
        return code;
    }

    static double[] Doubles(JsonElement e) => e.EnumerateArray().Select(v => v.GetDouble()).ToArray();

    [Fact]
    public void KfacThatCoversNoSelectedParameterIsRefusedRatherThanReportedAsZero()
    {
        // The archive's layers are TorchScript modules K-FAC cannot see: its "eigenvalues" would be zeros reported as converged.
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript");
        int code = Run(out _, out var err, "hessian", "--model", Path.Combine(dir, "resnet_bn.pt"), "--data", Path.Combine(dir, "resnet_bn_data.npz"),
            "--operator", "kfac", "--top", "3", "--out", Path.Combine(TestUtil.TempDir("kfac-none"), "h"));
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains("K-FAC covers none of the selected parameters", err);
    }

    [Theory]
    [InlineData("ef")]
    [InlineData("mc-fisher")]
    [InlineData("kfac")]
    public void PerExampleOperatorsAreRefusedWithTrainModeOnAModelWithBatchNorm(string op)
    {
        // BatchNorm's batch statistics couple the examples in train mode: per-example gradients and labels are not defined.
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript");
        var outDir = Path.Combine(TestUtil.TempDir("train-mode-bn"), op);
        int code = Run(out _, out var err, "hessian", "--model", Path.Combine(dir, "resnet_bn.pt"), "--data", Path.Combine(dir, "resnet_bn_data.npz"),
            "--operator", op, "--train-mode", "--top", "1", "--out", outDir);
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith("--train-mode: must be off for", err.Trim().Replace("error: ", ""));
        Assert.Contains("BatchNorm", err);
        // Refused before anything was computed or written.
        Assert.False(File.Exists(Path.Combine(outDir, "hessian.json")));
    }

    [Fact]
    public void FisherTraceIsRefusedWithTrainModeOnAModelWithBatchNorm()
    {
        // The sharpness measure built from per-example gradients, like the ef, mc-fisher and kfac operators.
        string dir = Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript");
        var outDir = Path.Combine(TestUtil.TempDir("train-mode-bn-fisher-trace"), "s");
        int code = Run(out _, out var err, "sharpness", "--model", Path.Combine(dir, "resnet_bn.pt"), "--data", Path.Combine(dir, "resnet_bn_data.npz"),
            "--measures", "fisher-trace", "--train-mode", "--out", outDir);
        Assert.Equal(1, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith("--train-mode: must be off for fisher-trace", err.Trim().Replace("error: ", ""));
        // Refused before anything was computed.
        var json = Path.Combine(outDir, "sharpness.json");
        if (File.Exists(json)) Assert.Empty(JsonDocument.Parse(File.ReadAllText(json)).RootElement.GetProperty("results").EnumerateArray());
    }

    [Theory]
    [InlineData("ggn")]
    [InlineData("ef")]
    [InlineData("kfac")]
    public void EachOperatorsTopEigenvaluesMatchItsExactSpectrumAndTheOutputNamesIt(string op)
    {
        var outDir = Path.Combine(TestUtil.TempDir("operator-out"), op);
        int code = Run(out _, out var err, "hessian", "--data", CsvData(), "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64",
            "--operator", op, "--top", "2", "--trace", "--exact", "--tol", "1e-8", "--diagonal", "--out", outDir);
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
        Assert.Equal(op, json.GetProperty("operator").GetString());
        var report = json.GetProperty("report");
        var exact = Doubles(report.GetProperty("exact").GetProperty("eigenvalues"));
        var top = Doubles(report.GetProperty("top").GetProperty("values"));
        for (int i = 0; i < 2; i++) Assert.Equal(exact[^(i + 1)], top[i], 6);
        // PSD: no eigenvalue below −1e-10·λmax.
        Assert.True(exact[0] >= -1e-10 * exact[^1]);
        // The diagonal's entries, one row per parameter, and its per-parameter sums add up to the exact trace within their errors.
        var rows = File.ReadAllLines(Path.Combine(outDir, "diagonal.csv"));
        Assert.Equal(4 * 6 + 6 + 6 * 3 + 3 + 1, rows.Length);
        Assert.StartsWith("0.weight,0,", rows[1]);
        double sum = json.GetProperty("diagonal").GetProperty("blocks").EnumerateArray().Sum(b => b.GetProperty("sum").GetDouble());
        // K-FAC's from its factors, the GGN's exactly (a stack of Linear layers, --diagonal-method auto), the empirical Fisher's estimated.
        string method = json.GetProperty("diagonal").GetProperty("method").GetString()!;
        Assert.Equal(op switch { "kfac" => "kfac-factors", "ggn" => "exact", _ => "hutchinson" }, method);
        if (op == "kfac") Assert.Equal(exact.Sum(), sum, 8);
        else if (op == "ggn")
        {
            Assert.Equal(exact.Sum(), sum, 1e-10 * Math.Abs(exact.Sum()));
            Assert.Equal("exact", report.GetProperty("trace").GetProperty("method").GetString());
            Assert.Equal(exact.Sum(), report.GetProperty("trace").GetProperty("trace").GetDouble(), 1e-10 * Math.Abs(exact.Sum()));
        }
        else Assert.True(Math.Abs(sum - exact.Sum()) < 0.5 * exact.Sum(), $"diagonal sum {sum}, trace {exact.Sum()}");
    }

    [Fact]
    public void HessianProductsByRPassesEqualDoubleBackwardAndTheOutputSaysWhichWereUsed()
    {
        // An MLP's products are R-passes by default; --hessian-products double-backward asks autograd. Same numbers (float64),
        // and hessian.json names the method, which is an input: a rerun with the other method into the folder starts afresh.
        var data = CsvData();
        var dir = TestUtil.TempDir("hessian-products");
        (double[] Values, string Method) Top(string method, string outDir)
        {
            // The same trace estimator both ways (by default the R-pass run's trace is exact, below).
            int code = Run(out _, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64",
                "--top", "3", "--trace", "--trace-method", "xtrace", "--out", outDir, "--hessian-products", method);
            Assert.True(code == 0, err);
            var root = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
            var json = root.GetProperty("report");
            return ([.. Doubles(json.GetProperty("top").GetProperty("values")), json.GetProperty("trace").GetProperty("trace").GetDouble()],
                    root.GetProperty("hessian_products").GetString()!);
        }
        var auto = Top("auto", Path.Combine(dir, "a"));
        var autograd = Top("double-backward", Path.Combine(dir, "b"));
        Assert.StartsWith("R-operator", auto.Method);
        Assert.StartsWith("autograd", autograd.Method);
        for (int i = 0; i < auto.Values.Length; i++) Assert.Equal(autograd.Values[i], auto.Values[i], 1e-9 * Math.Abs(autograd.Values[i]));
        var again = Top("double-backward", Path.Combine(dir, "a"));
        Assert.StartsWith("autograd", again.Method);
        Assert.Equal(1, Run(out _, out var bad, "hessian", "--data", data, "--model", "mlp:4-6-3:tanh", "--hessian-products", "fast", "--out", Path.Combine(dir, "c")));
        Assert.Contains("Must be one of: 'auto' 'double-backward'", bad);
        // By default the R-pass run's trace is exact, from the diagonal: the dense spectrum's trace, with standard error 0.
        Assert.Equal(0, Run(out _, out var err2, "hessian", "--data", data, "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64",
            "--trace", "--exact", "--out", Path.Combine(dir, "d")));
        var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "d", "hessian.json"))).RootElement.GetProperty("report");
        var trace = report.GetProperty("trace");
        Assert.Equal("exact", trace.GetProperty("method").GetString());
        Assert.Equal(0, trace.GetProperty("standard_error").GetDouble());
        double dense = report.GetProperty("exact").GetProperty("trace").GetDouble();
        Assert.Equal(dense, trace.GetProperty("trace").GetDouble(), 1e-10 * Math.Abs(dense));
    }

    [Fact]
    public void KfacSamplesLabelsByDefaultAsPublishedAndTheExactExpectationIsAnOption()
    {
        // The default is Martens & Grosse's K-FAC (one label per example from the model's distribution, seeded): the same
        // numbers as asking for it, and not those of the exact expectation.
        double[] Top(string name, params string[] extra)
        {
            var outDir = Path.Combine(TestUtil.TempDir("kfac-expectation"), name);
            int code = Run(out var stdout, out var err, ["hessian", "--data", CsvData(), "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64",
                "--operator", "kfac", "--top", "3", "--trace", "--out", outDir, .. extra]);
            Assert.True(code == 0, err);
            var root = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
            // hessian.json says which expectation G is (the terminal prints the same line).
            Assert.Equal(name == "exact" ? "G exactly over the model's predictive distribution" : "G over labels sampled from the model (1 per example, seed 0)",
                root.GetProperty("kfac_expectation").GetString());
            var json = root.GetProperty("report");
            return [.. Doubles(json.GetProperty("top").GetProperty("values")), json.GetProperty("trace").GetProperty("trace").GetDouble()];
        }
        var byDefault = Top("default");
        Assert.Equal(byDefault, Top("mc", "--kfac-expectation", "mc", "--mc-samples", "1", "--seed", "0"));
        var exact = Top("exact", "--kfac-expectation", "exact");
        Assert.True(Math.Abs(byDefault[0] - exact[0]) > 1e-6 * exact[0], $"sampled λ1 {byDefault[0]} equals the exact expectation's {exact[0]}");
    }

    [Fact]
    public void TheOperatorIsAnInputOfTheRunSoAnotherOperatorStartsAfresh()
    {
        var outDir = Path.Combine(TestUtil.TempDir("operator-fingerprint"), "o");
        string[] common = ["hessian", "--data", CsvData(), "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64", "--top", "1", "--out", outDir];
        Assert.Equal(0, Run(out _, out var err1, [.. common]));
        var first = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
        Assert.Equal(0, Run(out _, out var err2, [.. common, "--operator", "ggn", "--frobenius"]));
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
        Assert.Equal("ggn", json.GetProperty("operator").GetString());
        Assert.Contains("ggn", json.GetProperty("inputs").GetRawText());
        Assert.NotEqual(first.GetProperty("inputs").GetProperty("fingerprint").GetString(), json.GetProperty("inputs").GetProperty("fingerprint").GetString());
        // The GGN's λmax was computed, not resumed from the Hessian's.
        Assert.NotEqual(Doubles(first.GetProperty("report").GetProperty("top").GetProperty("values"))[0],
            Doubles(json.GetProperty("report").GetProperty("top").GetProperty("values"))[0]);
        Assert.True(json.GetProperty("frobenius").GetProperty("norm").GetDouble() > 0);
    }
}
