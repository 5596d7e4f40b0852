using TorchSharp;
using Valley.Data;
using Valley.Generalization;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Generalization;

public class BaselineTests
{
    public BaselineTests() => TestUtil.Init();

    static void Set(Tensor p, double[] values)
    {
        using var _ = no_grad();
        using var v = tensor(values, dtype: p.dtype).reshape(p.shape);
        p.copy_(v);
    }

    /// <summary>W1 = [[3, 0], [4, 5]], b1 = [1, 0], W2 = [[2, −1]], b2 = [1].</summary>
    static Mlp Tiny(string activation = "relu")
    {
        var m = new Mlp([2, 2, 1], activation);
        var p = m.named_parameters().ToDictionary(t => t.name, t => t.parameter);
        Set(p["0.weight"], [3, 0, 4, 5]);
        Set(p["0.bias"], [1, 0]);
        Set(p["2.weight"], [2, -1]);
        Set(p["2.bias"], [1]);
        return m;
    }

    [Fact]
    public void NormsProductsAndPathNormOfATinyReluNetMatchHandComputation()
    {
        using var model = Tiny();
        using var init = Tiny();
        using (no_grad()) foreach (var p in init.parameters()) p.sub_(1);   // w − w₀ = 1 for each of the 9 parameters
        using var data = new Dataset("d", zeros([3, 2]), zeros([3]), TaskKind.Regression, 1);
        var r = GeneralizationBaselines.Compute(model, data, new BaselineOptions { Initialization = init, Steps = 123 });
        // ‖w‖² = 9 + 0 + 16 + 25 + 1 + 0 + 4 + 1 + 1 = 57.
        Assert.Equal(Math.Sqrt(57), r.ParameterNorm, 10);
        Assert.Equal(3.0, r.DistanceFromInitialization!.Value, 10);
        // W1ᵀW1 = [[25, 20], [20, 25]]: eigenvalues 45 and 5, so ‖W1‖₂ = √45; ‖W2‖₂ = ‖W2‖_F = √5; ‖W1‖_F = √50.
        Assert.Equal(Math.Sqrt(45) * Math.Sqrt(5), r.SpectralNormProduct!.Value, 8);
        Assert.Equal(Math.Sqrt(50) * Math.Sqrt(5), r.FrobeniusNormProduct!.Value, 8);
        Assert.Equal(["0.weight 2×2", "2.weight 1×2"], r.Layers);
        // Paths with their products of squared weights: x1→h1→o 9·4, x2→h1→o 0·4, x1→h2→o 16·1, x2→h2→o 25·1,
        // bias b1[0]→h1→o 1·4, b1[1]→h2→o 0·1, b2 1: 36 + 16 + 25 + 4 + 1 = 82.
        Assert.Equal(Math.Sqrt(82), r.PathNorm!.Value, 10);
        Assert.Equal(123, r.Steps);
        Assert.Null(r.Margin);   // regression data: no margin
        Assert.Contains("regression", r.Notes[BaselineResult.NegativeMarginName]);
        var v = r.Values();
        Assert.Equal(Math.Sqrt(82), v[BaselineResult.PathNormName], 10);
        Assert.Equal(123, v[BaselineResult.StepsName]);
        Assert.False(v.ContainsKey(BaselineResult.NegativeMarginName));
    }

    [Fact]
    public void PathNormIsUndefinedForTanhAndConvolutionsAndUnknownInputsAreNoted()
    {
        using var tanh = Tiny("tanh");
        using var data = new Dataset("d", zeros([3, 2]), zeros([3]), TaskKind.Regression, 1);
        var r = GeneralizationBaselines.Compute(tanh, data);
        Assert.Null(r.PathNorm);
        Assert.Contains("Tanh", r.Notes[BaselineResult.PathNormName]);
        Assert.Equal(Math.Sqrt(45) * Math.Sqrt(5), r.SpectralNormProduct!.Value, 8);   // the products do not depend on the activation
        Assert.Null(r.DistanceFromInitialization);
        Assert.Null(r.Steps);
        Assert.True(r.Notes.ContainsKey(BaselineResult.DistanceName));
        Assert.True(r.Notes.ContainsKey(BaselineResult.StepsName));
        Assert.False(r.Values().ContainsKey(BaselineResult.PathNormName));

        // A convolution: the weight [2, 1, 2, 2] counts as the 2×4 matrix [[1, 0, 0, 0], [0, 2, 0, 0]] (‖·‖₂ = 2, ‖·‖_F = √5).
        using var conv = nn.Sequential(("conv", nn.Conv2d(1, 2, 2)), ("flat", nn.Flatten()), ("fc", nn.Linear(2, 2)));
        var cp = conv.named_parameters().ToDictionary(t => t.name, t => t.parameter);
        Set(cp["conv.weight"], [1, 0, 0, 0, 0, 2, 0, 0]);
        Set(cp["fc.weight"], [1, 0, 0, 1]);
        using var images = new Dataset("i", zeros([2, 1, 2, 2]), tensor(new long[] { 0, 1 }), TaskKind.Classification, 2);
        var c = GeneralizationBaselines.Compute(conv, images);
        Assert.Equal(2.0, c.SpectralNormProduct!.Value, 10);
        Assert.Equal(Math.Sqrt(5) * Math.Sqrt(2), c.FrobeniusNormProduct!.Value, 10);
        Assert.Equal("conv.weight 2×4", c.Layers[0]);
        Assert.Null(c.PathNorm);
        Assert.Contains("Conv2d", c.Notes[BaselineResult.PathNormName]);
    }

    [Fact]
    public void MarginIsTheTenthPercentileOfCorrectMinusLargestOtherLogit()
    {
        // The model outputs its input (Linear with identity weight, zero bias): the inputs are the logits.
        using var model = nn.Linear(3, 3);
        var p = model.named_parameters().ToDictionary(t => t.name, t => t.parameter);
        Set(p["weight"], [1, 0, 0, 0, 1, 0, 0, 0, 1]);
        Set(p["bias"], [0, 0, 0]);
        // 11 examples: margin = z_y − max_{j≠y} z_j; the 10th percentile of 11 values is the 2nd smallest (position 10 · 0.1 = 1).
        double[][] logits =
        [
            [3, 1, 0], [0, 5, 1], [2, 2, 0], [1, 4, 0], [0, 0, 7], [6, 1, 1], [1, 3, 2], [0, 2, 9], [5, 0, 4], [1, 1, 1], [2, 8, 3],
        ];
        long[] labels = [0, 1, 0, 0, 2, 0, 2, 2, 0, 1, 1];
        // margins: 2, 4, 0, −3, 7, 5, −1, 7, 1, 0, 5 → sorted −3, −1, 0, 0, 1, 2, 4, 5, 5, 7, 7.
        using var x = tensor(logits.SelectMany(r => r).Select(v => (float)v).ToArray()).reshape(11, 3);
        using var data = new Dataset("logits", x.clone(), tensor(labels), TaskKind.Classification, 3);
        var r = GeneralizationBaselines.Compute(model, data, new BaselineOptions { BatchSize = 4 });
        Assert.Equal(-1.0, r.Margin!.Value, 6);
        Assert.Equal(1.0, r.Values()[BaselineResult.NegativeMarginName], 6);   // negated: a smaller margin predicts a larger gap
        // Another percentile interpolates linearly between order statistics.
        var q = GeneralizationBaselines.Compute(model, data, new BaselineOptions { MarginPercentile = 35 });
        Assert.Equal(0.5, q.Margin!.Value, 6);   // position 3.5, between 0 and 1
        Assert.True(q.Values().ContainsKey("neg_margin_p35"));
    }
}
