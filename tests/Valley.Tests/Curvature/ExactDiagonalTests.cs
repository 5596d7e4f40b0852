using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>
/// The exact diagonal and trace of the Hessian and the GGN of Linear/activation stacks (LinearStack.AddDiagonal): equal to
/// the diagonal of the dense matrix autograd builds, in float64, for every activation and loss, three hidden layers (so that
/// a σ'' term reaches two layers down), chunked or not, for selections of parameters; and used by the Auto methods.
/// </summary>
public class ExactDiagonalTests
{
    public ExactDiagonalTests() => TestUtil.Init();

    const long Batch = LinearStackTests.Batch;

    static Dataset Data(string loss, int inputs, int outputs) => LinearStackTests.Data(loss, inputs, outputs);

    static (Objective Stack, Objective Autograd) Pair(nn.Module<Tensor, Tensor> model, string loss, Dataset data, ObjectiveOptions? options = null) =>
        LinearStackTests.Pair(model, loss, data, options);

    /// <summary>The diagonal of the dense matrix an operator builds from products with the unit vectors.</summary>
    static Tensor DenseDiagonal(ICurvatureOperator op) => op.ApplyBlock(eye(op.Size, dtype: ScalarType.Float64)).diagonal();

    static double Error(Tensor a, Tensor b) => ((a - b).abs().max() / b.abs().max()).ToDouble();

