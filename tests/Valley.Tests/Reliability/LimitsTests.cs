using System.Globalization;
using Valley.Cli;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Landscape;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Reliability;

/// <summary>
/// Options out of range or infinite, sizes the machine cannot hold, and values that overflow: each is one line with exit
/// code 1 (or a <see cref="ValleyException"/> from the library) before anything is allocated or written, never a crash.
/// </summary>
public class LimitsTests
{
    public LimitsTests() => TestUtil.Init();

    static readonly Lazy<(string Good, string Huge)> Data = new(() =>
    {
        var good = TestUtil.CsvFolder("limits-good", 60, 4, 3, seed: 1);
        // Finite features near float's maximum: every product with them overflows float32.
        var huge = TestUtil.TempDir("limits-huge");
        File.WriteAllLines(Path.Combine(huge, "train.csv"), new[] { "a,b,c,d,label" }.Concat(Enumerable.Range(0, 30).Select(i =>
            string.Join(",", Enumerable.Range(0, 4).Select(j => (3e38 * (j == i % 4 ? 1 : 0.9)).ToString("R", CultureInfo.InvariantCulture))) + $",{i % 3}")));
        return (good, huge);
    });

    public static IEnumerable<object[]> Cases()
    {
        string[] outCommands = ["hessian", "sharpness", "train", "landscape 1d"];
        foreach (var cmd in outCommands) yield return [cmd, new[] { "--out", "" }, "--out: must name a folder"];
        foreach (var cmd in outCommands.Append("eval")) yield return [cmd, new[] { "--threads", "2147483647" }, "--threads 2147483647"];
        yield return ["train", new[] { "--lr", "Infinity" }, "--lr"];
        yield return ["train", new[] { "--lr", "NaN" }, "--lr"];
        yield return ["train", new[] { "--weight-decay", "Infinity" }, "--weight-decay"];
        yield return ["train", new[] { "--optimizer", "sam", "--rho", "Infinity" }, "--rho"];
        yield return ["train", new[] { "--optimizer", "asam", "--eta", "Infinity" }, "--eta"];
        yield return ["train", new[] { "--stop-at-loss", "Infinity" }, "--stop-at-loss"];
        yield return ["train", new[] { "--steps", "9223372036854775807" }, "--steps"];
        yield return ["train", new[] { "--monitor-every", "1", "--monitor-examples", "0" }, "--monitor-examples"];
        yield return ["sharpness", new[] { "--epsilon", "Infinity" }, "--epsilon"];
        yield return ["sharpness", new[] { "--rho", "Infinity" }, "--rho"];
        yield return ["hessian", new[] { "--trace-error", "Infinity" }, "--trace-error"];
        yield return ["landscape 1d", new[] { "--points", "3", "--range", "-1e308:1e308" }, "--range"];
        yield return ["landscape 1d", new[] { "--points", "3", "--range", "-Infinity:Infinity" }, "--range"];
        yield return ["landscape 1d", new[] { "--points", "3", "--range", "-1e45:1e45" }, "the weights at the grid's edge overflow float32"];
        yield return ["landscape 2d", new[] { "--points", "100000x100000" }, "--points 100000x100000"];
        yield return ["landscape 1d", new[] { "--points", "2000000000" }, "--points 2000000000"];
        yield return ["landscape 1d", new[] { "--points", "2147483647" }, "--points 2147483647"];
        // Overflowing values stop where they arise, with the data named, instead of reaching an eigen-solver.
        foreach (var cmd in new[] { "eval", "sharpness", "train" }) yield return [cmd, new[] { "--data", "HUGE" }, "overflow"];
        yield return ["hessian", new[] { "--data", "HUGE" }, "NaN or infinite"];
        yield return ["train", new[] { "--data", "HUGE", "--monitor-every", "1" }, "overflow"];
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task IsRefusedWithOneLineAndNothingWritten(string command, string[] extra, string expected)
    {
        var outDir = Path.Combine(TestUtil.TempDir("limits-out"), "o");
        extra = extra.Select(e => e == "HUGE" ? Data.Value.Huge : e).ToArray();
        var args = command.Split(' ').Concat(["--model", "mlp:4-6-3", "--subset", "0"]).ToList();
        if (!extra.Contains("--data")) args.AddRange(["--data", Data.Value.Good]);
        if (command != "eval" && !extra.Contains("--out")) args.AddRange(["--out", outDir]);
        args.AddRange(extra);
        var err = new StringWriter();
        int code = await ValleyCli.RunAsync(args.ToArray(), new StringWriter(), err);
        var text = err.ToString().Trim();
        Assert.True(code == ValleyCli.ExitBadInput, $"exit {code}: {text}");
        Assert.Single(text.Split('\n'));
        Assert.StartsWith("error: ", text);
        Assert.Contains(expected, text);
        if (Directory.Exists(outDir))
            Assert.DoesNotContain(Directory.GetFiles(outDir, "*", SearchOption.AllDirectories), f => !f.EndsWith(".valley.lock") && !f.EndsWith("run.json"));
    }

    [Fact]
    public async Task DivergenceOnTheLastStepIsCaughtAndNoNaNWeightsAreWritten()
    {
        var outDir = TestUtil.TempDir("limits-diverge");
        var err = new StringWriter();
        int code = await ValleyCli.RunAsync(["train", "--data", Data.Value.Good, "--model", "mlp:4-6-3", "--lr", "1e30", "--epochs", "1", "--out", outDir],
            new StringWriter(), err);
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("training diverged", err.ToString());
        Assert.False(File.Exists(Path.Combine(outDir, "model.dat")));
        Assert.False(File.Exists(Path.Combine(outDir, "last.dat")));
        Assert.Contains("diverged", File.ReadAllText(Path.Combine(outDir, "train.json")));
    }

    /// <summary>An operator that has a size but must never be applied: requests for it must be judged before any product.</summary>
    sealed class Unappliable(long size) : CurvatureOperator
    {
        public override long Size => size;
        public override ScalarType DType => ScalarType.Float32;
        public override Device Device => CPU;
        protected override Tensor ApplyCore(Tensor v) => throw new InvalidOperationException("no product may be asked for");
    }

    [Fact]
    public void EstimatorsRefuseWhatTheMachineCannotHoldBeforeAnyProduct()
    {
        // 4·10⁶ parameters: a full Lanczos basis would take 128 TB, the SLQ bases of 1,000 runs × 1,000 steps 16 TB.
        var op = new Unappliable(4_000_000);
        var lanczos = Assert.Throws<ValleyException>(() => Lanczos.Compute(op, new LanczosOptions { K = 1, MaxProducts = 4_000_000 }));
        Assert.Contains("needs about", lanczos.Message);
        var slq = Assert.Throws<ValleyException>(() => StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 1000, Steps = 1000 }));
        Assert.Contains("needs about", slq.Message);
        Assert.Throws<ValleyException>(() => GridSpec.EnsureFits(100_000, 100_000, "--points"));
        GridSpec.EnsureFits(51, 51, "--points"); // the default fits anywhere
    }

    [Fact]
    public void NonFiniteProductsStopEveryEstimatorWithAClearError()
    {
        var m = new double[6, 6];
        for (int i = 0; i < 6; i++) m[i, i] = i + 1;
        m[2, 2] = double.PositiveInfinity;
        using var op = new DenseOperator(m);
        foreach (var run in new Action[]
        {
            () => Lanczos.Compute(op, new LanczosOptions { K = 2 }),
            () => Hutchinson.Estimate(op),
            () => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 6 }),
            () => XTrace.Estimate(op, new XTraceOptions { MaxProducts = 6 }),
            () => StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 2, Steps = 4 }),
            () => PowerIteration.Compute(op),
        })
            Assert.Contains("NaN or infinite", Assert.Throws<NonFiniteException>(run).Message);
    }
}
