using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>XTrace (Epperly, Tropp, Webber 2024) against dense matrices with known traces.</summary>
public class XTraceTests
{
    public XTraceTests() => TestUtil.Init();

    const int N = 200;

    public static IEnumerable<object[]> Spectra()
    {
        yield return ["flat", Enumerable.Range(0, N).Select(i => 1.0 + (i % 10) * 0.1).ToArray()];
        yield return ["decaying", Enumerable.Range(0, N).Select(i => 100.0 * Math.Pow(i + 1, -1.5)).ToArray()];
        yield return ["indefinite", Enumerable.Range(0, N).Select(i => (i % 3 == 0 ? -1.0 : 1.0) * (1 + 10.0 * Math.Exp(-i / 20.0))).ToArray()];
    }

    [Theory]
    [MemberData(nameof(Spectra))]
    public void EstimateIsWithinTwoReportedStandardErrorsInAtLeast90PercentOfTrials(string name, double[] spectrum)
    {
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 2);
        double trace = spectrum.Sum();
        // The published fixed-budget form on every spectrum; the adaptive form (stopping on its own error estimate) on the flat
        // and indefinite ones. On the heavy-tailed decaying spectrum the adaptive form stops at its first 10 test vectors
        // whenever their error estimate happens to be low, and covers about 82-86% of trials (optional stopping; measured
        // with a NumPy replica, 200 seeds): reported in docs/design.md, not hidden by a looser test.
        // s = 20 of n = 200 test vectors: s ≪ n as for a Hessian. With s = 50 (a quarter of n) the error estimate was low:
        // 88% (flat) and 83% (decaying) of trials within 2 reported errors (docs/design.md).
        var forms = new List<XTraceOptions> { new() { RelativeStandardError = null, MaxProducts = 40 } };
        if (name != "decaying") forms.Add(new XTraceOptions { RelativeStandardError = 0.02 });
        foreach (var options in forms)
        {
            int trials = 100, covered = 0;
            for (int seed = 0; seed < trials; seed++)
            {
                var r = XTrace.Estimate(op, options with { Seed = seed });
                Assert.Equal("xtrace", r.Method);
                Assert.True(r.Products <= options.MaxProducts && r.Products == 2 * r.Probes);
                if (Math.Abs(r.Trace - trace) <= 2 * r.StandardError) covered++;
            }
            Assert.True(covered >= 90, $"{name}, target {options.RelativeStandardError}: {covered} of {trials} within 2 SE");
        }
    }

    [Fact]
    public void GrownSketchHoldsItsInvariants()
    {
        var spectrum = Enumerable.Range(0, 30).Select(i => (i % 2 == 0 ? 1.0 : -0.5) * Math.Exp(-i / 6.0) + 0.05).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 5);
        var budget = new ProductBudget(op, 100, "test");
        using var sk = new XTrace.Sketch(budget, 30, op.Device, 3, 1e-10);
        sk.Grow(4);
        sk.Grow(3);
        var (Q, R, H, W, Om) = sk.Parts();
        var A = op.Matrix;
        double Err(Tensor a, Tensor b) => (a - b).abs().max().ToDouble();
        Assert.True(Err(Q.matmul(Q.t()), eye(7, dtype: ScalarType.Float64)) < 1e-12, "QᵀQ");
        Assert.True(Err(Q.t().matmul(R), A.matmul(Om.t())) < 1e-12, $"QR = AΩ: {Err(Q.t().matmul(R), A.matmul(Om.t()))}");
        Assert.True(Err(H, Q.matmul(A).matmul(Q.t())) < 1e-12, $"H {Err(H, Q.matmul(A).matmul(Q.t()))}");
        Assert.True(Err(W, Q.matmul(Om.t())) < 1e-12, $"W {Err(W, Q.matmul(Om.t()))}");
    }

    [Fact]
    public void GrownSketchEqualsTheDefinitionWithTheSameTestVectors()
    {
        // s grows 4 → 7 → 10; t_i by its definition: Q_(i) = orth(A Ω without ω_i), c_i normalizes the residual probe.
        var spectrum = Enumerable.Range(0, 30).Select(i => (i % 2 == 0 ? 1.0 : -0.5) * Math.Exp(-i / 6.0) + 0.05).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 5);
        long seed = 3;
        var r = XTrace.Estimate(op, new XTraceOptions { Seed = seed, TestVectors = 4, BlockSize = 3, MaxProducts = 20, RelativeStandardError = 1e-14 });
        Assert.Equal(10, r.Probes);
        Assert.Equal(20, r.Products);
        var A = op.Matrix.to(ScalarType.Float64);
        var blocks = new[] { 4, 3, 3 };
        var omega = cat(blocks.Select((b, j) => randn([b, 30], dtype: ScalarType.Float64, generator: new Generator((ulong)seed * 1_000_003UL + (ulong)j))).ToArray(), 0).t();
        var Y = A.matmul(omega);
        int s = 10;
        var t = new double[s];
        for (int i = 0; i < s; i++)
        {
            var keep = Enumerable.Range(0, s).Where(j => j != i).Select(j => (long)j).ToArray();
            var (Qi, _) = linalg.qr(Y.index_select(1, Valley.Data.OwnedTensor.From(keep)));
            var P = eye(30, dtype: ScalarType.Float64) - Qi.matmul(Qi.t());
            var u = P.matmul(omega[.., i]);
            t[i] = Qi.t().matmul(A).matmul(Qi).trace().ToDouble() + (30 - s + 1) / u.dot(u).ToDouble() * u.dot(A.matmul(u)).ToDouble();
        }
        var (mean, se) = Statistics.MeanAndStandardError(t);
        Assert.True(Math.Abs(r.Trace - mean) < 1e-10 * Math.Abs(mean), $"{r.Trace} vs {mean}");
        Assert.True(Math.Abs(r.StandardError - se) < 1e-8 * se + 1e-14, $"{r.StandardError} vs {se}");
    }

    [Fact]
    public void NeedsFewerProductsThanHutchPlusPlusOnAFastDecayingSpectrum()
    {
        var spectrum = Enumerable.Range(0, 400).Select(i => Math.Exp(-i / 8.0) + 1e-3).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 6);
        double trace = spectrum.Sum();
        var xt = new List<long>();
        var hpp = new List<long>();
        for (int seed = 0; seed < 10; seed++)
        {
            var a = XTrace.Estimate(op, new XTraceOptions { RelativeStandardError = 0.01, Seed = seed });
            var b = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { RelativeStandardError = 0.01, Seed = seed });
            Assert.True(a.Converged && b.Converged);
            Assert.True(Math.Abs(a.Trace - trace) < 0.05 * trace);
            xt.Add(a.Products);
            hpp.Add(b.Products);
        }
        double Median(List<long> x) => x.OrderBy(v => v).ElementAt(x.Count / 2);
        Assert.True(Median(xt) < Median(hpp), $"XTrace {Median(xt)} products, Hutch++ {Median(hpp)}");
    }

    [Fact]
    public void ARangeReachedInALaterBlockGivesTheExactTrace()
    {
        // Rank 15 of n = 40: the first block of 10 test vectors is full rank, the second adds only 5 directions. The QR of
        // that block turns the other 5 columns' rounding noise into unit vectors with components along the first block's
        // rows; tr(QᵀAQ) counted those directions again (off by O(1) here), tr((QᵀQ)⁺QᵀAQ) does not.
        var spectrum = Enumerable.Range(0, 40).Select(i => i < 15 ? (i % 2 == 0 ? 1.0 : -0.6) * (3.0 - 0.1 * i) : 0.0).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 11);
        foreach (long seed in new long[] { 0, 1, 2 })
        {
            var r = XTrace.Estimate(op, new XTraceOptions { Seed = seed, TestVectors = 10, BlockSize = 10, RelativeStandardError = 1e-14 });
            Assert.Equal(20, r.Probes);
            Assert.Equal(0, r.StandardError);
            Assert.True(Math.Abs(r.Trace - spectrum.Sum()) < 1e-9 * spectrum.Select(Math.Abs).Sum(), $"seed {seed}: {r.Trace} vs {spectrum.Sum()}");
            Assert.Equal(r.Trace, r.LowRankTrace);
        }
    }

    [Fact]
    public void ALowRankOperatorIsExactAndTheHessianEntryPointReachesXTrace()
    {
        var spectrum = Enumerable.Range(0, 50).Select(i => i < 5 ? 3.0 + i : 0.0).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 7);
        var r = XTrace.Estimate(op, new XTraceOptions { Seed = 1 });
        Assert.Equal(spectrum.Sum(), r.Trace, 1e-9);
        Assert.Equal(0, r.StandardError);
        Assert.True(r.Converged);
        var bad = Assert.Throws<ArgumentOutOfRangeException>(() => XTrace.Estimate(op, new XTraceOptions { MaxProducts = 3 }));
        Assert.Contains("MaxProducts", bad.Message);

        using var data = Valley.Data.Synthetic.GaussianMixture(40, 4, 3, seed: 2);
        var model = Valley.Models.ModelSpec.Parse("mlp:4-5-3:tanh").Build(data, 1);
        using var h = Hessian.Of(model, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64 });
        double exact = h.Exact().Trace();
        var x = h.Trace(TraceMethod.XTrace);
        Assert.Equal("xtrace", x.Method);
        Assert.True(Math.Abs(x.Trace - exact) <= 4 * x.StandardError + 1e-9 * Math.Abs(exact), $"{x.Trace} ± {x.StandardError} vs {exact}");
    }
}
