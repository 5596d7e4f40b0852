using System.Text.Json;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>
/// The GGN, empirical Fisher, Monte-Carlo Fisher and K-FAC operators against dense references built here independently
/// (per-example Jacobians and gradients row by row with autograd, Kronecker factors from explicit loops), and PyTorch's.
/// </summary>
public class CurvatureOperatorTests
{
    public CurvatureOperatorTests() => TestUtil.Init();

    static (Mlp Model, Dataset Data) SmallClassifier(long seed = 5, int n = 20)
    {
        var data = Synthetic.GaussianMixture(n, 4, 3, seed);
        var model = new Mlp([4, 5, 3], "tanh");
        model.to(ScalarType.Float64);
        var g = new Generator((ulong)seed);
        using (no_grad()) foreach (var p in model.parameters()) p.copy_(randn(p.shape, dtype: ScalarType.Float64, generator: g) * 0.8);
        return (model, data);
    }

    static Tensor[] Params(Objective o) => o.Parameters.Tensors.Cast<Tensor>().ToArray();

    static Tensor FlatGrad(Tensor scalar, Tensor[] ps, bool retain = true) =>
        cat(autograd.grad([scalar], ps, retain_graph: retain, allow_unused: true).Select((g, i) => g is null || g.Handle == IntPtr.Zero ? zeros(ps[i].numel(), dtype: ScalarType.Float64) : g.reshape(-1)).ToArray());

    /// <summary>Example i's outputs [C], input and target.</summary>
    static (Tensor X, Tensor Y) Example(Objective o, long i) =>
        o.ToModel(o.Data.X.narrow(0, i, 1), o.Data.Y.narrow(0, i, 1), o.Data.Task);

    /// <summary>J_i [C, n] by one backward pass per output.</summary>
    static Tensor Jacobian(Objective o, long i)
    {
        var ps = Params(o);
        var (x, _) = Example(o, i);
        var f = o.Model.call(x).reshape(-1);
        return stack(Enumerable.Range(0, (int)f.shape[0]).Select(c => FlatGrad(f[c], ps)).ToArray());
    }

    /// <summary>∇²_f ℓ_i [C, C] by double backward on the example's loss.</summary>
    static Tensor OutputHessian(Objective o, long i)
    {
        var (x, y) = Example(o, i);
        using var _ = no_grad();
        var f = o.Model.call(x).detach();
        using var __ = enable_grad();
        var fr = f.requires_grad_(true);
        var g = autograd.grad([o.Loss(fr, y)], [fr], retain_graph: true, create_graph: true)[0].reshape(-1);
        return stack(Enumerable.Range(0, (int)g.shape[0]).Select(c => autograd.grad([g[c]], [fr], retain_graph: true)[0].reshape(-1)).ToArray());
    }

    static Tensor GgnReference(Objective o)
    {
        using var mode = new ModeForTest(o.Model);
        var sum = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
        for (long i = 0; i < o.Data.Count; i++)
        {
            var J = Jacobian(o, i);
            sum += J.t().matmul(OutputHessian(o, i)).matmul(J);
        }
        return sum / o.Data.Count;
    }

    static Tensor EfReference(Objective o)
    {
        using var mode = new ModeForTest(o.Model);
        var sum = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
        for (long i = 0; i < o.Data.Count; i++)
        {
            var (x, y) = Example(o, i);
            var g = FlatGrad(o.Loss(o.Model.call(x), y), Params(o), retain: false);
            sum += outer(g, g);
        }
        return sum / o.Data.Count;
    }

    sealed class ModeForTest : IDisposable
    {
        readonly nn.Module _m;
        public ModeForTest(nn.Module m) { _m = m; m.eval(); }
        public void Dispose() => _m.train();
    }

    static double RelDiff(double[,] a, Tensor b) => TestUtil.MaxAbsDiff(a, TestUtil.ToArray2D(b)) / Math.Max(1e-300, TestUtil.MaxAbs(TestUtil.ToArray2D(b)));

