using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

public class HessianVectorProductTests
{
    public HessianVectorProductTests() => TestUtil.Init();

    static (Objective Obj, Dataset Data) TanhMlp(long batch = 13, long n = 60)
    {
        var data = Synthetic.GaussianMixture(n, 8, 3, seed: 5);
        var model = new ModelSpec("mlp", [8, 6, 3], "tanh", true, 0, 0) { Text = "mlp:8-6-3:tanh" }.Build(data, seed: 1);
        return (new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64, BatchSize = batch }), data);
    }

    [Fact]
    public void HvMatchesCentralFiniteDifferenceOfGradients()
    {
        var (obj, data) = TanhMlp();
        using var _d = data; using var _o = obj;
        var v = randn(obj.Size, dtype: ScalarType.Float64, generator: new Generator(2));
        var hv = obj.HessianVectorProduct(v);
        double h = 1e-5;
        using var snap = obj.Parameters.Snapshot();
        obj.Parameters.AddInPlace(v, h);
        var gp = obj.LossAndGradient().Gradient;
        snap.Restore();
        obj.Parameters.AddInPlace(v, -h);
        var gm = obj.LossAndGradient().Gradient;
        snap.Restore();
        var fd = (gp - gm) / (2 * h);
        double rel = ((hv - fd).norm() / hv.norm()).ToDouble();
        Assert.True(rel < 1e-7, $"relative difference {rel}");
    }

    [Fact]
    public void HessianIsSymmetricInVectorProducts()
    {
        var (obj, data) = TanhMlp();
        using var _d = data; using var _o = obj;
        var g = new Generator(9);
        var u = randn(obj.Size, dtype: ScalarType.Float64, generator: g);
        var v = randn(obj.Size, dtype: ScalarType.Float64, generator: g);
        double uHv = u.dot(obj.HessianVectorProduct(v)).ToDouble();
        double vHu = v.dot(obj.HessianVectorProduct(u)).ToDouble();
        Assert.True(Math.Abs(uHv - vHu) < 1e-12 * Math.Max(1, Math.Abs(uHv)), $"{uHv} vs {vHu}");
        var H = ExactHessian.Compute(new HessianOperator(obj), blockSize: 10);
        Assert.True(H.Asymmetry < 1e-12, $"asymmetry {H.Asymmetry}");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    public void FullDataHvDoesNotDependOnBatchSize(long batch)
    {
        using var data = Synthetic.GaussianMixture(64, 8, 3, seed: 5);
        var spec = ModelSpec.Parse("mlp:8-6-3:tanh");
        var v = randn(8 * 6 + 6 + 6 * 3 + 3, generator: new Generator(4));
        using var full = new Objective(spec.Build(data, 1), Losses.CrossEntropy, data, new() { BatchSize = 64 });
        using var batched = new Objective(spec.Build(data, 1), Losses.CrossEntropy, data, new() { BatchSize = batch });
        var a = full.HessianVectorProduct(v);
        var b = batched.HessianVectorProduct(v);
        Assert.True(((a - b).norm() / a.norm()).ToDouble() < 1e-5);
        Assert.Equal(full.Value(), batched.Value(), 5);
    }

    [Fact]
    public void CachedSingleBatchGraphIsRebuiltWhenTheWeightsChange()
    {
        using var data = Synthetic.GaussianMixture(40, 8, 3, seed: 5);
        var spec = ModelSpec.Parse("mlp:8-6-3:tanh");
        using var cached = new Objective(spec.Build(data, 1), Losses.CrossEntropy, data, new() { BatchSize = 64 });
        var v = randn(cached.Size, generator: new Generator(4));
        var before = cached.HessianVectorProduct(v);
        Assert.True((cached.HessianVectorProduct(v) - before).abs().max().ToDouble() == 0);
        cached.Parameters.AddInPlace(randn(cached.Size, generator: new Generator(5)), 0.1);
        var after = cached.HessianVectorProduct(v);
        using var fresh = new Objective(spec.Build(data, 1), Losses.CrossEntropy, data, new() { BatchSize = 64, CacheGraph = false });
        fresh.Parameters.SetFlat(cached.Parameters.GetFlat());
        var expected = fresh.HessianVectorProduct(v);
        Assert.True(((after - expected).norm() / expected.norm()).ToDouble() < 1e-6);
        Assert.True(((after - before).norm() / before.norm()).ToDouble() > 1e-3);
    }

    [Fact]
    public void BlockProductEqualsColumnByColumnProducts()
    {
        var (obj, data) = TanhMlp();
        using var _d = data; using var _o = obj;
        var V = randn([obj.Size, 4], dtype: ScalarType.Float64, generator: new Generator(3));
        var block = obj.HessianBlockProduct(V);
        for (int j = 0; j < 4; j++)
        {
            var col = obj.HessianVectorProduct(V[.., j].contiguous());
            Assert.True((block[.., j] - col).abs().max().ToDouble() < 1e-12);
        }
    }

    [Fact]
    public void LayerRestrictionGivesTheDiagonalBlockOfTheFullHessian()
    {
        using var data = Synthetic.GaussianMixture(30, 4, 3, seed: 8);
        var spec = ModelSpec.Parse("mlp:4-5-3:tanh");
        using var full = new Objective(spec.Build(data, 2), Losses.CrossEntropy, data, new() { DType = ScalarType.Float64 });
        using var last = new Objective(spec.Build(data, 2), Losses.CrossEntropy, data, new() { DType = ScalarType.Float64, ParameterFilter = ParameterSet.PrefixFilter("2") });
        Assert.Equal(5 * 3 + 3, last.Size);
        var Hf = ExactHessian.Compute(new HessianOperator(full));
        var Hl = ExactHessian.Compute(new HessianOperator(last));
        int off = 4 * 5 + 5;
        for (int i = 0; i < last.Size; i++)
            for (int j = 0; j < last.Size; j++)
                Assert.Equal(Hf.Values[off + i, off + j], Hl.Values[i, j], 12);
    }

    [Fact]
    public void UnusedParameterGetsZeroCurvatureInsteadOfAbortingTheProcess()
    {
        using var data = Synthetic.GaussianMixture(20, 4, 3, seed: 8);
        var model = new WithUnusedParameter();
        using var obj = new Objective(model, Losses.CrossEntropy, data, new() { DType = ScalarType.Float64 });
        var hv = obj.HessianVectorProduct(ones(obj.Size, dtype: ScalarType.Float64));
        var unused = obj.Parameters.Unflatten(hv)[obj.Parameters.Names.ToList().IndexOf("unused")];
        Assert.Equal(0.0, unused.abs().sum().ToDouble());
        Assert.True(hv.abs().sum().ToDouble() > 0);
    }

    sealed class WithUnusedParameter : nn.Module<Tensor, Tensor>
    {
        readonly TorchSharp.Modules.Linear lin = nn.Linear(4, 3);
        readonly TorchSharp.Modules.Parameter unused = new(zeros(2));
        public WithUnusedParameter() : base("WithUnused") { register_module("lin", lin); register_parameter("unused", unused); }
        public override Tensor forward(Tensor x) => lin.call(x);
    }
}
