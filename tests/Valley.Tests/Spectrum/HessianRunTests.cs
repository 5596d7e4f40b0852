using System.Text.Json.Nodes;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Reporting;
using Valley.Runs;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>A Hessian run in an output folder: its files, and resuming from them.</summary>
public class HessianRunTests
{
    public HessianRunTests() => TestUtil.Init();

    /// <summary>A dense operator that counts the products it is asked for.</summary>
    sealed class Counted(DenseOperator inner) : ICurvatureOperator
    {
        public long Received;
        public long Size => inner.Size;
        public ScalarType DType => inner.DType;
        public Device Device => inner.Device;
        public Tensor Apply(Tensor v) { Received++; return inner.Apply(v); }
        public Tensor ApplyBlock(Tensor V) { Received += V.shape[1]; return inner.ApplyBlock(V); }
    }

    /// <summary>A dense operator that cancels a token once it has been asked for a given number of products.</summary>
    sealed class Interrupting(DenseOperator inner) : ICurvatureOperator
    {
        public long Received;
        public long CancelAfter = long.MaxValue;
        public CancellationTokenSource Source = new();
        public long Size => inner.Size;
        public ScalarType DType => inner.DType;
        public Device Device => inner.Device;
        public Tensor Apply(Tensor v) => ApplyBlock(v.unsqueeze(1)).squeeze(1);
        public Tensor ApplyBlock(Tensor V)
        {
            Received += V.shape[1];
            if (Received >= CancelAfter) Source.Cancel();
            return inner.ApplyBlock(V);
        }
    }

