using System.Text.Json.Nodes;
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
