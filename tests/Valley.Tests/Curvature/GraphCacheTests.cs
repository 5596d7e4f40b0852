using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>The multi-batch graph cache (ObjectiveOptions.CacheGraph, GraphMemoryBytes): cached products equal uncached ones.</summary>
public class GraphCacheTests
{
    public GraphCacheTests() => TestUtil.Init();

    const long Examples = 60, Batch = 13; // 5 batches: 4 of 13 and one of 8

    internal static (Objective Obj, Dataset Data) Mlp(ObjectiveOptions options)
    {
        var data = Synthetic.GaussianMixture(Examples, 8, 3, seed: 5);
        var model = new ModelSpec("mlp", [8, 6, 3], "tanh", true, 0, 0) { Text = "mlp:8-6-3:tanh" }.Build(data, seed: 1);
        // The autograd graphs' cache: the layer-stack products (LinearStackTests) would otherwise take this model.
        return (new Objective(model, Losses.CrossEntropy, data, options with { DType = ScalarType.Float64, BatchSize = Batch, HessianProducts = HessianProductMethod.DoubleBackward }), data);
    }

    internal static double Relative(Tensor a, Tensor b) => ((a - b).norm() / b.norm()).ToDouble();

    [Fact]
    public void AGraphsMeasuredSizeIsKeptOnlyForTheSameSelectionAndBatchSize()
    {
        // Two selections of equal sizes (the two hidden layers' biases: 6 and 6 of mlp:8-6-6-3) and two batch sizes each
        // keep different graphs for the backward pass: a size measured for one must not be reused for another.
        var data = Synthetic.GaussianMixture(Examples, 8, 3, seed: 5);
        using var _ = data;
        var model = new ModelSpec("mlp", [8, 6, 6, 3], "tanh", true, 0, 0) { Text = "mlp:8-6-6-3:tanh" }.Build(data, seed: 1);
        var biases = model.named_parameters().Select(p => p.name).Where(n => n.EndsWith(".bias", StringComparison.Ordinal)).Take(2).ToArray();
        Objective Make(string name, long batch) => new(model, Losses.CrossEntropy, data, new ObjectiveOptions { ParameterFilter = n => n == name, BatchSize = batch });
        using var a = Make(biases[0], 13);
        using var b = Make(biases[1], 13);
        using var c = Make(biases[0], 20);
        using var same = Make(biases[0], 13);
        Assert.Equal(a.Size, b.Size);
        Assert.NotEqual(a.GraphSizeKey("gradient"), b.GraphSizeKey("gradient"));
        Assert.NotEqual(a.GraphSizeKey("gradient"), c.GraphSizeKey("gradient"));
        Assert.NotEqual(a.GraphSizeKey("gradient"), a.GraphSizeKey("outputs"));
        Assert.Equal(a.GraphSizeKey("gradient"), same.GraphSizeKey("gradient"));
    }

    [Fact]
    public void CachedProductsOnSeveralBatchesEqualUncachedOnesAndFollowWeightChanges()
    {
        var (cached, d1) = Mlp(new ObjectiveOptions());
        var (plain, d2) = Mlp(new ObjectiveOptions { CacheGraph = false });
        using var _1 = d1; using var _2 = d2; using var _c = cached; using var _p = plain;
        var V = randn([cached.Size, 3], dtype: ScalarType.Float64, generator: new Generator(7));
        var first = cached.HessianBlockProduct(V);          // builds and keeps every batch's graph
        Assert.Equal(5, cached.CachedBatches);
        Assert.True(cached.CachedGraphBytes > 0);
        var again = cached.HessianBlockProduct(V);          // only double-backward passes
        var expected = plain.HessianBlockProduct(V);
        Assert.Equal(0, plain.CachedBatches);
        Assert.True(Relative(first, expected) < 1e-12, $"first {Relative(first, expected)}");
        Assert.True(Relative(again, expected) < 1e-12, $"cached {Relative(again, expected)}");
        var v = V[.., 0].contiguous();
        Assert.True(Relative(cached.HessianVectorProduct(v), plain.HessianVectorProduct(v)) < 1e-12);

        // New weights: the fingerprint changes, every graph is rebuilt, and the products follow.
        var step = randn(cached.Size, dtype: ScalarType.Float64, generator: new Generator(8));
        cached.Parameters.AddInPlace(step, 0.2);
        plain.Parameters.AddInPlace(step, 0.2);
        var moved = cached.HessianBlockProduct(V);
        var movedExpected = plain.HessianBlockProduct(V);
        Assert.True(Relative(moved, movedExpected) < 1e-12, $"after a weight change {Relative(moved, movedExpected)}");
        Assert.True(Relative(moved, expected) > 1e-3, "the products did not change with the weights");
        Assert.Equal(5, cached.CachedBatches);
        Assert.True(Relative(cached.HessianBlockProduct(V), movedExpected) < 1e-12);
    }