    [Theory]
    [InlineData(DiagonalMethod.Hutchinson)]
    [InlineData(DiagonalMethod.XDiag)]
    public void AnInterruptedDiagonalAndFrobeniusNormResumeToTheResultOfAnUninterruptedRun(DiagonalMethod method)
    {
        using var dense = DenseOperator.WithSpectrum(Enumerable.Range(0, 50).Select(i => Math.Sin(i) * 2 + (i < 5 ? 6 : 0)).ToArray(), seed: 3);
        using var linear = nn.Linear(9, 5); // 50 parameters, named weight and bias
        var parameters = ParameterSet.From(linear);
        var spectrum = new SpectrumAnalysisOptions { Top = 0, Bottom = 0, Trace = false, Density = false, Seed = 1 };
        var diagonal = new DiagonalOptions { Method = method, Products = 40, BlockSize = 10, Seed = 5 };
        // A target the estimate never reaches: all 40 probes are spent.
        var frobenius = new FrobeniusOptions { RelativeStandardError = 1e-9, MaxProducts = 40, BlockSize = 10, Seed = 6 };
        HessianOutput Finish(string dir, Interrupting op)
        {
            var run = HessianRun.Open(dir, Describe(1));
            var report = run.Run(op, spectrum, ct: op.Source.Token);
            return run.Finish(op, parameters, report, diagonal, frobenius, ct: op.Source.Token);
        }

        var whole = new Interrupting(dense);
        var wholeDir = Path.Combine(TestUtil.TempDir("resume-diagonal"), "whole");
        var expected = Finish(wholeDir, whole);
        Assert.Equal(80, whole.Received);

        // Interrupted after 20 of the diagonal's 40 products (XDiag: its sketch): they are saved.
        var dir = Path.Combine(TestUtil.TempDir("resume-diagonal"), "interrupted");
        var first = new Interrupting(dense) { CancelAfter = 20 };
        Assert.ThrowsAny<OperationCanceledException>(() => Finish(dir, first));
        Assert.True(File.Exists(Path.Combine(dir, HessianRun.DiagonalProgressFile)));
        Assert.False(File.Exists(Path.Combine(dir, HessianRun.DiagonalFile)));

        // Resumed, and interrupted again after the diagonal's other 20 products and 10 of the Frobenius norm's.
        var second = new Interrupting(dense) { CancelAfter = 30 };
        Assert.ThrowsAny<OperationCanceledException>(() => Finish(dir, second));
        Assert.Equal(30, second.Received);
        Assert.False(File.Exists(Path.Combine(dir, HessianRun.DiagonalProgressFile)));
        Assert.Equal(File.ReadAllText(Path.Combine(wholeDir, HessianRun.DiagonalFile)), File.ReadAllText(Path.Combine(dir, HessianRun.DiagonalFile)));
        var saved = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, HessianRun.JsonFile)))!;
        Assert.NotNull(saved["diagonal"]);
        Assert.Equal(10, saved["frobenius_progress"]!["samples"]!.AsArray().Count);

        // Resumed to the end: only the Frobenius norm's last 30 products, and every number as the uninterrupted run's.
        var third = new Interrupting(dense);
        var resumed = Finish(dir, third);
        Assert.Equal(30, third.Received);
        Assert.Equal(File.ReadAllText(Path.Combine(wholeDir, HessianRun.DiagonalFile)), File.ReadAllText(Path.Combine(dir, HessianRun.DiagonalFile)));
        Assert.Equal(expected.Diagonal!.Blocks.Select(b => (b.Sum, b.Min, b.Max, b.RmsStandardError)), resumed.Diagonal!.Blocks.Select(b => (b.Sum, b.Min, b.Max, b.RmsStandardError)));
        Assert.Equal(expected.Diagonal.Products, resumed.Diagonal.Products);
        Assert.Equal(expected.Frobenius!.Norm, resumed.Frobenius!.Norm);
        Assert.Equal(expected.Frobenius.StandardError, resumed.Frobenius.StandardError);
        Assert.Equal(40, resumed.Frobenius.Products);
        Assert.Null(resumed.FrobeniusProgress);
        // A rerun of a finished run recomputes nothing.
        var fourth = new Interrupting(dense);
        Finish(dir, fourth);
        Assert.Equal(0, fourth.Received);

        // Other inputs: the saved probes are removed and the run starts afresh.
        var dir2 = Path.Combine(TestUtil.TempDir("resume-diagonal"), "other");
        Assert.ThrowsAny<OperationCanceledException>(() => Finish(dir2, new Interrupting(dense) { CancelAfter = 20 }));
        Assert.True(File.Exists(Path.Combine(dir2, HessianRun.DiagonalProgressFile)));
        var other = HessianRun.Open(dir2, Describe(2));
        Assert.Null(other.Earlier);
        Assert.False(File.Exists(Path.Combine(dir2, HessianRun.DiagonalProgressFile)));

        // The estimators ignore a checkpoint of other options.
        DiagonalCheckpoint? checkpoint = null;
        DiagonalEstimator.Estimate(dense, diagonal, checkpoint: c => checkpoint ??= c);
        var plain = DiagonalEstimator.Estimate(dense, diagonal with { Seed = 8 });
        var ignored = DiagonalEstimator.Estimate(dense, diagonal with { Seed = 8 }, resumeFrom: checkpoint);
        Assert.Equal(plain.Diagonal, ignored.Diagonal);
    }

    static HessianOutput Describe(long seed) =>
        new("dense", null, "none", 0, 50, null, "float64", seed, 1, new RunInputs().With("--seed", seed));

    [Fact]
    public void ARunWritesItsFilesAndARerunOfTheSameInputsResumesWhereItStopped()
    {
        using var dense = DenseOperator.WithSpectrum(Enumerable.Range(0, 50).Select(i => Math.Sin(i) * 2).ToArray(), seed: 1);
        var op = new Counted(dense);
        var dir = Path.Combine(TestUtil.TempDir("hessian-run"), "h");
        var options = new SpectrumAnalysisOptions { Top = 2, Bottom = 0, Trace = true, Density = true, DensityRuns = 2, DensitySteps = 10, Seed = 1 };

        var first = HessianRun.Open(dir, Describe(1));
        Assert.Null(first.Earlier);
        var report = first.Run(op, options);
        Assert.Equal(op.Received, report.Products);
        foreach (var f in HessianRun.DensityFiles.Append(HessianRun.JsonFile)) Assert.True(File.Exists(Path.Combine(dir, f)), f);

        // A run killed after its first estimator leaves hessian.json with the top eigenvalues only: the rerun computes the rest.
        var json = JsonNode.Parse(File.ReadAllText(first.JsonPath))!;
        json["report"]!.AsObject().Remove("trace");
        json["report"]!.AsObject().Remove("density");
        File.WriteAllText(first.JsonPath, json.ToJsonString());
        File.Delete(Path.Combine(dir, "density.png"));
        op.Received = 0;
        var again = HessianRun.Open(dir, Describe(1));
        Assert.NotNull(again.Earlier);
        Assert.Null(again.Replaced);
        var resumed = again.Run(op, options);
        Assert.Equal(report.Trace!.Products + report.Density!.Products, op.Received);
        Assert.Equal(report.Top!.Values, resumed.Top!.Values);
        Assert.Equal(report.Trace.Trace, resumed.Trace!.Trace);
        Assert.Equal(report.Products, resumed.Products);
        Assert.True(File.Exists(Path.Combine(dir, "density.png")));

        // Other inputs: the folder's results are removed and the run starts afresh.
        var other = HessianRun.Open(dir, Describe(2));
        Assert.Null(other.Earlier);
        Assert.Equal("--seed (1 → 2)", other.Replaced);
        foreach (var f in HessianRun.DensityFiles.Append(HessianRun.JsonFile)) Assert.False(File.Exists(Path.Combine(dir, f)), f);
        var fresh = other.Run(op, options with { Density = false, Seed = 2 });
        Assert.Null(fresh.Density);
        Assert.Equal(2, System.Text.Json.JsonDocument.Parse(File.ReadAllText(other.JsonPath)).RootElement.GetProperty("seed").GetInt64());
    }
}
