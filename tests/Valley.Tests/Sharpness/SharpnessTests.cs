using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Valley.Sharpness;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Sharpness;

public class SharpnessTests
{
    public SharpnessTests() => TestUtil.Init();

    static readonly double[] Diagonal = [4.0, 1.0, 0.5, 0.25, 0.1, 0.05];

    /// <summary>L(w) = ½ wᵀHw (+ offset) with diagonal H, at the given w; data are dummies (the loss ignores inputs).</summary>
    static (QuadraticModule Model, Dataset Data, LossFunction Loss) Quadratic(double[]? w = null, double offset = 0)
    {
        var H = diag(tensor(Diagonal, ScalarType.Float64));
        var model = new QuadraticModule(H, zeros(Diagonal.Length, dtype: ScalarType.Float64), tensor(w ?? new double[Diagonal.Length], ScalarType.Float64));
        var data = new Dataset("dummy", zeros([256, 1], dtype: ScalarType.Float64), zeros([256], dtype: ScalarType.Float64), TaskKind.Regression, 1);
        LossFunction loss = (o, _) => o.mean() + offset;
        return (model, data, loss);
    }

    [Fact]
    public void WorstCaseL2SharpnessOfAQuadraticIsHalfRhoSquaredLambdaMax()
    {
        var (model, data, loss) = Quadratic();
        using var _ = data;
        using var obj = new Objective(model, loss, data);
        var r = WorstCaseSharpness.Compute(obj, new WorstCaseSharpnessOptions { Rho = 0.1, Examples = 256 });
        double expected = 0.5 * 0.1 * 0.1 * Diagonal.Max();
        Assert.True(Math.Abs(r.Value - expected) <= 0.01 * expected, $"{r.Value} vs {expected}");
        Assert.True(r.PerturbationNorm <= 0.1 + 1e-12);
    }

    [Fact]
    public void AverageCaseSharpnessOfAQuadraticIsHalfRhoSquaredTrace()
    {
        var (model, data, loss) = Quadratic();
        using var _ = data;
        using var obj = new Objective(model, loss, data);
        var r = AverageCaseSharpness.Compute(obj, new AverageCaseSharpnessOptions { Rho = 0.1, Examples = 256, Samples = 50 });
        double expected = 0.5 * 0.01 * Diagonal.Sum();
        Assert.True(Math.Abs(r.Value - expected) <= 4 * r.StandardError!.Value, $"{r.Value} ± {r.StandardError} vs {expected}");
    }

    [Fact]
    public void SamOneStepOnAQuadraticAwayFromZeroMatchesItsClosedForm()
    {
        double[] w = [0.3, -0.2, 0.5, 1.0, -1.0, 0.7];
        var (model, data, loss) = Quadratic(w);
        using var _ = data;
        using var obj = new Objective(model, loss, data);
        var r = SamSharpness.Compute(obj, new SamSharpnessOptions { Rho = 0.05 });
        // g = Hw, d = ρ g/‖g‖: L(w + d) − L(w) = gᵀd + ½ dᵀHd.
        var g = w.Select((x, i) => Diagonal[i] * x).ToArray();
        double gn = Math.Sqrt(g.Sum(x => x * x));
        var d = g.Select(x => 0.05 * x / gn).ToArray();
        double expected = g.Select((x, i) => x * d[i]).Sum() + 0.5 * d.Select((x, i) => Diagonal[i] * x * x).Sum();
        Assert.Equal(expected, r.Value, 12);
    }