    [Fact]
    public void TheWeightsCheckSeesTheSmallestChangeOfOneWeightAndTheFingerprintALargerOne()
    {
        var (obj, data) = Mlp(new ObjectiveOptions());
        using var _d = data; using var _o = obj;
        var first = obj.Model.parameters().First();
        double Get() => first.data<double>()[0];
        void Set(double x) { using var scope = NewDisposeScope(); using (no_grad()) first.view(-1)[0] = x; }
        // Through the products, with the default budget (the copy): one ulp of one weight empties the cache once.
        var v = randn(obj.Size, dtype: ScalarType.Float64, generator: new Generator(3));
        obj.HessianVectorProduct(v);
        int resets = obj.CacheResets;
        obj.HessianVectorProduct(v);
        Assert.Equal(resets, obj.CacheResets);
        Set(Math.BitIncrement(Get()));
        obj.HessianVectorProduct(v);
        obj.HessianVectorProduct(v);
        Assert.Equal(resets + 1, obj.CacheResets);
        Assert.Equal(5, obj.CachedBatches);
        // The exact copy (the default whenever it is small next to the cache's budget): one ulp of one weight is a change.
        long v0 = obj.WeightsVersion(long.MaxValue);
        Assert.Equal(v0, obj.WeightsVersion(long.MaxValue));
        double w = Get();
        Set(Math.BitIncrement(w));
        long v1 = obj.WeightsVersion(long.MaxValue);
        Assert.Equal(v0 + 1, v1);
        Assert.Equal(v1, obj.WeightsVersion(long.MaxValue));
        Set(w);
        Assert.Equal(v1 + 1, obj.WeightsVersion(long.MaxValue));
        // The probe fingerprint (a copy that would not fit): a change of one weight by 1e-9 of itself moves it.
        long v2 = obj.WeightsVersion(0);
        Assert.Equal(v2, obj.WeightsVersion(0));
        Set(w * (1 + 1e-9));
        Assert.Equal(v2 + 1, obj.WeightsVersion(0));
    }

    [Fact]
    public void InEvalModeAChangedBufferEmptiesTheCacheAndTheProductsFollowIt()
    {
        // BatchNorm's running statistics are part of the function in eval mode: the weights check covers them.
        var data = Synthetic.GaussianMixture(Examples, 8, 3, seed: 5);
        using var _d = data;
        var model = nn.Sequential(("fc1", nn.Linear(8, 6)), ("bn", nn.BatchNorm1d(6)), ("act", nn.Tanh()), ("fc2", nn.Linear(6, 3)));
        model.to(ScalarType.Float64);
        var options = new ObjectiveOptions { DType = ScalarType.Float64, BatchSize = Batch };
        using var cached = new Objective(model, Losses.CrossEntropy, data, options);
        var v = randn(cached.Size, dtype: ScalarType.Float64, generator: new Generator(4));
        var before = cached.HessianVectorProduct(v);
        int resets = cached.CacheResets;
        Assert.True(cached.CachedBatches > 0);
        using (no_grad())
        {
            var mean = model.named_buffers().Single(b => b.name == "bn.running_mean").buffer;
            mean.add_(0.5);
        }
        var after = cached.HessianVectorProduct(v);
        Assert.Equal(resets + 1, cached.CacheResets);
        using var plain = new Objective(model, Losses.CrossEntropy, data, options with { CacheGraph = false });
        Assert.True(Relative(after, plain.HessianVectorProduct(v)) < 1e-12, $"after the change {Relative(after, plain.HessianVectorProduct(v))}");
        Assert.True(Relative(after, before) > 1e-4, "the running mean did not change the curvature");
    }

