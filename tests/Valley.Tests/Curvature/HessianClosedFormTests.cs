using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

public class HessianClosedFormTests
{
    public HessianClosedFormTests() => TestUtil.Init();

    [Fact]
    public void QuadraticLossHessianEqualsItsMatrix()
    {
        var g = new Generator(7);
        var m = randn([12, 12], dtype: ScalarType.Float64, generator: g);
        var A = m + m.t();
        var model = new QuadraticModule(A, randn([12], dtype: ScalarType.Float64, generator: g), randn([12], dtype: ScalarType.Float64, generator: g));
        using var data = new Dataset("dummy", zeros([5, 1], dtype: ScalarType.Float64), zeros([5], dtype: ScalarType.Float64), TaskKind.Regression, 1);
        using var obj = new Objective(model, QuadraticModule.MeanOutput, data, new() { BatchSize = 2 });
        var H = ExactHessian.Compute(new HessianOperator(obj));
        Assert.True(TestUtil.MaxAbsDiff(H.Values, TestUtil.ToArray2D(A)) < 1e-12);
    }

    [Fact]
    public void LinearRegressionMseHessianIsTwoXtXOverN()
    {
        using var data = Synthetic.LinearTeacher(50, 6, seed: 3);
        var model = new Mlp([6, 1]);
        using var obj = new Objective(model, Losses.MeanSquaredError, data, new() { DType = ScalarType.Float64, BatchSize = 16 });
        var H = ExactHessian.Compute(new HessianOperator(obj));
        // Parameters: 0.weight (6), 0.bias (1). Augmented design [X, 1]: H = 2 [X 1]ᵀ[X 1] / N.
        var X = cat([obj.Data.X, ones([50, 1], dtype: ScalarType.Float64)], 1);
        var expected = 2 * X.t().matmul(X) / 50;
        Assert.True(TestUtil.MaxAbsDiff(H.Values, TestUtil.ToArray2D(expected)) < 1e-10);
    }

    [Fact]
    public void LogisticRegressionHessianIsXtDiagPQX()
    {
        var g = new Generator(11);
        var x = randn([40, 5], dtype: ScalarType.Float64, generator: g);
        var y = (rand([40], dtype: ScalarType.Float64, generator: g) > 0.5).to(ScalarType.Float64);
        using var data = new Dataset("logistic", x, y, TaskKind.Regression, 1);
        var model = new Mlp([5, 1], bias: false);
        model.to(ScalarType.Float64);
        using (no_grad()) model.parameters().First().normal_(generator: g);
        LossFunction bce = (o, t) => nn.functional.binary_cross_entropy_with_logits(o.squeeze(1), t);
        using var obj = new Objective(model, bce, data, new() { BatchSize = 7 });
        var H = ExactHessian.Compute(new HessianOperator(obj));
        var w = model.parameters().First().detach().reshape(-1);
        var p = sigmoid(x.matmul(w));
        var expected = x.t().matmul(diag(p * (1 - p))).matmul(x) / 40;
        Assert.True(TestUtil.MaxAbsDiff(H.Values, TestUtil.ToArray2D(expected)) < 1e-12);
    }
}
