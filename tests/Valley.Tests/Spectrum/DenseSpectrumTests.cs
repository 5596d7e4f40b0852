using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>Estimators against dense operators with known spectra.</summary>
public class DenseSpectrumTests
{
    public DenseSpectrumTests() => TestUtil.Init();

    public static IEnumerable<object[]> Spectra()
    {
        int n = 200;
        // Well separated, positive.
        yield return ["separated", Enumerable.Range(0, n).Select(i => 1.0 + i * 0.5).ToArray()];
        // Clustered: most eigenvalues in [0, 1], a tight cluster at the top.
        yield return ["clustered", Enumerable.Range(0, n).Select(i => i < 190 ? i / 190.0 : 10 + 0.01 * (i - 190)).ToArray()];
        // Indefinite: negative and positive, like a Hessian at a saddle.
        yield return ["negative", Enumerable.Range(0, n).Select(i => -20.0 + i * 0.3 + (i % 7) * 0.01).ToArray()];
        // Degenerate: the top value three times, the bottom value twice.
        yield return ["degenerate", Enumerable.Range(0, n).Select(i => i >= n - 3 ? 50.0 : i < 2 ? -5.0 : i * 0.1).ToArray()];
    }

    static double[] Expected(double[] spectrum, int k, bool top) =>
        (top ? spectrum.OrderByDescending(x => x) : spectrum.OrderBy(x => x)).Take(k).ToArray();

