using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>
/// Hessian-vector products of Linear/activation stacks by the R-operator (LinearStack): equal to autograd's double backward
/// in float64, and to the exact Hessian, for every activation and loss, any parameter selection, cached or not.
/// </summary>
public class LinearStackTests
{
    public LinearStackTests() => TestUtil.Init();

    internal const long Examples = 47, Batch = 10; // 5 batches: 4 of 10 and one of 7

    /// <summary>47 examples of a 3-class Gaussian mixture, with regression targets of the outputs' shape for MSE (real) and BCE (in [0, 1]).</summary>
    internal static Dataset Data(string loss, int inputs, int outputs)
    {
        var d = Synthetic.GaussianMixture(Examples, inputs, 3, seed: 3);
        if (loss == "cross-entropy") return d;
        // Regression targets of the outputs' shape: MSE on real values, BCE on values in [0, 1].
        using var g = new Generator(5);
        var y = loss == "mse" ? randn([Examples, outputs], dtype: ScalarType.Float32, generator: g) : rand([Examples, outputs], dtype: ScalarType.Float32, generator: g);
        var x = d.X.clone();
        d.Dispose();
        return new Dataset("targets", x, y, TaskKind.Regression, 0);
    }

    /// <summary>The same model, loss and data in float64 with R-pass products and with double backward.</summary>
    internal static (Objective Stack, Objective Autograd) Pair(nn.Module<Tensor, Tensor> model, string loss, Dataset data, ObjectiveOptions? options = null)
    {
        var o = (options ?? new ObjectiveOptions()) with { DType = ScalarType.Float64, BatchSize = Batch };
        var lossFn = Losses.Named(loss, data.Task);
        return (new Objective(model, lossFn, data, o), new Objective(model, lossFn, data, o with { HessianProducts = HessianProductMethod.DoubleBackward }));
    }

    static double Relative(Tensor a, Tensor b) => ((a - b).norm() / b.norm()).ToDouble();

    public static TheoryData<string, string> Cases()
    {
        var t = new TheoryData<string, string>();
        foreach (var act in new[] { "tanh", "relu", "sigmoid", "gelu" })
            foreach (var loss in new[] { "cross-entropy", "mse", "bce" }) t.Add(act, loss);
        return t;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ProductsEqualDoubleBackwardForEveryActivationAndLoss(string activation, string loss)
    {
        using var data = Data(loss, 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 3], activation);
        var (stack, autograd) = Pair(model, loss, data);
        var (chunked, _) = Pair(model, loss, data);
        using var _s = stack; using var _a = autograd; using var _c = chunked;
        Assert.NotNull(stack.LayerStack);
        Assert.Null(autograd.LayerStack);
        // One chunk of all 47 examples (the default), and chunks of the objective's batches (10 rows: 4 of 10 and one of 7).
        chunked.LayerStack!.ChunkBytes = 1;
        var V = randn([stack.Size, 3], dtype: ScalarType.Float64, generator: new Generator(11));
        var expected = autograd.HessianBlockProduct(V);
        foreach (var (o, chunks) in new[] { (stack, 1), (chunked, 5) })
        {
            var first = o.HessianBlockProduct(V);
            Assert.Equal(chunks, o.CachedBatches);
            var again = o.HessianBlockProduct(V);
            Assert.True(Relative(first, expected) < 1e-12, $"{activation}/{loss}, {chunks} chunks: {Relative(first, expected)}");
            Assert.True(Relative(again, expected) < 1e-12, $"{activation}/{loss}, {chunks} chunks, cached: {Relative(again, expected)}");
            var v = V[.., 1].contiguous();
            var one = Relative(o.HessianVectorProduct(v), autograd.HessianVectorProduct(v));
            Assert.True(one < 1e-12, $"{activation}/{loss}, {chunks} chunks, one vector: {one}");
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GaussNewtonProductsEqualTheAutogradOnes(string activation, string loss)
    {
        using var data = Data(loss, 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 3], activation);
        var (stack, autograd) = Pair(model, loss, data);
        using var _s = stack; using var _a = autograd;
        stack.LayerStack!.ChunkBytes = 1; // several chunks
        var V = randn([stack.Size, 3], dtype: ScalarType.Float64, generator: new Generator(21));
        var expected = new GgnOperator(autograd).ApplyBlock(V);
        var ggn = new GgnOperator(stack);
        Assert.True(Relative(ggn.ApplyBlock(V), expected) < 1e-12, $"{activation}/{loss}: {Relative(ggn.ApplyBlock(V), expected)}");
        var v = V[.., 0].contiguous();
        Assert.True(Relative(ggn.Apply(v), expected[.., 0]) < 1e-12, $"{activation}/{loss}, one vector");
        // The Hessian's and the GGN's products share the kept chunks.
        Assert.Equal(5, stack.CachedBatches);
        Assert.Equal(0, stack.CachedOutputBatches);
        Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12);
    }

