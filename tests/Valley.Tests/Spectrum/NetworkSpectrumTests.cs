using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>Estimators on the Hessians of real small networks, against their exact Hessians.</summary>
public class NetworkSpectrumTests
{
    public NetworkSpectrumTests() => TestUtil.Init();

    /// <summary>A few Adam steps so that the model is near (not at) a minimum, as in practice.</summary>
    internal static void Train(nn.Module<Tensor, Tensor> model, Dataset data, int steps, double lr = 1e-2)
    {
        var opt = optim.Adam(model.parameters(), lr);
        model.train();
        for (int s = 0; s < steps; s++)
        {
            using var scope = NewDisposeScope();
            opt.zero_grad();
            var loss = Losses.For(data.Task)(model.call(data.X.to(model.parameters().First().dtype)), data.Y);
            loss.backward();
            opt.step();
        }
        model.eval();
    }

    static void CheckAgainstExact(Objective obj, string what, double traceRse = 0.02)
    {
        var H = new HessianOperator(obj);
        var exact = ExactHessian.Compute(H, blockSize: 128);
        var eig = exact.Eigenvalues();
        var top = Lanczos.Compute(H, new LanczosOptions { K = 5, Tolerance = 1e-6, Seed = 1 });
        var expectedTop = eig.Reverse().Take(5).ToArray();
        for (int i = 0; i < 5; i++)
            Assert.True(Math.Abs(top.Values[i] - expectedTop[i]) <= 1e-4 * Math.Abs(expectedTop[i]), $"{what} top #{i}: {top.Values[i]} vs {expectedTop[i]}");
        var bottom = Lanczos.Compute(H, new LanczosOptions { K = 1, Target = EigenTarget.Smallest, Tolerance = 1e-6, Seed = 2 });
        Assert.Equal(Math.Sign(eig[0]), Math.Sign(bottom.Values[0]));
        Assert.True(Math.Abs(bottom.Values[0] - eig[0]) <= 1e-4 * Math.Abs(eig[^1]), $"{what} λmin {bottom.Values[0]} vs {eig[0]}");
        var tr = Hutchinson.Estimate(H, new HutchinsonOptions { RelativeStandardError = traceRse, Seed = 3, MaxProducts = 2000 });
        Assert.True(Math.Abs(tr.Trace - exact.Trace()) <= 3 * tr.StandardError, $"{what} trace {tr.Trace} ± {tr.StandardError} vs {exact.Trace()}");
    }

    [Fact]
    public void MlpTop5BottomAndTraceMatchTheExactHessian()
    {
        using var data = Synthetic.GaussianMixture(256, 16, 4, seed: 2, separation: 1.5);
        var model = ModelSpec.Parse("mlp:16-32-16-4:tanh").Build(data, seed: 3);
        Train(model, data, 60);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64, BatchSize = 100 });
        Assert.True(obj.Size <= 2000);
        CheckAgainstExact(obj, "mlp");
    }

    [Fact]
    public void BatchNormResNetInEvalModeMatchesTheExactHessian()
    {
        var g = new Generator(4);
        var x = rand([16, 1, 28, 28], generator: g);
        var y = randint(0, 10, [16], generator: g);
        using var data = new Dataset("random-images", x, y, TaskKind.Classification, 10);
        var model = ModelSpec.Parse("resnet:1").Build(data, seed: 5);
        Train(model, data, 20);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64, BatchSize = 8 });
        Assert.InRange(obj.Size, 200, 2000);
        // Eval mode: BatchNorm uses running statistics, so the batch size does not change the objective.
        using var whole = new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64, BatchSize = 16 });
        Assert.Equal(whole.Value(), obj.Value(), 12);
        CheckAgainstExact(obj, "resnet", traceRse: 0.05);
    }

    [Fact]
    public void ExactSpectrumOfTheHessianOperatorHasTheTraceOfItsDiagonal()
    {
        using var data = Synthetic.GaussianMixture(64, 5, 3, seed: 6);
        var model = ModelSpec.Parse("mlp:5-4-3:tanh").Build(data, seed: 1);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64 });
        var exact = ExactHessian.Compute(new HessianOperator(obj));
        Assert.Equal(exact.Trace(), exact.Eigenvalues().Sum(), 9);
    }
}

/// <summary>The case that made Lanczos say why it stops: a float32 model trained to near-zero loss.</summary>
public class NearZeroLossTests
{
    public NearZeroLossTests() => TestUtil.Init();

    [Fact]
    public void LanczosOnAFloat32ModelNearZeroLossStopsAtThePrecisionFloorAndFloat64Converges()
    {
        using var data = Synthetic.GaussianMixture(256, 8, 3, seed: 1, separation: 4);
        var model = ModelSpec.Parse("mlp:8-16-3").Build(data, seed: 1);
        NetworkSpectrumTests.Train(model, data, 120, lr: 3e-2);
        using (var obj = new Objective(model, Losses.CrossEntropy, data))
        {
            Assert.True(obj.Value() < 1e-6, $"loss {obj.Value()}");
            var r = Lanczos.Compute(new HessianOperator(obj));
            Assert.False(r.Converged);
            Assert.Equal(StopReason.PrecisionFloor, r.StopReason);
            Assert.EndsWith("compute in float64", r.StopMessage);
            Assert.True(r.Products < 50, $"{r.Products} products");
        }
        using var obj64 = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64 });
        var r64 = Lanczos.Compute(new HessianOperator(obj64));
        Assert.True(r64.Converged, r64.StopMessage);
        Assert.Equal(StopReason.Converged, r64.StopReason);
    }
}