    [Theory]
    [MemberData(nameof(Spectra))]
    public void LanczosTop5AndBottom5MatchTheExactSpectrum(string name, double[] spectrum)
    {
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 3);
        foreach (var (target, top) in new[] { (EigenTarget.Largest, true), (EigenTarget.Smallest, false) })
        {
            var r = Lanczos.Compute(op, new LanczosOptions { K = 5, Target = target, Tolerance = 1e-8, Seed = 1 });
            var expected = Expected(spectrum, 5, top);
            Assert.True(r.Converged, $"{name} {target}: not converged");
            for (int i = 0; i < 5; i++)
                Assert.True(Math.Abs(r.Values[i] - expected[i]) <= 1e-6 * Math.Abs(expected[i]) + 1e-12,
                    $"{name} {target} #{i}: {r.Values[i]} vs {expected[i]}");
            double norm = spectrum.Max(Math.Abs);
            for (int i = 0; i < 5; i++) Assert.True(r.Residuals[i] < 1e-6 * Math.Max(Math.Abs(r.Values[i]), 1e-3 * norm));
        }
    }

    [Fact]
    public void LanczosUsesFarFewerProductsThanTheDimensionOnSeparatedSpectra()
    {
        var spectrum = Enumerable.Range(0, 400).Select(i => Math.Pow(1.03, i)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 4);
        var r = Lanczos.Compute(op, new LanczosOptions { K = 1, Tolerance = 1e-6 });
        Assert.Equal(spectrum.Max(), r.Values[0], 1e-6 * spectrum.Max());
        Assert.True(r.Products < 100, $"{r.Products} products");
    }

    [Fact]
    public void BlockLanczosFindsTheSameEigenvaluesAndTheLargestMagnitudeTargetWorks()
    {
        var spectrum = Enumerable.Range(0, 150).Select(i => -30.0 + i * 0.25).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 5);
        var block = Lanczos.Compute(op, new LanczosOptions { K = 4, BlockSize = 3, Tolerance = 1e-9, Seed = 2 });
        Assert.Equal(Expected(spectrum, 4, true), block.Values.Select(v => Math.Round(v, 8)).ToArray());
        var lm = Lanczos.Compute(op, new LanczosOptions { K = 2, Target = EigenTarget.LargestMagnitude, Tolerance = 1e-9 });
        Assert.Equal(-30.0, lm.Values[0], 7);
        Assert.Equal(-29.75, lm.Values[1], 7);
    }

    [Fact]
    public void EigenvectorsAreReturnedOrthonormalWithTheirResiduals()
    {
        var spectrum = Enumerable.Range(0, 80).Select(i => (double)i).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 6);
        var r = Lanczos.Compute(op, new LanczosOptions { K = 3, Tolerance = 1e-10, ReturnVectors = true });
        var v = r.Vectors!;
        var gram = v.matmul(v.t());
        Assert.True((gram - eye(3, dtype: ScalarType.Float64)).abs().max().ToDouble() < 1e-8);
        var av = op.Matrix.matmul(v.t()).t();
        for (int i = 0; i < 3; i++)
            Assert.True((av[i] - r.Values[i] * v[i]).norm().ToDouble() < 1e-7);
    }

    [Fact]
    public void PowerIterationAgreesWithLanczosOnAWellSeparatedTopEigenvalue()
    {
        var spectrum = Enumerable.Range(0, 200).Select(i => i == 199 ? 100.0 : i * 0.1).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 7);
        var p = PowerIteration.Compute(op, new PowerIterationOptions { Seed = 1 });
        var l = Lanczos.Compute(op, new LanczosOptions { K = 1, Tolerance = 1e-8 });
        Assert.True(p.Converged);
        Assert.Equal(100.0, l.Values[0], 8);
        Assert.True(Math.Abs(p.Values[0] - 100.0) < 1e-3 * 100, $"power iteration {p.Values[0]}");
        Assert.True(p.Products > l.Products / 2 || p.Products <= 100);
    }

    [Fact]
    public void HutchinsonIsWithinThreeStandardErrorsAcrossSeedsAndItsErrorShrinksAsOneOverRootM()
    {
        var spectrum = Enumerable.Range(0, 120).Select(i => Math.Sin(i) * 3 + 1).ToArray();
        double exact = spectrum.Sum();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 8);
        int within = 0, seeds = 60;
        double se25 = 0, se100 = 0;
        for (int s = 0; s < seeds; s++)
        {
            var r = Hutchinson.Estimate(op, new HutchinsonOptions { Seed = s, MinProbes = 100, MaxProducts = 100, RelativeStandardError = 1e-9 });
            Assert.Equal(100, r.Probes);
            if (Math.Abs(r.Trace - exact) <= 3 * r.StandardError) within++;
            se100 += r.StandardError;
            se25 += Hutchinson.Estimate(op, new HutchinsonOptions { Seed = 1000 + s, MinProbes = 25, MaxProducts = 25, RelativeStandardError = 1e-9 }).StandardError;
        }
        Assert.True(within >= 0.93 * seeds, $"{within}/{seeds} within 3 SE");
        double ratio = se25 / se100;
        Assert.InRange(ratio, 1.8, 2.2); // √(100/25) = 2
    }

    [Fact]
    public void HutchinsonStopsOnItsStandardErrorTarget()
    {
        var spectrum = Enumerable.Range(0, 100).Select(i => 1.0 + (i % 10)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 9);
        var r = Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = 0.01, MaxProducts = 5000 });
        Assert.True(r.Converged);
        Assert.True(r.StandardError <= 0.01 * Math.Abs(r.Trace));
        Assert.Equal(r.Probes, r.Products);
    }

    [Fact]
    public void HutchPlusPlusBeatsHutchinsonOnLowRankPlusNoiseAtEqualProducts()
    {
        int n = 300;
        var rng = new Random(1);
        var spectrum = Enumerable.Range(0, n).Select(i => i < 10 ? 100.0 + i : 0.05 * rng.NextDouble()).ToArray();
        double exact = spectrum.Sum();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 10);
        double errH = 0, errPP = 0;
        for (int s = 0; s < 20; s++)
        {
            var h = Hutchinson.Estimate(op, new HutchinsonOptions { Seed = s, MinProbes = 30, MaxProducts = 30, RelativeStandardError = 1e-12 });
            var pp = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 30, RelativeStandardError = null, Seed = s });
            Assert.Equal(30, pp.Products);
            errH += (h.Trace - exact) * (h.Trace - exact);
            errPP += (pp.Trace - exact) * (pp.Trace - exact);
        }
        Assert.True(errPP < errH / 100, $"Hutch++ MSE {errPP / 20}, Hutchinson MSE {errH / 20}");
    }

    [Fact]
    public void TheNegativeMassCarriesAStandardErrorThatCoversTheTrueFraction()
    {
        // 20 % of the eigenvalues clearly negative, the rest positive, a few large ones: the true negative mass is 0.2.
        int n = 300;
        var spectrum = Enumerable.Range(0, n).Select(i => i < 3 ? 30.0 - i : i < 63 ? -1.0 - 0.01 * i : 0.5 + 0.01 * i).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 12);
        var few = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 9, Steps = 30, Seed = 5 });
        var many = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 81, Steps = 30, Seed = 6 });
        foreach (var d in new[] { few, many })
        {
            Assert.True(d.NegativeMassStandardError > 0 && double.IsFinite(d.NegativeMassStandardError));
            Assert.True(Math.Abs(d.NegativeMass - 0.2) <= 4 * d.NegativeMassStandardError, $"{d.Runs} runs: {d.NegativeMass} ± {d.NegativeMassStandardError}");
        }
        // Nine times the runs, a third of the error (1/√runs), within the roughness of a 9-run spread. One run's spread is
        // about that of zᵀPz/n for a rank-60 projector P: √(2 (60 − 300·0.2²))/300 ≈ 0.033.
        Assert.InRange(many.NegativeMassStandardError / few.NegativeMassStandardError, 1 / 3.0 / 2, 1 / 3.0 * 2);
        Assert.InRange(many.NegativeMassStandardError * 9, 0.033 / 1.5, 0.033 * 1.5);
        Assert.True(double.IsNaN(StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 1, Steps = 30 }).NegativeMassStandardError));
    }

    [Fact]
    public void SlqDensityMomentsMatchTheExactSpectrum()
    {
        int n = 250;
        var spectrum = Enumerable.Range(0, n).Select(i => i < 5 ? 40.0 - i : -2 + 4.0 * i / n).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 11);
        var d = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 20, Steps = 40, Seed = 3 });
        double mean = spectrum.Average(), second = spectrum.Average(x => x * x);
        Assert.True(Math.Abs(d.Trace / n - mean) <= 4 * d.TraceStandardError / n, $"mean {d.Trace / n} vs {mean} ± {d.TraceStandardError / n}");
        Assert.True(Math.Abs(d.SecondMoment - second) <= 4 * d.SecondMomentStandardError, $"second {d.SecondMoment} vs {second} ± {d.SecondMomentStandardError}");
        // The broadened, normalized density has unit area and the quadrature's first moment.
        Assert.Equal(1.0, d.GridMoment(0), 6);
        Assert.Equal(d.Trace / n, d.GridMoment(1), 3);
        // Extreme Ritz values converge to the extreme eigenvalues; the negative mass is about the fraction of negatives.
        Assert.Equal(40.0, d.LambdaMax, 6);
        Assert.Equal(spectrum.Min(), d.LambdaMin, 4);
        Assert.InRange(d.NegativeMass, 0.35, 0.6);
        Assert.All(d.Weights, w => Assert.Equal(1.0, w.Sum(), 10));
    }

    [Fact]
    public void SlqWithBlockProductsEqualsRunsOneAtATime()
    {
        var spectrum = Enumerable.Range(0, 100).Select(i => Math.Cos(i) * 5).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 12);
        var a = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 4, Steps = 20, Seed = 5, BlockProducts = true });
        var b = StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 4, Steps = 20, Seed = 5, BlockProducts = false });
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < a.Nodes[r].Length; i++)
                Assert.Equal(a.Nodes[r][i], b.Nodes[r][i], 8);
    }

    [Fact]
    public void BadEstimatorParametersAreRefusedInTheOptionsNames()
    {
        using var op = DenseOperator.WithSpectrum([1, 2, 3], seed: 1);
        void Refused(string name, string problem, Action run)
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(run);
            Assert.Equal(name, e.ParamName);
            Assert.Contains(problem, e.Message);
        }
        Refused("K", "must not exceed the operator's size (3)", () => Lanczos.Compute(op, new LanczosOptions { K = 4 }));
        Refused("Tolerance", "must be in (0, 1)", () => Lanczos.Compute(op, new LanczosOptions { Tolerance = -1 }));
        Refused("MaxProducts", "must be at least", () => Lanczos.Compute(op, new LanczosOptions { K = 2, MaxProducts = 3 }));
        Refused("SketchSize", "must be at least 1", () => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { SketchSize = 0 }));
        Refused("MaxProducts", "must be at least 2", () => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 1 }));
        Refused("RelativeStandardError", "must be a positive finite number", () => Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = 0 }));
        Refused("Steps", "must be at least 2", () => StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Steps = 1 }));
        Refused("TopN", "must not exceed the operator's size (3)", () => PowerIteration.Compute(op, new PowerIterationOptions { TopN = 4 }));
        Refused("Top", "must be between 0 and the number of parameters (3)", () => SpectrumAnalysis.Validate(op, new SpectrumAnalysisOptions { Top = 4 }));
    }
}