    [Fact]
    public void TheHessianBuiltFromProductsEqualsTheExactHessian()
    {
        // The dense matrix from the products on the unit vectors against the exact Hessian (autograd, row by row).
        using var data = Data("cross-entropy", 3, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([3, 4, 3], "tanh");
        var (stack, autograd) = Pair(model, "cross-entropy", data);
        using var _s = stack; using var _a = autograd;
        var dense = stack.HessianBlockProduct(eye(stack.Size, dtype: ScalarType.Float64));
        var exact = ExactHessian.Compute(new HessianOperator(autograd)).Values;
        var m = TestUtil.ToArray2D(dense);
        Assert.True(TestUtil.MaxAbsDiff(m, exact) < 1e-12 * TestUtil.MaxAbs(exact), $"{TestUtil.MaxAbsDiff(m, exact)}");
        Assert.True(Relative(dense, dense.t()) < 1e-13, "not symmetric");
    }

    [Fact]
    public void ASelectionOfParametersAndLayersWithoutBiasGiveTheSelectedBlock()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 3], "tanh", bias: false);
        foreach (var filter in new Func<string, bool>[] { n => n.StartsWith("2.", StringComparison.Ordinal), n => n != "2.weight", n => n == "0.weight" })
        {
            var (stack, autograd) = Pair(model, "cross-entropy", data, new ObjectiveOptions { ParameterFilter = filter });
            using var _s = stack; using var _a = autograd;
            Assert.NotNull(stack.LayerStack);
            var V = randn([stack.Size, 2], dtype: ScalarType.Float64, generator: new Generator(12));
            var r = stack.HessianBlockProduct(V);
            var e = autograd.HessianBlockProduct(V);
            Assert.True(Relative(r, e) < 1e-12, $"{Relative(r, e)}");
        }
    }

    [Fact]
    public void SelectionsOfWeightsAndBiasesGroupsOfVectorsAndASingleLayerGiveTheAutogradProducts()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 4, 3], "tanh");
        foreach (var names in new[] { new[] { "0.bias" }, ["0.weight"], ["2.bias", "4.weight"], ["0.bias", "4.bias"] })
        {
            var (stack, autograd) = Pair(model, "cross-entropy", data, new ObjectiveOptions { ParameterFilter = names.Contains });
            using var _s = stack; using var _a = autograd;
            Assert.NotNull(stack.LayerStack);
            var V = randn([stack.Size, 3], dtype: ScalarType.Float64, generator: new Generator(31));
            Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12, string.Join(",", names));
            Assert.True(Relative(new GgnOperator(stack).ApplyBlock(V), new GgnOperator(autograd).ApplyBlock(V)) < 1e-12, "GGN " + string.Join(",", names));
        }
        // A block of 5 in passes of 2 vectors (2, 2 and 1: the last through the one-vector path).
        {
            var (stack, autograd) = Pair(model, "cross-entropy", data);
            using var _s = stack; using var _a = autograd;
            var layers = stack.LayerStack!;
            layers.PassBytes = 2 * Examples * layers.PassPerRow * 8;
            Assert.Equal(2, layers.VectorsPerPass(Examples, 8));
            var V = randn([stack.Size, 5], dtype: ScalarType.Float64, generator: new Generator(32));
            Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12, "passes of 2");
            // A changed chunk size after chunks were kept: the kept ones are other rows and are dropped.
            layers.ChunkBytes = 1;
            Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12, "chunks changed");
            Assert.Equal(5, stack.CachedBatches);
        }
        // One Linear layer: logistic regression.
        {
            var (stack, autograd) = Pair(new Mlp([5, 3]), "cross-entropy", data);
            using var _s = stack; using var _a = autograd;
            Assert.NotNull(stack.LayerStack);
            var V = randn([stack.Size, 2], dtype: ScalarType.Float64, generator: new Generator(33));
            Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12, "one layer");
        }
    }

    sealed class Doubled() : TorchSharp.Modules.Sequential([("0", nn.Linear(5, 4)), ("1", nn.Tanh()), ("2", nn.Linear(4, 2))])
    {
        public override Tensor forward(Tensor x) => base.forward(x) * 2;
    }

    [Fact]
    public void SequentialsWithReluAndExactGeluAreTakenAndSubclassesHooksAndTanhGeluAreNot()
    {
        using var data = Data("mse", 5, 2);
        using var _ = NewDisposeScope();
        foreach (var seq in new[] { nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)), nn.Sequential(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 2)) })
        {
            var (stack, autograd) = Pair(seq, "mse", data);
            using var _s = stack; using var _a = autograd;
            Assert.NotNull(stack.LayerStack);
            var V = randn([stack.Size, 2], dtype: ScalarType.Float64, generator: new Generator(34));
            Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12);
        }
        var options = new ObjectiveOptions { DType = ScalarType.Float64 };
        var tanhGelu = nn.GELU();
        tanhGelu.approximate = TorchSharp.Modules.GELU.Approximate.tanh;
        var hooked = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2));
        var remover = hooked.register_forward_hook((m, input, output) => output * 3);
        var mlp = new Mlp([5, 4, 2], "gelu");
        ((TorchSharp.Modules.GELU)mlp.Layers[1]).approximate = TorchSharp.Modules.GELU.Approximate.tanh;
        foreach (var other in new nn.Module<Tensor, Tensor>[] { new Doubled(), nn.Sequential(nn.Linear(5, 4), tanhGelu, nn.Linear(4, 2)), hooked, mlp })
        {
            using var o = new Objective(other, Losses.MeanSquaredError, data, options);
            Assert.Null(o.LayerStack);
            // What the model computes is what the products are of: double backward through its forward.
            using var a = new Objective(other, Losses.MeanSquaredError, data, options with { HessianProducts = HessianProductMethod.DoubleBackward });
            var v = randn(o.Size, dtype: ScalarType.Float64, generator: new Generator(35));
            Assert.True(Relative(o.HessianVectorProduct(v), a.HessianVectorProduct(v)) < 1e-12);
        }
        remover.remove();
        using var unhooked = new Objective(hooked, Losses.MeanSquaredError, data, options);
        Assert.NotNull(unhooked.LayerStack);
    }

    [Fact]
    public void ASequentialOfLinearLayersIsTakenAndOtherModulesFallBackToAutograd()
    {
        using var data = Data("mse", 5, 2);
        using var _ = NewDisposeScope();
        var seq = nn.Sequential(nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Linear(4, 2));
        var (stack, autograd) = Pair(seq, "mse", data);
        using var _s = stack; using var _a = autograd;
        Assert.NotNull(stack.LayerStack);
        var V = randn([stack.Size, 2], dtype: ScalarType.Float64, generator: new Generator(13));
        Assert.True(Relative(stack.HessianBlockProduct(V), autograd.HessianBlockProduct(V)) < 1e-12);

        // Dropout, two activations in a row, a last activation and a custom loss are not stacks this class computes.
        var options = new ObjectiveOptions { DType = ScalarType.Float64 };
        foreach (var other in new nn.Module<Tensor, Tensor>[]
                 {
                     nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.5), nn.Linear(4, 2)),
                     nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Tanh(), nn.Linear(4, 2)),
                     nn.Sequential(nn.Linear(5, 2), nn.Tanh()),
                 })
        {
            using var o = new Objective(other, Losses.MeanSquaredError, data, options);
            Assert.Null(o.LayerStack);
        }
        using var custom = new Objective(seq, (f, y) => (f - y).abs().mean(), data, options);
        Assert.Null(custom.LayerStack);
    }

    [Fact]
    public void APartialBudgetAndWeightChangesGiveTheSameProducts()
    {
        using var data = Data("cross-entropy", 5, 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 3], "tanh");
        // Uncached, two batches cached, all cached: one batch's kept tensors take 2,400 bytes here, 10 examples × 30 float64
        // values (the hidden layer's a, σ', δ and δ-curvature, 4 × 6; the output's δ and probabilities, 2 × 3; the inputs are
        // the data set's own memory and not counted).
        var (off, autograd) = Pair(model, "cross-entropy", data, new ObjectiveOptions { GraphMemoryBytes = 0 });
        var (some, _2) = Pair(model, "cross-entropy", data, new ObjectiveOptions { GraphMemoryBytes = 6_000 });
        var (all, _3) = Pair(model, "cross-entropy", data);
        // Chunks of the objective's batches of 10, and a pass over one vector at a time (a block then takes several passes).
        foreach (var o in new[] { off, some, all }) o.LayerStack!.ChunkBytes = 1;
        some.LayerStack!.PassBytes = 1;
        Assert.Equal(1, some.LayerStack.VectorsPerPass(10, 8));
        using var _o = off; using var _a = autograd; using var _s = some; using var _x = all; using var _y = _2; using var _z = _3;
        var V = randn([off.Size, 2], dtype: ScalarType.Float64, generator: new Generator(14));
        for (int round = 0; round < 2; round++)
        {
            var expected = autograd.HessianBlockProduct(V);
            foreach (var o in new[] { off, some, all })
                for (int rep = 0; rep < 2; rep++)
                    Assert.True(Relative(o.HessianBlockProduct(V), expected) < 1e-12, $"round {round}, {o.CachedBatches} batches cached");
            Assert.Equal(0, off.CachedBatches);
            Assert.Equal(2, some.CachedBatches);
            Assert.Equal(2 * 2_400, some.CachedGraphBytes);
            Assert.Equal(5, all.CachedBatches);
            // New weights: the fingerprint changes and every kept batch is rebuilt.
            using (no_grad()) foreach (var p in model.parameters()) p.add_(randn(p.shape, dtype: p.dtype, generator: new Generator(15)) * 0.3);
        }
    }

    [Fact]
    public void LabelsOutsideTheModelsOutputsAreRefusedBeforeAnyDerivative()
    {
        using var data = Synthetic.GaussianMixture(Examples, 5, 4, seed: 3);
        using var _ = NewDisposeScope();
        var model = new Mlp([5, 6, 3], "tanh"); // 3 outputs, labels up to 3
        using var o = new Objective(model, Losses.CrossEntropy, data);
        Assert.NotNull(o.LayerStack);
        var e = Assert.Throws<ValleyException>(() => o.HessianVectorProduct(zeros(o.Size)));
        Assert.Contains("labels go up to 3", e.Message);
    }
}