    [Theory]
    [MemberData(nameof(LinearStackTests.Cases), MemberType = typeof(LinearStackTests))]
    public void TheDiagonalsOfTheHessianAndTheGgnEqualTheDenseMatrices(string activation, string loss)
    {
        using var data = Data(loss, 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 4, 3], activation);
        var (stack, autograd) = Pair(model, loss, data);
        var (chunked, _) = Pair(model, loss, data);
        using var _s = stack; using var _a = autograd; using var _c = chunked;
        // Five chunks of the objective's batches, each in passes of 2 rows (the last 1 or 2), beside one chunk in one pass.
        chunked.LayerStack!.ChunkBytes = 1;
        chunked.LayerStack.PassBytes = 3 * 4 * 4 * 4 * 8;
        var hessian = DenseDiagonal(new HessianOperator(autograd));
        var ggn = DenseDiagonal(new GgnOperator(autograd));
        // The σ'' terms matter here, in the first layer's weights too (reached by every hidden layer's source), except for
        // ReLU (σ'' = 0, where the two coincide).
        if (activation != "relu")
        {
            Assert.True(Error(ggn, hessian) > 1e-3, $"{activation}/{loss}: the GGN equals the Hessian, the test would not see the σ'' terms");
            Assert.True(Error(ggn[..30], hessian[..30]) > 1e-3, $"{activation}/{loss}: the first layer's σ'' terms are too small to be tested");
        }
        foreach (var o in new[] { stack, chunked })
        {
            var h = new HessianOperator(o).ExactDiagonal()!;
            var g = new GgnOperator(o).ExactDiagonal()!;
            Assert.Equal(ScalarType.Float64, h.dtype);
            Assert.True(Error(h, hessian) < 1e-12, $"{activation}/{loss}, Hessian: {Error(h, hessian)}");
            Assert.True(Error(g, ggn) < 1e-12, $"{activation}/{loss}, GGN: {Error(g, ggn)}");
        }
        Assert.Equal(5, chunked.CachedBatches);
        // Without the layer stack there is no exact diagonal.
        Assert.Null(new HessianOperator(autograd).ExactDiagonal());
        Assert.Null(new GgnOperator(autograd).ExactDiagonal());
    }

    [Fact]
    public void SelectionsLayersWithoutBiasAndLinearLayersInARowGiveTheSelectedEntries()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var cases = new List<(nn.Module<Tensor, Tensor> Model, Func<string, bool>? Filter)>
        {
            (new Mlp([5, 6, 4, 3], "tanh", bias: false), null),
            (new Mlp([5, 6, 4, 3], "sigmoid"), n => n.StartsWith("2.", StringComparison.Ordinal)),
            (new Mlp([5, 6, 4, 3], "gelu"), n => n is "0.bias" or "4.weight"),
            (new Mlp([5, 6, 4, 3], "tanh"), n => n == "0.weight"),
            (new Mlp([5, 3]), null),
            (nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Linear(4, 3)), null),
            // A hidden layer's σ'' source one step above a layer without activation (no σ' on the way down).
            (nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)), null),
            // Four hidden layers: the top hidden layer's source reaches the first layer three steps down.
            (new Mlp([5, 6, 5, 4, 4, 3], "tanh"), null),
        };
        foreach (var (model, filter) in cases)
            foreach (var loss in new[] { "cross-entropy", "mse", "bce" })
        {
            using var lossData = loss == "cross-entropy" ? null : Data(loss, 5, 3);
            var (stack, autograd) = Pair(model, loss, lossData ?? data, new ObjectiveOptions { ParameterFilter = filter });
            using var _s = stack; using var _a = autograd;
            Assert.NotNull(stack.LayerStack);
            var h = new HessianOperator(stack).ExactDiagonal()!;
            Assert.Equal(stack.Size, h.shape[0]);
            Assert.True(Error(h, DenseDiagonal(new HessianOperator(autograd))) < 1e-12, $"{model.GetType().Name} {stack.Size}: {Error(h, DenseDiagonal(new HessianOperator(autograd)))}");
            var g = new GgnOperator(stack).ExactDiagonal()!;
            Assert.True(Error(g, DenseDiagonal(new GgnOperator(autograd))) < 1e-12, $"GGN {model.GetType().Name} {stack.Size}");
        }
        // BCE on one output with targets of shape [B].
        {
            using var d = Data("bce", 5, 1);
            using var flat = new Dataset("flat", d.X.clone(), d.Y.reshape(-1).clone(), TaskKind.Regression, 0);
            var (stack, autograd) = Pair(new Mlp([5, 6, 1], "sigmoid"), "bce", flat);
            using var _s = stack; using var _a = autograd;
            Assert.True(Error(new HessianOperator(stack).ExactDiagonal()!, DenseDiagonal(new HessianOperator(autograd))) < 1e-12, "BCE [B]");
        }
    }

    [Fact]
    public void RepeatedDiagonalsAndProductsLeaveNoTensorsBehind()
    {
        using var data = Data("cross-entropy", 5, 3);
        var model = new Mlp([5, 6, 5, 4, 4, 3], "tanh");
        using var o = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });
        o.LayerStack!.ChunkBytes = 1;
        o.LayerStack.PassBytes = 1; // one row per pass
        var op = new HessianOperator(o);
        op.ExactDiagonal()!.Dispose(); // keeps the chunks in the graph cache
        var stats = DisposeScopeManager.Statistics;
        long live = stats.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) op.ExactDiagonal()!.Dispose();
        Assert.Equal(live, stats.ThreadTotalLiveCount);
        Assert.Equal(5, o.CachedBatches);
        // The products over the same kept chunks, and by double backward over cached graphs (both leave nothing behind
        // either: the data set's batch views are disposed by the pass).
        using var v = randn([o.Size], generator: new Generator(3));
        o.HessianVectorProduct(v).Dispose();
        live = stats.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) o.HessianVectorProduct(v).Dispose();
        Assert.Equal(live, stats.ThreadTotalLiveCount);
        using var autograd = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch, HessianProducts = HessianProductMethod.DoubleBackward });
        autograd.HessianVectorProduct(v).Dispose();
        live = stats.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) autograd.HessianVectorProduct(v).Dispose();
        Assert.Equal(live, stats.ThreadTotalLiveCount);
    }

    [Fact]
    public void AStackWhoseDiagonalWouldCostMoreThanFiftyProductsIsEstimated()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        // Five hidden layers of 128 (tanh): every hidden layer's σ'' source goes down through 128 × 128 per-example matrices.
        using var o = new Objective(new Mlp([5, 128, 128, 128, 128, 128, 3], "tanh"), Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });
        Assert.True(o.LayerStack!.DiagonalCostInProducts(gaussNewton: false) > LinearStack.MaxDiagonalProducts);
        // The GGN has the output source only (3 columns through the 128 × 128 layers): cheap, and exact.
        Assert.True(o.LayerStack.DiagonalCostInProducts(gaussNewton: true) < 2);
        Assert.Null(new HessianOperator(o).ExactDiagonal());
        Assert.NotNull(new GgnOperator(o).ExactDiagonal());
        Assert.Equal("hutchinson", DiagonalEstimator.Estimate(new HessianOperator(o), new DiagonalOptions { Products = 4 }).Method);
        // The benchmark's mlp:784-128-64-10: about 0.6 of a product.
        using var wideData = Synthetic.GaussianMixture(8, 784, 10, seed: 1);
        using var wide = new Objective(new Mlp([784, 128, 64, 10], "tanh"), Losses.CrossEntropy, wideData, new ObjectiveOptions());
        Assert.InRange(wide.LayerStack!.DiagonalCostInProducts(gaussNewton: false), 0.5, 0.8);
    }

    [Fact]
    public void InFloat32TheDiagonalAgreesWithFloat64ToRounding()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 16, 8, 8, 3], "tanh");
        Tensor d32;
        // First in float32: the float64 objective converts the model's parameters.
        using (var single = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch }))
        {
            Assert.Equal(ScalarType.Float32, single.Parameters.DType);
            d32 = new HessianOperator(single).ExactDiagonal()!;
        }
        using var dbl = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch, DType = ScalarType.Float64 });
        var d64 = new HessianOperator(dbl).ExactDiagonal()!;
        Assert.Equal(ScalarType.Float64, d32.dtype);
        Assert.True(Error(d32, d64) < 1e-5, $"{Error(d32, d64)}");
    }

    [Fact]
    public void AutoGivesTheExactTraceAndDiagonalForAStackAndEstimatesOtherwise()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 3], "tanh");
        var (stack, autograd) = Pair(model, "cross-entropy", data);
        using var _s = stack; using var _a = autograd;
        double exact = DenseDiagonal(new HessianOperator(autograd)).sum().ToDouble();

        using var h = Hessian.Of(stack);
        var t = h.Trace();
        Assert.Equal("exact", t.Method);
        Assert.Equal(exact, t.Trace, 1e-12 * Math.Abs(exact));
        Assert.Equal(0, t.StandardError);
        Assert.Equal(0, t.Products);
        var report = SpectrumAnalysis.Run(new HessianOperator(stack), new SpectrumAnalysisOptions { Top = 0, Bottom = 0, Density = false });
        Assert.Equal("exact", report.Trace!.Method);
        Assert.Equal(exact, report.Trace.Trace, 1e-12 * Math.Abs(exact));
        var d = h.Diagonal();
        Assert.Equal("exact", d.Method);
        Assert.Equal(0, d.Products);
        Assert.All(d.StandardErrors, se => Assert.Equal(0, se));
        Assert.Equal(exact, d.Diagonal.Sum(), 1e-12 * Math.Abs(exact));

        // An estimator asked for by name is that estimator.
        Assert.Equal("xtrace", h.Trace(TraceMethod.XTrace).Method);
        Assert.Equal("hutchinson", h.Diagonal(new DiagonalOptions { Method = DiagonalMethod.Hutchinson, Products = 4 }).Method);

        // Double backward (no layer stack): Auto falls back to XTrace and Hutchinson, whose estimates hold the exact trace
        // within a few standard errors.
        using var h2 = Hessian.Of(autograd);
        var t2 = h2.Trace();
        Assert.Equal("xtrace", t2.Method);
        Assert.True(t2.Products > 0);
        Assert.True(Math.Abs(t2.Trace - exact) < 4 * t2.StandardError + 1e-9 * Math.Abs(exact), $"{t2.Trace} ± {t2.StandardError} against {exact}");
        Assert.Equal("hutchinson", h2.Diagonal(new DiagonalOptions { Products = 4 }).Method);
        // K-FAC keeps its own exact trace; a dense matrix (no IExactDiagonal) gets XTrace.
        var A = randn([20, 20], dtype: ScalarType.Float64, generator: new Generator(4));
        var dense = new DenseOperator(A + A.t());
        Assert.Equal("xtrace", SpectrumAnalysis.Run(dense, new SpectrumAnalysisOptions { Top = 0, Bottom = 0, Density = false }).Trace!.Method);
    }
}