    [Theory]
    [InlineData(7)]
    [InlineData(64)]
    public void GgnEqualsTheMeanOfJacobianTransposeOutputHessianJacobian(long batchSize)
    {
        var (model, data) = SmallClassifier();
        using var _ = data;
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = batchSize });
        var dense = ExactHessian.Compute(new GgnOperator(o));
        Assert.True(RelDiff(dense.Values, GgnReference(o)) < 1e-10, $"GGN differs by {RelDiff(dense.Values, GgnReference(o)):G3}");
        Assert.True(dense.Asymmetry < 1e-10);
    }

    [Fact]
    public void GgnOfAnyLossByDoubleBackwardEqualsTheClosedForm()
    {
        var (model, data) = SmallClassifier(seed: 9);
        using var _ = data;
        LossFunction custom = (f, y) => nn.functional.cross_entropy(f, y); // the same loss, not recognized: double backward
        using var a = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = 6 });
        var closed = ExactHessian.Compute(new GgnOperator(a));
        using var b = new Objective(model, custom, data, new() { BatchSize = 6 });
        var generic = ExactHessian.Compute(new GgnOperator(b));
        Assert.True(TestUtil.MaxAbsDiff(closed.Values, generic.Values) < 1e-12 * TestUtil.MaxAbs(closed.Values) + 1e-14);
    }

    [Fact]
    public void GgnOfMseAndBceEqualsTheDenseReference()
    {
        foreach (var loss in new[] { Losses.MeanSquaredError, Losses.BinaryCrossEntropy })
        {
            var g = new Generator(3);
            var x = randn([15, 4], dtype: ScalarType.Float64, generator: g);
            var y = rand([15, 2], dtype: ScalarType.Float64, generator: g);
            using var data = new Dataset("reg", x, y, TaskKind.Regression, 0);
            var model = new Mlp([4, 3, 2], "tanh");
            model.to(ScalarType.Float64);
            using var o = new Objective(model, loss, data, new() { BatchSize = 4 });
            var dense = ExactHessian.Compute(new GgnOperator(o));
            Assert.True(RelDiff(dense.Values, GgnReference(o)) < 1e-10, Losses.NameOf(loss));
            var ef = ExactHessian.Compute(new EmpiricalFisherOperator(o));
            Assert.True(RelDiff(ef.Values, EfReference(o)) < 1e-10, "EF " + Losses.NameOf(loss));
        }
    }

    [Fact]
    public void GgnEqualsTheHessianForLinearRegressionWithMse()
    {
        using var data = Synthetic.LinearTeacher(40, 6, seed: 2);
        var model = new Mlp([6, 1]);
        using var o = new Objective(model, Losses.MeanSquaredError, data, new() { DType = ScalarType.Float64, BatchSize = 16 });
        var ggn = ExactHessian.Compute(new GgnOperator(o));
        var h = ExactHessian.Compute(new HessianOperator(o));
        Assert.True(TestUtil.MaxAbsDiff(ggn.Values, h.Values) < 1e-12 * TestUtil.MaxAbs(h.Values));
    }

    [Theory]
    [InlineData(5)]
    [InlineData(64)]
    public void EmpiricalFisherEqualsTheMeanOfPerExampleGradientOuterProducts(long batchSize)
    {
        var (model, data) = SmallClassifier(seed: 6);
        using var _ = data;
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = batchSize });
        var dense = ExactHessian.Compute(new EmpiricalFisherOperator(o));
        Assert.True(RelDiff(dense.Values, EfReference(o)) < 1e-10);
        // Its trace is the Fisher trace measure's.
        var ft = Valley.Sharpness.FisherTrace.Compute(o);
        Assert.Equal(ft.Value, dense.Trace(), 1e-10 * Math.Abs(ft.Value));
    }

    [Fact]
    public void GgnAndBothFishersAreSymmetricPositiveSemiDefinite()
    {
        var (model, data) = SmallClassifier(seed: 8);
        using var _ = data;
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = 8 });
        foreach (var op in new ICurvatureOperator[] { new GgnOperator(o), new EmpiricalFisherOperator(o), new MonteCarloFisherOperator(o, samples: 2, seed: 4) })
        {
            var dense = ExactHessian.Compute(op);
            var eig = dense.Eigenvalues();
            Assert.True(dense.Asymmetry < 1e-10, $"{op.GetType().Name} asymmetry {dense.Asymmetry}");
            Assert.True(eig[0] >= -1e-10 * eig[^1], $"{op.GetType().Name}: λmin {eig[0]} with λmax {eig[^1]}");
        }
    }

    [Fact]
    public void MonteCarloFisherConvergesToTheFisherWithinItsStandardError()
    {
        // For cross-entropy the Fisher (the expectation over the predictive distribution) is the GGN exactly.
        var (model, data) = SmallClassifier(seed: 10, n: 12);
        using var _ = data;
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = 12 });
        var fisher = GgnReference(o);
        double exactTrace = fisher.trace().ToDouble();
        double Error(int samples, long seed) =>
            (OwnedTensor.From(Flatten(ExactHessian.Compute(new MonteCarloFisherOperator(o, samples, seed)).Values), o.Size, o.Size) - fisher).norm().ToDouble();
        double e1 = Enumerable.Range(0, 4).Average(s => Error(1, s)), e64 = Enumerable.Range(0, 4).Average(s => Error(64, s));
        // The error falls as 1/√S: 8× from 1 to 64 samples; at least 4× here.
        Assert.True(e64 < e1 / 4, $"error {e1:G3} at 1 sample, {e64:G3} at 64");
        // The trace over 30 seeds: its mean within 3 standard errors of the Fisher's trace.
        var traces = Enumerable.Range(0, 30).Select(s => ExactHessian.Compute(new MonteCarloFisherOperator(o, 2, 100 + s)).Trace()).ToArray();
        double mean = traces.Average(), se = Math.Sqrt(traces.Sum(t => (t - mean) * (t - mean)) / (traces.Length - 1) / traces.Length);
        Assert.True(Math.Abs(mean - exactTrace) < 3 * se, $"mean trace {mean} ± {se}, exact {exactTrace}");
    }

    static double[] Flatten(double[,] m) => m.Cast<double>().ToArray();

    /// <summary>A small regression model (3 inputs, 2 outputs) and data for the MSE and BCE losses, in float64.</summary>
    static (Mlp Model, Dataset Data) SmallTwoOutput(LossFunction loss, long seed = 7, long n = 10)
    {
        var g = new Generator((ulong)seed);
        var x = randn([n, 3], dtype: ScalarType.Float64, generator: g);
        var y = ReferenceEquals(loss, Losses.BinaryCrossEntropy) ? rand([n, 2], dtype: ScalarType.Float64, generator: g).lt(0.5).to(ScalarType.Float64)
            : randn([n, 2], dtype: ScalarType.Float64, generator: g);
        var model = new Mlp([3, 4, 2], "tanh");
        model.to(ScalarType.Float64);
        using (no_grad()) foreach (var p in model.parameters()) p.copy_(randn(p.shape, dtype: ScalarType.Float64, generator: g) * 0.9);
        return (model, new Dataset("two-output", x, y, TaskKind.Regression, 0));
    }

    /// <summary>
    /// The Fisher of an MSE or BCE objective as the exact expectation over the model's predictive distribution, in the loss's
    /// scale (the one whose expectation is the loss's output Hessian): the per-example loss is ℓ = NLL/C (both losses average
    /// over the C outputs), so F = (1/N) Σ_i C · E_ŷ[∇ℓ(ŷ) ∇ℓ(ŷ)ᵀ]. MSE: ŷ ~ N(f, ½ I) (NLL = ‖ŷ − f‖²), ∇ℓ = J_iᵀ (2/C)(f − ŷ)
    /// and E[(f − ŷ)(f − ŷ)ᵀ] = ½ I, so F_i = (2/C) J_iᵀ J_i. BCE: ŷ ∈ {0, 1}^C ~ Bernoulli(σ(f)), enumerated here with
    /// each label vector's gradient by autograd through the model and the loss itself.
    /// </summary>
    static Tensor ExactFisher(Objective o, bool bce)
    {
        using var mode = new ModeForTest(o.Model);
        var ps = Params(o);
        var sum = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
        for (long i = 0; i < o.Data.Count; i++)
        {
            if (!bce)
            {
                var J = Jacobian(o, i);
                sum += J.t().matmul(J) * (2.0 / J.shape[0]);
                continue;
            }
            var (x, _) = Example(o, i);
            var f = o.Model.call(x); // [1, C]
            long c = f.shape[1];
            var s = sigmoid(f.detach())[0];
            for (int labels = 0; labels < 1 << (int)c; labels++)
            {
                var yhat = OwnedTensor.From(Enumerable.Range(0, (int)c).Select(k => (double)((labels >> k) & 1)).ToArray(), 1, c);
                double prob = Enumerable.Range(0, (int)c).Select(k => ((labels >> k) & 1) == 1 ? s[k].ToDouble() : 1 - s[k].ToDouble()).Aggregate(1.0, (a, b) => a * b);
                var grad = FlatGrad(o.Loss(f, yhat), ps);
                sum += outer(grad, grad) * (prob * c);
            }
        }
        return sum / o.Data.Count;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MonteCarloFisherOfMseAndBceConvergesToTheExactFisherWithinItsStandardError(bool bce)
    {
        var loss = bce ? Losses.BinaryCrossEntropy : Losses.MeanSquaredError;
        var (model, data) = SmallTwoOutput(loss);
        using var _ = data;
        using var o = new Objective(model, loss, data, new() { BatchSize = 4 });
        var fisher = ExactFisher(o, bce);
        if (bce)
        {
            // The enumeration agrees with the closed form Jᵀ diag(σ(1−σ)) J / C.
            using var mode = new ModeForTest(o.Model);
            var closed = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
            for (long i = 0; i < data.Count; i++)
            {
                var J = Jacobian(o, i);
                var sg = sigmoid(o.Model.call(Example(o, i).X).detach()[0]);
                closed += J.t().matmul(diag(sg * (1 - sg))).matmul(J) / J.shape[0];
            }
            Assert.True(RelDiff(TestUtil.ToArray2D(closed / data.Count), fisher) < 1e-10);
        }
        Tensor Mc(int samples, long seed) => OwnedTensor.From(Flatten(ExactHessian.Compute(new MonteCarloFisherOperator(o, samples, seed)).Values), o.Size, o.Size);
        double norm = fisher.norm().ToDouble();
        double Error(int samples) => Enumerable.Range(0, 6).Average(seed => (Mc(samples, 1000 + seed) - fisher).norm().ToDouble()) / norm;
        double e1 = Error(1), e8 = Error(8), e64 = Error(64);
        // The error falls as 1/√S: 8× from 1 to 64 samples; at least 4× here, and monotonically.
        Assert.True(e8 < e1 && e64 < e8 && e64 < e1 / 4, $"relative error {e1:G3} at 1 sample, {e8:G3} at 8, {e64:G3} at 64");
        // Every entry's mean over 30 seeds (2 samples each) within 3 standard errors of the exact Fisher's, for ≥ 95 % of entries.
        var draws = stack(Enumerable.Range(0, 30).Select(seed => Mc(2, seed)).ToArray()); // [30, n, n]
        var mean = draws.mean([0]);
        var se = draws.std(0) / Math.Sqrt(30);
        double within = ((mean - fisher).abs() <= se * 3 + 1e-12).to(ScalarType.Float64).mean().ToDouble();
        Assert.True(within >= 0.95, $"{within:P1} of the entries within 3 standard errors");
    }

    [Theory]
    [InlineData("cross-entropy")]
    [InlineData("mse")]
    [InlineData("bce")]
    public void KfacsMonteCarloExpectationConvergesToItsExactExpectation(string lossName)
    {
        var loss = Losses.Named(lossName, TaskKind.Regression);
        var (model, data) = lossName == "cross-entropy" ? SmallClassifier(seed: 14, n: 16) : SmallTwoOutput(loss, seed: 15, n: 16);
        using var _ = data;
        using var o = new Objective(model, loss, data, new() { BatchSize = 5 });
        using var exact = new KfacOperator(o, new KfacOptions { Expectation = KfacExpectation.Exact });
        int layers = exact.Layers.Count;
        double Error(int samples) => Enumerable.Range(0, 6).Average(seed =>
        {
            using var mc = new KfacOperator(o, new KfacOptions { Expectation = KfacExpectation.MonteCarlo, Samples = samples, Seed = 50 + seed });
            double e = 0;
            for (int l = 0; l < layers; l++)
            {
                // A is the inputs' second moment: the labels do not enter it.
                Assert.Equal(0.0, (mc.InputFactor(l) - exact.InputFactor(l)).abs().max().ToDouble());
                e += ((mc.OutputFactor(l) - exact.OutputFactor(l)).norm() / exact.OutputFactor(l).norm()).ToDouble();
            }
            return e / layers;
        });
        // 64× the samples: 1/8 of the error if unbiased; a bias would stall it. (From 4 samples, not 1: one sample's error
        // varies too much between seeds for six of them to pin it down.)
        double e4 = Error(4), e256 = Error(256);
        Assert.True(e256 < e4 / 4, $"{lossName}: relative error of G {e4:G3} at 4 samples, {e256:G3} at 256");
        // G's entries: their mean over 30 seeds within 3 standard errors of the exact expectation's, for ≥ 95 % of entries.
        for (int l = 0; l < layers; l++)
        {
            var draws = stack(Enumerable.Range(0, 30).Select(seed =>
            {
                using var mc = new KfacOperator(o, new KfacOptions { Expectation = KfacExpectation.MonteCarlo, Samples = 2, Seed = seed });
                return mc.OutputFactor(l).clone();
            }).ToArray());
            var se = draws.std(0) / Math.Sqrt(30);
            double within = ((draws.mean([0]) - exact.OutputFactor(l)).abs() <= se * 3 + 1e-12).to(ScalarType.Float64).mean().ToDouble();
            Assert.True(within >= 0.95, $"{lossName}, layer {l}: {within:P1} of G's entries within 3 standard errors");
        }
    }

    [Fact]
    public void TheVariatesAreUniformOnTheUnitIntervalAndDifferBetweenTuples()
    {
        // A linear formula seed·1000003 + example·7919 + sample would merge (0, 0, 7919) and (0, 1, 0); the hash does not.
        // The 53-bit variates of 16 seeds × 256 examples × 8 samples × 4 components: all in [0, 1), all distinct, and their
        // mean and the fraction below ¼ within 5 standard errors of ½ and ¼.
        Assert.NotEqual(ExampleUniforms.Uniform(0, 0, 7919, 0), ExampleUniforms.Uniform(0, 1, 0, 0));
        var all = new HashSet<double>();
        for (long seed = 0; seed < 16; seed++) for (long i = 0; i < 256; i++) for (int s = 0; s < 8; s++) for (int j = 0; j < 4; j++)
        {
            double u = ExampleUniforms.Uniform(seed, i, s, j);
            Assert.InRange(u, 0.0, Math.BitDecrement(1.0));
            Assert.True(all.Add(u));
        }
        double n = all.Count, mean = all.Average(), quarter = all.Count(u => u < 0.25) / n;
        Assert.True(Math.Abs(mean - 0.5) <= 5 * Math.Sqrt(1.0 / 12 / n), $"mean {mean}");
        Assert.True(Math.Abs(quarter - 0.25) <= 5 * Math.Sqrt(0.25 * 0.75 / n), $"below ¼: {quarter}");
    }

    [Theory]
    [InlineData(0L, 0L)]
    [InlineData(9L, 1_000_000_007L)]
    [InlineData(-3L, 1L << 40)]
    [InlineData(long.MaxValue, long.MaxValue - 100)]
    public void TheVariatesFromTensorArithmeticAreThoseOfTheScalarHash(long seed, long start)
    {
        // The int64 tensor version (wrapping products, masked shifts) must give bit for bit what the unsigned scalar hash gives.
        using var scope = torch.NewDisposeScope();
        var u = ExampleUniforms.Uniforms(seed, start, 50, 3, 5).data<double>().ToArray();
        int at = 0;
        for (int s = 0; s < 3; s++) for (long i = 0; i < 50; i++) for (int j = 0; j < 5; j++)
            Assert.Equal(ExampleUniforms.Uniform(seed, start + i, s, j), u[at++]);
    }

    [Theory]
    [InlineData("cross-entropy")]
    [InlineData("mse")]
    [InlineData("bce")]
    public void SampledLabelsAreKeyedByExampleSoTheyDoNotDependOnTheBatchSize(string lossName)
    {
        // Each example's labels come from a hash of (seed, example, sample, component): batches of 5, of 4 and one batch of
        // all 12 give the same Monte-Carlo Fisher and the same K-FAC factors; the same seed the same matrix, another seed another.
        var loss = Losses.Named(lossName, TaskKind.Regression);
        var (model, data) = lossName == "cross-entropy" ? SmallClassifier(seed: 3, n: 12) : SmallTwoOutput(loss, seed: 5, n: 12);
        using var _ = data;
        double[,] Fisher(int batch, long seed)
        {
            using var o = new Objective(model, loss, data, new() { BatchSize = batch });
            return ExactHessian.Compute(new MonteCarloFisherOperator(o, 2, seed)).Values;
        }
        Tensor OutputFactor(int batch)
        {
            using var o = new Objective(model, loss, data, new() { BatchSize = batch });
            using var k = new KfacOperator(o, new KfacOptions { Expectation = KfacExpectation.MonteCarlo, Samples = 2, Seed = 9 });
            return k.OutputFactor(0).clone();
        }
        var whole = Fisher(12, 9);
        double scale = whole.Cast<double>().Max(Math.Abs);
        foreach (int batch in new[] { 5, 4 })
        {
            Assert.True(TestUtil.MaxAbsDiff(Fisher(batch, 9), whole) <= 1e-12 * scale, $"MC Fisher, batches of {batch}");
            var g = OutputFactor(12);
            Assert.True((OutputFactor(batch) - g).abs().max().ToDouble() <= 1e-12 * g.abs().max().ToDouble(), $"K-FAC's G, batches of {batch}");
        }
        Assert.True(TestUtil.MaxAbsDiff(Fisher(12, 10), whole) > 1e-6 * scale);
    }



    [Fact]
    public void PerExampleOperatorsAreRefusedInTrainModeWithBatchNorm()
    {
        var g = new Generator(5);
        using var data = new Dataset("img", randn([8, 1, 4, 4], dtype: ScalarType.Float64, generator: g), randint(0, 3, [8], generator: g), TaskKind.Classification, 3);
        var withBn = nn.Sequential(("conv", nn.Conv2d(1, 2, 3)), ("bn", nn.BatchNorm2d(2)), ("flat", nn.Flatten()), ("fc", nn.Linear(8, 3)));
        withBn.to(ScalarType.Float64);
        using var train = new Objective(withBn, Losses.CrossEntropy, data, new() { BatchSize = 4, TrainMode = true });
        foreach (var make in new Func<ICurvatureOperator>[] { () => new EmpiricalFisherOperator(train), () => new MonteCarloFisherOperator(train), () => new KfacOperator(train) })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => make());
            Assert.Equal(nameof(ObjectiveOptions.TrainMode), e.ParamName);
            Assert.Contains("BatchNorm (bn)", e.Message);
        }
        // The Hessian and the GGN are defined there; eval mode, and train mode without BatchNorm, are accepted.
        Assert.Equal(train.Size, new GgnOperator(train).Size);
        Assert.Equal(train.Size, new HessianOperator(train).Size);
        using var eval = new Objective(withBn, Losses.CrossEntropy, data, new() { BatchSize = 4 });
        using (var k = new KfacOperator(eval)) Assert.Equal(2, k.Layers.Count);
        var (mlp, mlpData) = SmallClassifier();
        using var __ = mlpData;
        using var mlpTrain = new Objective(mlp, Losses.CrossEntropy, mlpData, new() { TrainMode = true });
        Assert.Equal(mlpTrain.Size, new EmpiricalFisherOperator(mlpTrain).Size);
    }

    [Theory]
    [InlineData(KfacExpectation.Exact)]
    [InlineData(KfacExpectation.Empirical)]
    public void KfacEqualsTheKroneckerProductsOfFactorsComputedHere(KfacExpectation expectation)
    {
        var (model, data) = SmallClassifier(seed: 12);
        using var _ = data;
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = 7 });
        using var kfac = new KfacOperator(o, new KfacOptions { Expectation = expectation });
        Assert.Empty(kfac.UncoveredParameters);
        Assert.Equal(["0", "2"], kfac.Layers.Select(l => l.Name));
        var dense = ExactHessian.Compute(kfac);
        // The reference: per layer, A = mean ā āᵀ from the layer inputs computed by hand, G = mean Js_iᵀ M_i Js_i with Js_i the
        // Jacobian of the logits with respect to the layer's outputs and M_i the output Hessian (exact) or δ_i δ_iᵀ (empirical).
        var W = model.parameters().Select(p => p.detach()).ToArray(); // 0.weight, 0.bias, 2.weight, 2.bias
        var reference = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
        long n = data.Count;
        var layerOffsets = new long[] { 0, 25 }; // weight of layer 0: 5×4 (+5 bias) = 25; layer 2: 3×5 (+3)
        for (int layer = 0; layer < 2; layer++)
        {
            long outD = layer == 0 ? 5 : 3, inD = layer == 0 ? 4 : 5;
            var A = zeros([inD + 1, inD + 1], dtype: ScalarType.Float64);
            var G = zeros([outD, outD], dtype: ScalarType.Float64);
            for (long i = 0; i < n; i++)
            {
                var (x, y) = Example(o, i);
                var x0 = x.reshape(-1);
                var s0 = W[0].matmul(x0) + W[1];
                var h = tanh(s0);
                var a = layer == 0 ? x0 : h;
                var abar = cat([a, ones(1, dtype: ScalarType.Float64)]);
                A += outer(abar, abar);
                var s = (layer == 0 ? s0 : W[2].matmul(h) + W[3]).detach().requires_grad_(true);
                var f = layer == 0 ? W[2].matmul(tanh(s)) + W[3] : s;
                var Js = stack(Enumerable.Range(0, 3).Select(c => autograd.grad([f[c]], [s], retain_graph: true)[0]).ToArray()); // [3, out]
                var fd = f.detach();
                Tensor M;
                if (expectation == KfacExpectation.Exact)
                {
                    var p = softmax(fd, 0);
                    M = diag(p) - outer(p, p);
                }
                else
                {
                    var d = softmax(fd, 0) - nn.functional.one_hot(y, 3).reshape(-1).to(ScalarType.Float64);
                    M = outer(d, d);
                }
                G += Js.t().matmul(M).matmul(Js);
            }
            A /= n;
            G /= n;
            // Row-major vec of [W | b] (out × (in+1)) is G ⊗ A; map it to the flat order [W (out×in), b (out)].
            var K = kron(G, A);
            long off = layerOffsets[layer];
            long Index(long oo, long ii) => ii < inD ? off + oo * inD + ii : off + outD * inD + oo;
            var kk = K.data<double>().ToArray();
            long dim = outD * (inD + 1);
            var idx = new long[dim];
            for (long oo = 0; oo < outD; oo++) for (long ii = 0; ii <= inD; ii++) idx[oo * (inD + 1) + ii] = Index(oo, ii);
            for (long r = 0; r < dim; r++) for (long c = 0; c < dim; c++) reference[idx[r], idx[c]] = kk[r * dim + c];
        }
        Assert.True(RelDiff(dense.Values, reference) < 1e-10, $"K-FAC differs by {RelDiff(dense.Values, reference):G3}");
        // Eigenvalues and trace from the factors equal the dense matrix's.
        var eig = dense.Eigenvalues().OrderByDescending(v => v).ToArray();
        var fromFactors = kfac.Eigenvalues();
        for (int i = 0; i < 5; i++) Assert.Equal(eig[i], fromFactors[i], 1e-10 * eig[0]);
        Assert.Equal(dense.Trace(), kfac.Trace(), 1e-10 * Math.Abs(dense.Trace()));
        var diagonal = kfac.Diagonal().data<double>().ToArray();
        for (int i = 0; i < diagonal.Length; i++) Assert.Equal(dense.Values[i, i], diagonal[i], 1e-12);
        double fro = Math.Sqrt(Flatten(dense.Values).Sum(v => v * v));
        Assert.Equal(fro, kfac.FrobeniusNorm(), 1e-10 * fro);
    }

    /// <summary>Places a layer's K-FAC block into a dense matrix: row-major vec of [W | b] (out × (in + 1)) is G ⊗ A, mapped to the flat order [W (out × in), b (out)].</summary>
    static void PlaceKronecker(Tensor reference, Tensor G, Tensor A, long weightOffset, long biasOffset)
    {
        long outD = G.shape[0], inD = A.shape[0] - 1, dim = outD * (inD + 1);
        var kk = kron(G, A).contiguous().data<double>().ToArray();
        var idx = new long[dim];
        for (long oo = 0; oo < outD; oo++)
            for (long ii = 0; ii <= inD; ii++) idx[oo * (inD + 1) + ii] = ii < inD ? weightOffset + oo * inD + ii : biasOffset + oo;
        var r = new double[reference.shape[0], reference.shape[1]];
        for (long a = 0; a < dim; a++) for (long b = 0; b < dim; b++) r[idx[a], idx[b]] = kk[a * dim + b];
        reference.add_(OwnedTensor.From(r.Cast<double>().ToArray(), reference.shape[0], reference.shape[1]));
    }

    [Fact]
    public void KfacOfAConvolutionEqualsKroneckerFactorsBuiltHereFromPatchesAndOutputGradients()
    {
        var g = new Generator(4);
        const long N = 6, T = 36;
        using var data = new Dataset("img", randn([N, 1, 6, 6], dtype: ScalarType.Float64, generator: g), randint(0, 3, [N], generator: g), TaskKind.Classification, 3);
        var conv = nn.Conv2d(1, 2, 3, padding: 1);
        var bn = nn.BatchNorm2d(2);
        var fc = nn.Linear(72, 3);
        var model = nn.Sequential(("conv", conv), ("bn", bn), ("flat", nn.Flatten()), ("fc", fc));
        model.to(ScalarType.Float64);
        using var o = new Objective(model, Losses.CrossEntropy, data, new() { BatchSize = 4 });
        using var kfac = new KfacOperator(o, new KfacOptions { Expectation = KfacExpectation.Exact });
        Assert.Equal(["conv", "fc"], kfac.Layers.Select(l => l.Name));
        Assert.Equal(["bn.weight", "bn.bias"], kfac.UncoveredParameters);
        var dense = ExactHessian.Compute(kfac);

        // The reference, from plain TorchSharp ops on one example at a time (eval mode, as the objective). KFC (Grosse &
        // Martens 2016, §3): A = (1/N) Σ_i (1/T) Σ_t ā_it ā_itᵀ over the unfolded 3×3 input patches with a 1 appended for the
        // bias, and G = (1/N) Σ_i Σ_t E[g_it g_itᵀ], g_it the loss gradient at the convolution's outputs at position t, its
        // expectation over the model's predictive distribution Js_tᵀ (diag p − p pᵀ) Js_t (Js_t = ∂f/∂s_t). KFC puts the
        // sum over positions on the patches' factor and the mean on the gradients'; Valley puts 1/T on A: the product, which
        // is what is compared, is the same.
        model.eval();
        var names = o.Parameters.Names.ToList();
        long Off(string name) => o.Parameters.Offsets[names.IndexOf(name)];
        var Aconv = zeros([10, 10], dtype: ScalarType.Float64);
        var Gconv = zeros([2, 2], dtype: ScalarType.Float64);
        var Afc = zeros([73, 73], dtype: ScalarType.Float64);
        var Gfc = zeros([3, 3], dtype: ScalarType.Float64);
        for (long i = 0; i < N; i++)
        {
            var x = data.X.narrow(0, i, 1);
            var patches = nn.functional.unfold(x, (3, 3), padding: (1, 1))[0].t(); // [T, 9]
            var abar = cat([patches, ones([T, 1], dtype: ScalarType.Float64)], 1);
            Aconv += abar.t().matmul(abar) / T;
            var s = conv.call(x).detach().requires_grad_(true); // [1, 2, 6, 6]
            var h = bn.call(s).flatten(1); // [1, 72]
            var f = fc.call(h)[0]; // [3]
            var p = softmax(f.detach(), 0);
            var M = diag(p) - outer(p, p);
            var Js = stack(Enumerable.Range(0, 3).Select(c => autograd.grad([f[c]], [s], retain_graph: true)[0].reshape(2, T)).ToArray()); // [3, 2, T]
            var Jt = Js.permute(2, 0, 1); // [T, 3, 2]
            Gconv += Jt.transpose(1, 2).matmul(M).matmul(Jt).sum(0L);
            var hbar = cat([h[0].detach(), ones(1, dtype: ScalarType.Float64)]);
            Afc += outer(hbar, hbar);
            Gfc += M; // the logits are fc's outputs: ∂f/∂s = I
        }
        var reference = zeros([o.Size, o.Size], dtype: ScalarType.Float64);
        PlaceKronecker(reference, Gconv / N, Aconv / N, Off("conv.weight"), Off("conv.bias"));
        PlaceKronecker(reference, Gfc / N, Afc / N, Off("fc.weight"), Off("fc.bias"));
        model.train();
        Assert.True(RelDiff(dense.Values, reference) < 1e-10, $"K-FAC differs by {RelDiff(dense.Values, reference):G3}");
        // Zero on BatchNorm's parameters, which K-FAC does not cover.
        long bnOff = Off("bn.weight");
        for (long r = bnOff; r < bnOff + 4; r++) Assert.Equal(0.0, Enumerable.Range(0, (int)o.Size).Max(c => Math.Abs(dense.Values[r, c])));
    }

    [Fact]
    public void MatchesPyTorchsExactGgnEmpiricalFisherAndKfacOfASmallMlp()
    {
        string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript", name);
        var arrays = NumPyFile.Read(Fixture("mlp_twin_data.npz"));
        using var data = new Dataset("mlp_twin", arrays["x"], arrays["y"], TaskKind.Classification, 3);
        using var model = new ModelSource("mlp:16-12-8-3:tanh", Fixture("mlp_twin_state.pt")).Build(data);
        var reference = JsonDocument.Parse(File.ReadAllText(Fixture("mlp_twin_curvature.json"))).RootElement;
        double[] Doubles(string name) => reference.GetProperty(name).EnumerateArray().Select(v => v.GetDouble()).ToArray();
        // Float32 products and Lanczos / the exact factors, against PyTorch's float64 values.
        using var o = new Objective(model, Losses.CrossEntropy, data);
        foreach (var (kind, prefix) in new[] { (CurvatureKind.Ggn, "ggn"), (CurvatureKind.EmpiricalFisher, "ef"), (CurvatureKind.Kfac, "kfac") })
        {
            // K-FAC's fixture is its exact expectation (the GGN's factors).
            using var c = CurvatureMatrix.Of(o, kind, new CurvatureOperatorOptions { KfacExpectation = KfacExpectation.Exact });
            var top = c.TopEigenvalues(3, new LanczosOptions { Tolerance = 1e-5, Seed = 1 }).Values;
            var expected = Doubles(prefix + "_top3");
            for (int i = 0; i < 3; i++) Assert.True(Math.Abs(top[i] - expected[i]) < 1e-4 * expected[0], $"{prefix} λ{i + 1}: {top[i]} vs {expected[i]}");
            var dense = c.Exact();
            double trace = reference.GetProperty(prefix + "_trace").GetDouble();
            Assert.True(Math.Abs(dense.Trace() - trace) < 1e-4 * trace, $"{prefix} trace {dense.Trace()} vs {trace}");
        }
    }

    [Theory]
    [InlineData(DiagonalMethod.Hutchinson)]
    [InlineData(DiagonalMethod.XDiag)]
    public void DiagonalEstimatesFallWithinTheirStandardErrorsOfTheExactDiagonal(DiagonalMethod method)
    {
        // A decaying spectrum with a few negative eigenvalues. XDiag's standard error leaves out the error its leave-one-out
        // sketches share (see DiagonalEstimate.StandardErrors), so it is tested where its sketch captures most of the matrix:
        // a faster decay (with 0.8^i it covered 89.8 % of the entries at 2 SE, measured).
        double rate = method == DiagonalMethod.XDiag ? 0.6 : 0.8;
        var spectrum = Enumerable.Range(0, 40).Select(i => 10.0 * Math.Pow(rate, i) - (i % 7 == 0 ? 0.5 : 0)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 3);
        var exact = op.Matrix.diagonal().data<double>().ToArray();
        int within = 0, total = 0;
        double errorSum = 0;
        for (int trial = 0; trial < 40; trial++)
        {
            var d = DiagonalEstimator.Estimate(op, new DiagonalOptions { Method = method, Products = 30, Seed = trial });
            Assert.Equal(30, d.Products);
            for (int i = 0; i < exact.Length; i++)
            {
                total++;
                if (Math.Abs(d.Diagonal[i] - exact[i]) <= 2 * d.StandardErrors[i]) within++;
                errorSum += Math.Abs(d.Diagonal[i] - exact[i]);
            }
        }
        Assert.True(within >= 0.9 * total, $"{method}: {within} of {total} entries within 2 standard errors");
        Assert.True(errorSum / total < 1.0, $"{method}: mean absolute error {errorSum / total}");
    }

    [Fact]
    public void XDiagIsExactWhenItsSketchSpansTheRange()
    {
        var spectrum = new double[30];
        for (int i = 0; i < 5; i++) spectrum[i] = 5 - i;
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 8);
        var d = DiagonalEstimator.Estimate(op, new DiagonalOptions { Method = DiagonalMethod.XDiag, Products = 16, Seed = 1 });
        var exact = op.Matrix.diagonal().data<double>().ToArray();
        for (int i = 0; i < exact.Length; i++) Assert.Equal(exact[i], d.Diagonal[i], 1e-10);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FrobeniusEstimatesFallWithinTheirStandardErrors(bool gaussian)
    {
        var spectrum = Enumerable.Range(0, 50).Select(i => Math.Sin(i) * 3).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 5);
        double exact = Math.Sqrt(spectrum.Sum(v => v * v));
        int within = 0;
        for (int trial = 0; trial < 50; trial++)
        {
            // A fixed number of probes (a target the estimate never reaches): stopping on the standard error biases both.
            var f = FrobeniusNorm.Estimate(op, new FrobeniusOptions { RelativeStandardError = 1e-9, MaxProducts = 60, Gaussian = gaussian, Seed = trial });
            if (Math.Abs(f.Norm - exact) <= 2 * f.StandardError) within++;
            Assert.Equal(60, f.Probes);
        }
        Assert.True(within >= 45, $"{within} of 50 within 2 standard errors");
    }

    [Fact]
    public void OneCallEntryNamesAndParsesTheOperators()
    {
        Assert.Equal(CurvatureKind.MonteCarloFisher, CurvatureOperators.Parse("mc-fisher"));
        Assert.Equal("ef", CurvatureOperators.NameOf(CurvatureKind.EmpiricalFisher));
        var (model, data) = SmallClassifier(seed: 2);
        using var _ = data;
        using var c = CurvatureMatrix.Of(model, Losses.CrossEntropy, data, CurvatureKind.Ggn);
        using var h = Hessian.Of(model, Losses.CrossEntropy, data);
        // The GGN is PSD and its λmax is finite; the Hessian's exact top eigenvalue differs from it in general.
        var top = c.TopEigenvalues(1, new LanczosOptions { Tolerance = 1e-8 }).Values[0];
        Assert.Equal(c.Exact().Eigenvalues()[^1], top, 1e-7 * top);
        LossFunction custom = (f, y) => nn.functional.cross_entropy(f, y);
        Assert.Throws<ValleyException>(() => CurvatureMatrix.Of(model, custom, data, CurvatureKind.MonteCarloFisher));
    }
}

public class GgnMonitorTests
{
    public GgnMonitorTests() => TestUtil.Init();

    [Fact]
    public void TheMonitorsGgnLambdaMaxEqualsTheHessiansForLinearRegression()
    {
        using var data = Synthetic.LinearTeacher(64, 5, seed: 4);
        var linear = new Mlp([5, 1]);
        var options = new Valley.Training.TrainOptions { LearningRate = 0.01, BatchSize = 16, Epochs = 1, MonitorEvery = 2, MonitorExamples = 64, MonitorGgn = true, Seed = 1 };
        var dir = TestUtil.TempDir("monitor-ggn");
        var log = new Valley.Training.Trainer(linear, data, options, Losses.MeanSquaredError) { OutputFolder = dir }.Run();
        Assert.NotEmpty(log.Monitor);
        // A model linear in its parameters under MSE: the GGN is the Hessian.
        foreach (var m in log.Monitor) Assert.Equal(m.LambdaMax, m.GgnLambdaMax!.Value, 1e-3 * m.LambdaMax);
        Assert.Contains("ggn_lambda_max", File.ReadAllLines(Path.Combine(dir, "monitor.csv"))[0]);
    }
}