    [Fact]
    public void KeskarBoxMaximumOfADiagonalQuadraticIsAtACornerAndNormalizedBy100OverOnePlusL()
    {
        // At w = 0 the box is |y_i| ≤ ε(|0| + 1) = ε; the maximum of ½ yᵀHy is at a corner: ½ ε² tr(H). With L(w) = 0.5:
        // φ = 100 · ½ ε² tr(H) / (1 + 0.5).
        var (model, data, loss) = Quadratic(offset: 0.5);
        using var _ = data;
        using var obj = new Objective(model, loss, data);
        var r = KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = 1e-3 });
        double delta = 0.5 * 1e-6 * Diagonal.Sum();
        Assert.Equal(delta, r.MaxLoss!.Value - r.BaseLoss!.Value, 14);
        Assert.Equal(100 * delta / 1.5, r.Value, 12);
        Assert.Equal(1e-3 * Math.Sqrt(Diagonal.Length), r.PerturbationNorm!.Value, 12);
        // The random-subspace variant stays inside its box and cannot exceed the full-space maximum.
        var sub = KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = 1e-3, SubspaceDimension = 3 });
        Assert.InRange(sub.Value, 0, 100 * 0.5 * Diagonal.Max() * sub.PerturbationNorm!.Value * sub.PerturbationNorm.Value / 1.5 + 1e-12);
    }

    [Fact]
    public void BisectionFindsTheScaleOfAKnownDropWithinTheTolerance()
    {
        var o = new FlatnessSearchOptions();
        var (s, _) = FlatnessSearch.Bisect(sigma => 0.3 * sigma, o);
        Assert.True(Math.Abs(0.3 * s - 0.1) < 0.01);
    }

    [Fact]
    public void PacBayesSigmaOfAModelWithAKnownAccuracyDropIsFoundWithinTheTolerance()
    {
        // Logits (1 + σz₁, σz₂) for every example, label 0: accuracy Φ(1/(σ√2)); a drop of 0.1 ± 0.01 means σ ∈ [0.527, 0.577].
        var model = new Mlp([1, 2], bias: false);
        model.to(ScalarType.Float64);
        using (no_grad()) model.parameters().First().copy_(tensor(new double[] { 1, 0 }, [2, 1], ScalarType.Float64));
        using var data = new Dataset("ones", ones([4, 1], dtype: ScalarType.Float64), zeros([4], dtype: ScalarType.Int64), TaskKind.Classification, 2);
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        var r = PacBayesFlatness.Compute(obj, null, new PacBayesFlatnessOptions { Samples = 3000, Seed = 1 });
        double sigma = r.First(x => x.Measure == "pacbayes-flatness").Details["sigma"];
        Assert.InRange(sigma, 0.50, 0.61);
        Assert.Equal(1 / (sigma * sigma), r.First(x => x.Measure == "pacbayes-flatness").Value, 12);
        Assert.Equal(1.0 / (4 * sigma * sigma) + Math.Log(4 / sigma) + 10, r.First(x => x.Measure == "pacbayes-orig").Value, 10);
    }

    static byte[] Bytes(nn.Module m) => m.state_dict().Values.SelectMany(t => t.contiguous().bytes.ToArray()).ToArray();

    [Fact]
    public void WeightsAreBitIdenticalAfterEveryMeasure()
    {
        using var data = Synthetic.GaussianMixture(96, 6, 3, seed: 3);
        var model = ModelSpec.Parse("mlp:6-8-3:nobias").Build(data, seed: 2);
        var before = Bytes(model);
        var init = ModelSpec.Parse("mlp:6-8-3:nobias").Build(data, seed: 9);
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        var results = SharpnessSuite.Run(obj, new SharpnessSuiteOptions { Steps = 4, Samples = 3, Epsilons = [1e-3], Initialization = init });
        Assert.Equal(before, Bytes(model));
        var names = results.Select(r => r.Measure).ToHashSet();
        foreach (var m in new[] { "keskar", "keskar-subspace", "sam-one-step", "worst-case-l2", "worst-case-linf-adaptive", "average-case", "average-case-adaptive",
                                  "pacbayes-flatness", "pacbayes-init", "pacbayes-mag-orig", "worst-case-flatness", "worst-case-mag-flatness", "relative-flatness", "fisher-trace", "fisher-rao-norm" })
            Assert.Contains(m, names);
        Assert.All(results, r => Assert.True(double.IsFinite(r.Value), r.Measure));
    }

    [Fact]
    public void FisherRaoNormUsesTheHomogeneityIdentityAndRefusesOtherModels()
    {
        using var data = Synthetic.GaussianMixture(40, 5, 3, seed: 4);
        var model = ModelSpec.Parse("mlp:5-7-6-3:nobias").Build(data, seed: 1);
        model.to(ScalarType.Float64);
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        var fr = FisherRaoNorm.Compute(obj).Value;
        // ⟨θ, ∇ℓ_i⟩ = (L+1)⟨∂ℓ_i/∂f, f⟩ for a bias-free ReLU network, so ‖θ‖²_fr = mean_i ⟨θ, ∇ℓ_i⟩².
        var theta = obj.Parameters.GetFlat();
        double direct = 0;
        for (long i = 0; i < data.Count; i++)
        {
            using var single = data.Slice(i, 1);
            using var o1 = new Objective(model, Losses.CrossEntropy, single);
            direct += Math.Pow(theta.dot(o1.LossAndGradient().Gradient).ToDouble(), 2);
        }
        Assert.Equal(direct / data.Count, fr, 8);
        using var objBias = new Objective(ModelSpec.Parse("mlp:5-7-3").Build(data, 1), Losses.CrossEntropy, data);
        Assert.Contains("bias-free ReLU", Assert.Throws<ValleyException>(() => FisherRaoNorm.Compute(objBias)).Message);
    }

    [Fact]
    public void BatchedEmpiricalFisherTraceEqualsPerExampleGradients()
    {
        using var raw = Synthetic.GaussianMixture(37, 5, 3, seed: 7);
        using var data = raw.To(CPU, ScalarType.Float64);
        var model = ModelSpec.Parse("mlp:5-6-4-3:tanh").Build(data, seed: 2);
        model.to(ScalarType.Float64);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 10 });
        var batched = FisherTrace.Compute(obj);
        Assert.Equal(1.0, batched.Details["batched"]);
        double direct = 0;
        for (long i = 0; i < data.Count; i++)
        {
            using var single = data.Slice(i, 1);
            using var o1 = new Objective(model, Losses.CrossEntropy, single);
            direct += o1.LossAndGradient().Gradient.pow(2).sum().ToDouble();
        }
        Assert.Equal(direct / data.Count, batched.Value, 10);
        // The per-example loop (used for other models, or when the objective is restricted to some parameters) agrees.
        using var restricted = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { ParameterFilter = n => n.StartsWith("4") });
        Assert.False(FisherTrace.Compute(restricted).Details.ContainsKey("batched"));
    }

    [Fact]
    public void RelativeFlatnessEqualsItsDefinitionOnTheExactLayerHessian()
    {
        using var data = Synthetic.GaussianMixture(50, 4, 3, seed: 5);
        var model = ModelSpec.Parse("mlp:4-5-3:tanh").Build(data, seed: 1);
        model.to(ScalarType.Float64);
        using var all = new Objective(model, Losses.CrossEntropy, data);
        var r = RelativeFlatness.Compute(all);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { ParameterFilter = n => n == "2.weight" });
        var H = ExactHessian.Compute(new HessianOperator(obj)).Values;
        var W = model.named_parameters().First(p => p.name == "2.weight").parameter.detach();
        double kappa = 0;
        for (int s = 0; s < 3; s++)
            for (int t = 0; t < 3; t++)
                for (int j = 0; j < 5; j++)
                    kappa += W[s].dot(W[t]).ToDouble() * H[s * 5 + j, t * 5 + j];
        Assert.Equal(kappa, r.Value, 10);
    }

    [Fact]
    public void DinhRescalingChangesPlainMeasuresButNotAdaptiveOnes()
    {
        using var raw = Synthetic.GaussianMixture(128, 6, 3, seed: 6);
        using var data = raw.To(CPU, ScalarType.Float64);
        var a = ModelSpec.Parse("mlp:6-8-3").Build(data, seed: 3);
        var b = ModelSpec.Parse("mlp:6-8-3").Build(data, seed: 3);
        a.to(ScalarType.Float64); b.to(ScalarType.Float64);
        // Dinh et al. 2017: layer 0 (weight and bias) × α, layer 2 weight × 1/α leaves a ReLU network's function unchanged.
        const double alpha = 8;
        using (no_grad())
        {
            var p = b.named_parameters().ToDictionary(x => x.name, x => x.parameter);
            p["0.weight"].mul_(alpha); p["0.bias"].mul_(alpha); p["2.weight"].div_(alpha);
        }
        using (no_grad()) Assert.True((a.call(data.X) - b.call(data.X)).abs().max().ToDouble() < 1e-12);
        double Lmax(nn.Module<Tensor, Tensor> m)
        {
            using var obj = new Objective(m, Losses.CrossEntropy, data);
            return Lanczos.Compute(new HessianOperator(obj), new LanczosOptions { Tolerance = 1e-8 }).Values[0];
        }
        // The Hessian block of layer 2 scales by α², so λmax grows.
        Assert.True(Lmax(b) > 2 * Lmax(a));
        SharpnessResult Wc(nn.Module<Tensor, Tensor> m, bool adaptive)
        {
            using var obj = new Objective(m, Losses.CrossEntropy, data);
            return WorstCaseSharpness.Compute(obj, new WorstCaseSharpnessOptions { Adaptive = adaptive, Examples = 128, Seed = 1 });
        }
        SharpnessResult Avg(nn.Module<Tensor, Tensor> m)
        {
            using var obj = new Objective(m, Losses.CrossEntropy, data);
            return AverageCaseSharpness.Compute(obj, new AverageCaseSharpnessOptions { Adaptive = true, Examples = 128, Seed = 1 });
        }
        double plainA = Wc(a, false).Value, plainB = Wc(b, false).Value;
        Assert.True(Math.Abs(plainB - plainA) > 0.1 * Math.Abs(plainA), $"plain worst-case {plainA} vs {plainB}");
        // Adaptive measures use c = |w|, which rescales with w, so they are invariant; only rounding differs (no η here).
        Assert.Equal(Wc(a, true).Value, Wc(b, true).Value, 9);
        Assert.Equal(Avg(a).Value, Avg(b).Value, 9);
    }
}
