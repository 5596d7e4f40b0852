using Valley.Cli;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>The objective leaves the caller's model as it found it and refuses data the model cannot take, with one line.</summary>
public class ObjectiveTests
{
    public ObjectiveTests() => TestUtil.Init();

    [Fact]
    public void AFloat64ObjectiveGivesTheModelBackInItsOwnDtype()
    {
        using var data = Synthetic.GaussianMixture(40, 4, 3, seed: 1);
        var model = ModelSpec.Parse("mlp:4-6-3").Build(data, seed: 2);
        var before = model.parameters().Select(p => p.detach().clone()).ToList();
        using (var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64 }))
        {
            Assert.All(model.parameters(), p => Assert.Equal(ScalarType.Float64, p.dtype));
            obj.Value();
        }
        var after = model.parameters().ToList();
        Assert.All(after, p => Assert.Equal(ScalarType.Float32, p.dtype));
        for (int i = 0; i < before.Count; i++) Assert.True(before[i].allclose(after[i], 0, 0), $"parameter {i} changed");
        // An objective in the model's own dtype converts nothing and gives back nothing.
        using (new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float32 })) { }
        Assert.All(model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
    }

    [Fact]
    public void LabelsBeyondTheModelsOutputsAreRefusedBeforeLibTorchSeesThem()
    {
        using var data = Synthetic.GaussianMixture(40, 4, 5, seed: 1); // labels 0..4
        var model = ModelSpec.Parse("mlp:4-6-3").Build([4], 3, seed: 2);  // 3 outputs
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        foreach (var call in new Action[] { () => obj.Value(), () => obj.LossAndGradient().Gradient.Dispose(), () => obj.HessianVectorProduct(obj.Parameters.Zeros()).Dispose() })
        {
            var e = Assert.Throws<ValleyException>(call);
            Assert.Contains("labels go up to 4, but the model has 3 outputs", e.Message);
            Assert.DoesNotContain("\n", e.Message);
        }
        // Training calls the loss itself: it checks first too.
        var training = Assert.Throws<ValleyException>(() => new Valley.Training.Trainer(model, data).Run());
        Assert.Contains("labels go up to 4, but the model has 3 outputs", training.Message);
    }

    /// <summary>A source that streams batches (as a loader from disk would) gives the in-memory objective's numbers.</summary>
    [Fact]
    public void AStreamingSourceGivesTheLossGradientAndProductsOfTheInMemoryData()
    {
        using var data = Synthetic.GaussianMixture(90, 4, 3, seed: 3).To(CPU, ScalarType.Float64);
        var model = ModelSpec.Parse("mlp:4-6-3:tanh").Build(data, seed: 2);
        model.to(ScalarType.Float64);
        int passes = 0;
        // Batches of 32, 32 and 26 examples, each a fresh tensor the source hands over (and the objective disposes).
        var stream = BatchSource.From("streamed", TaskKind.Classification, 3, 90, () =>
        {
            passes++;
            return Enumerable.Range(0, 3).Select(k => (data.X.narrow(0, 32 * k, Math.Min(32, 90 - 32 * k)).clone(), data.Y.narrow(0, 32 * k, Math.Min(32, 90 - 32 * k)).clone()));
        });
        using var inMemory = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 90 });
        using var streamed = new Objective(model, Losses.CrossEntropy, stream);
        Assert.Equal(inMemory.Value(), streamed.Value(), 12);
        var (l1, g1) = inMemory.LossAndGradient();
        var (l2, g2) = streamed.LossAndGradient();
        Assert.Equal(l1, l2, 12);
        Assert.True((g1 - g2).abs().max().ToDouble() < 1e-12);
        using var v = randn(inMemory.Size, dtype: ScalarType.Float64, generator: new Generator(5));
        Assert.True((inMemory.HessianVectorProduct(v) - streamed.HessianVectorProduct(v)).abs().max().ToDouble() < 1e-12);
        Assert.Equal(3, passes); // one pass each for the loss, the gradient and the product
        Assert.Throws<InvalidOperationException>(() => streamed.Data);
        // A pass that yields other than the declared number of examples is an error, not a silently wrong 1/N.
        var wrong = BatchSource.From("short", TaskKind.Classification, 3, 100, () => [(data.X.clone(), data.Y.clone())]);
        using var bad = new Objective(model, Losses.CrossEntropy, wrong);
        Assert.Contains("yielded 90 examples, the source declares 100", Assert.Throws<ValleyException>(() => bad.Value()).Message);
    }

    [Fact]
    public void MeanSquaredErrorRefusesShapesThatWouldBroadcast()
    {
        using var output = zeros(8, 3);
        using var target = zeros(8);
        Assert.Contains("[8, 3]", Assert.Throws<ValleyException>(() => Losses.MeanSquaredError(output, target)).Message);
        using var column = ones(8, 1);
        Assert.Equal(1.0, Losses.MeanSquaredError(column, target).ToDouble(), 12); // [B, 1] against [B] is fine
    }

    [Fact]
    public void EvalInFloat64GivesTheFloat32NumbersToTheirPrecision()
    {
        var data = TestUtil.CsvFolder("eval64", 60, 4, 3, seed: 1);
        double Norm(string dtype)
        {
            var o = new StringWriter();
            var e = new StringWriter();
            Assert.True(ValleyCli.RunAsync(["eval", "--data", data, "--model", "mlp:4-6-3", "--dtype", dtype, "--format", "json"], o, e).GetAwaiter().GetResult() == 0, e.ToString());
            return System.Text.Json.JsonDocument.Parse(o.ToString()).RootElement.GetProperty("gradient_norm").GetDouble();
        }
        double n32 = Norm("float32"), n64 = Norm("float64");
        Assert.True(n64 > 0);
        Assert.Equal(n32, n64, 5);
    }
}