    [Fact]
    public void ABudgetForSomeBatchesCachesThoseInOrderAndRecomputesTheRest()
    {
        // A batch of 13 examples is taken to hold 13,000 bytes: a budget of 30,000 keeps two of the five.
        var (some, d1) = Mlp(new ObjectiveOptions { GraphMemoryBytes = 30_000 });
        var (plain, d2) = Mlp(new ObjectiveOptions { CacheGraph = false });
        using var _1 = d1; using var _2 = d2; using var _s = some; using var _p = plain;
        some.GraphBytesPerExample = 1000;
        var V = randn([some.Size, 2], dtype: ScalarType.Float64, generator: new Generator(9));
        var expected = plain.HessianBlockProduct(V);
        for (int rep = 0; rep < 3; rep++)
        {
            var r = some.HessianBlockProduct(V);
            Assert.Equal(2, some.CachedBatches);
            Assert.Equal(26_000, some.CachedGraphBytes);
            Assert.True(Relative(r, expected) < 1e-12, $"rep {rep}: {Relative(r, expected)}");
        }
        // After a weight change the same two batches are cached again, at the new weights.
        var step = randn(some.Size, dtype: ScalarType.Float64, generator: new Generator(10));
        some.Parameters.AddInPlace(step, 0.1);
        plain.Parameters.AddInPlace(step, 0.1);
        some.HessianBlockProduct(V);
        var r2 = some.HessianBlockProduct(V);
        Assert.Equal(2, some.CachedBatches);
        Assert.True(Relative(r2, plain.HessianBlockProduct(V)) < 1e-12);
    }

    [Fact]
    public void AChangeToUnselectedWeightsRebuildsTheCachedGraphsOfTheSelectedOnes()
    {
        // Only the last layer is selected; the first layer then moves in place (as when fine-tuning a backbone). The
        // selected part's curvature changes with it, so a cached product must follow, for the Hessian and the GGN.
        var data = Synthetic.GaussianMixture(Examples, 8, 3, seed: 5);
        using var _d = data;
        var model = new ModelSpec("mlp", [8, 6, 3], "tanh", true, 0, 0) { Text = "mlp:8-6-3:tanh" }.Build(data, seed: 1);
        var last = model.named_parameters().Select(p => p.name).TakeLast(2).ToHashSet();
        var options = new ObjectiveOptions { DType = ScalarType.Float64, BatchSize = Batch, ParameterFilter = last.Contains };
        using var cached = new Objective(model, Losses.CrossEntropy, data, options);
        using var plain = new Objective(model, Losses.CrossEntropy, data, options with { CacheGraph = false });
        var V = randn([cached.Size, 2], dtype: ScalarType.Float64, generator: new Generator(12));
        var ggn = new GgnOperator(cached);
        var before = cached.HessianBlockProduct(V);
        var ggnBefore = ggn.ApplyBlock(V);
        using (no_grad())
        {
            var first = model.named_parameters().First().parameter;
            first.add_(randn(first.shape, dtype: first.dtype, generator: new Generator(13)) * 0.5);
        }
        var after = cached.HessianBlockProduct(V);
        var expected = plain.HessianBlockProduct(V);
        Assert.True(Relative(after, before) > 1e-3, "the selected part's curvature did not change");
        Assert.True(Relative(after, expected) < 1e-12, $"Hessian after the change {Relative(after, expected)}");
        var ggnAfter = ggn.ApplyBlock(V);
        var ggnExpected = new GgnOperator(plain).ApplyBlock(V);
        Assert.True(Relative(ggnAfter, ggnBefore) > 1e-3);
        Assert.True(Relative(ggnAfter, ggnExpected) < 1e-12, $"GGN after the change {Relative(ggnAfter, ggnExpected)}");
    }

    [Fact]
    public void ABudgetOfZeroTurnsCachingOffAndAMeasuredGraphIsAtLeastItsGradientAndInputs()
    {
        var (off, d1) = Mlp(new ObjectiveOptions { GraphMemoryBytes = 0 });
        var (on, d2) = Mlp(new ObjectiveOptions());
        using var _1 = d1; using var _2 = d2; using var _o = off; using var _n = on;
        var v = randn(off.Size, dtype: ScalarType.Float64, generator: new Generator(11));
        var a = off.HessianVectorProduct(v);
        Assert.Equal(0, off.CachedBatches);
        var b = on.HessianVectorProduct(v);
        Assert.True(Relative(a, b) < 1e-12);
        // The measurement's floor: the parameters' gradient (float64) and the batch's inputs, per example.
        double floor = (on.Size * 8.0 + Batch * 8 * 8) / Batch;
        Assert.True(on.GraphBytesPerExample >= floor, $"{on.GraphBytesPerExample} bytes per example, floor {floor}");
    }
}

/// <summary>The output-graph cache of the GGN and Fisher operators: cached products equal uncached ones, as the Hessian's.</summary>
public class OutputGraphCacheTests
{
    public OutputGraphCacheTests() => TestUtil.Init();

    // The same model, data and batches as GraphCacheTests (5 batches: 4 of 13 and one of 8).
    static (Objective Obj, Dataset Data) Mlp(ObjectiveOptions options) => GraphCacheTests.Mlp(options);

    static double Relative(Tensor a, Tensor b) => GraphCacheTests.Relative(a, b);

    public static TheoryData<string> Operators => new() { "ggn", "ef", "mc-fisher" };

    static ICurvatureOperator Make(string name, Objective obj) => name switch
    {
        "ggn" => new GgnOperator(obj),
        "ef" => new EmpiricalFisherOperator(obj),
        _ => new MonteCarloFisherOperator(obj, samples: 3, seed: 4),
    };

    [Theory]
    [MemberData(nameof(Operators))]
    public void CachedProductsOnSeveralBatchesEqualUncachedOnesAndFollowWeightChanges(string name)
    {
        var (cached, d1) = Mlp(new ObjectiveOptions());
        var (plain, d2) = Mlp(new ObjectiveOptions { CacheGraph = false });
        using var _1 = d1; using var _2 = d2; using var _c = cached; using var _p = plain;
        var op = Make(name, cached);
        var reference = Make(name, plain);
        var V = randn([cached.Size, 3], dtype: ScalarType.Float64, generator: new Generator(7));
        var first = op.ApplyBlock(V);
        Assert.Equal(5, cached.CachedOutputBatches);
        var again = op.ApplyBlock(V);
        var expected = reference.ApplyBlock(V);
        Assert.Equal(0, plain.CachedOutputBatches);
        Assert.True(Relative(first, expected) < 1e-12, $"first {Relative(first, expected)}");
        Assert.True(Relative(again, expected) < 1e-12, $"cached {Relative(again, expected)}");

        // New weights: every output graph is rebuilt and the products follow.
        var step = randn(cached.Size, dtype: ScalarType.Float64, generator: new Generator(8));
        cached.Parameters.AddInPlace(step, 0.3);
        plain.Parameters.AddInPlace(step, 0.3);
        var moved = op.ApplyBlock(V);
        var movedExpected = reference.ApplyBlock(V);
        Assert.True(Relative(moved, movedExpected) < 1e-12, $"after a weight change {Relative(moved, movedExpected)}");
        Assert.True(Relative(moved, expected) > 1e-3, "the products did not change with the weights");
        Assert.Equal(5, cached.CachedOutputBatches);
    }

    [Fact]
    public void ABudgetForSomeBatchesCachesThoseAndTheTwoCachesTakeTurns()
    {
        var (some, d1) = Mlp(new ObjectiveOptions { GraphMemoryBytes = 30_000 });
        var (plain, d2) = Mlp(new ObjectiveOptions { CacheGraph = false });
        using var _1 = d1; using var _2 = d2; using var _s = some; using var _p = plain;
        some.OutputGraphBytesPerExample = 1000;
        some.GraphBytesPerExample = 1000;
        var ggn = new GgnOperator(some);
        var V = randn([some.Size, 2], dtype: ScalarType.Float64, generator: new Generator(9));
        var expected = new GgnOperator(plain).ApplyBlock(V);
        for (int rep = 0; rep < 3; rep++)
        {
            var r = ggn.ApplyBlock(V);
            Assert.Equal(2, some.CachedOutputBatches);
            Assert.Equal(26_000, some.CachedOutputBytes);
            Assert.True(Relative(r, expected) < 1e-12, $"rep {rep}: {Relative(r, expected)}");
        }
        // A Hessian product fills the gradient cache and empties the output cache: together they keep to the budget.
        var hv = some.HessianBlockProduct(V);
        Assert.Equal(2, some.CachedBatches);
        Assert.Equal(0, some.CachedOutputBatches);
        Assert.True(Relative(hv, plain.HessianBlockProduct(V)) < 1e-12);
        Assert.True(Relative(ggn.ApplyBlock(V), expected) < 1e-12);
        Assert.Equal(2, some.CachedOutputBatches);
        Assert.Equal(0, some.CachedBatches);
    }
}
