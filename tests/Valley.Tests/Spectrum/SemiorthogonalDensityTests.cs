using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>
/// SLQ's semiorthogonal basis (the default) against full reorthogonalization: the same quadrature to working accuracy, a
/// basis that stays within √u of orthogonal, and fewer subtraction passes.
/// </summary>
public class SemiorthogonalDensityTests
{
    public SemiorthogonalDensityTests() => TestUtil.Init();

    // A Hessian-like spectrum: a few large outliers that Lanczos resolves within a few steps (after which plain Lanczos
    // loses orthogonality along them), a bulk near zero and some negative eigenvalues.
    static double[] Spectrum(int n) => Enumerable.Range(0, n).Select(i => i < 4 ? 40.0 / (i + 1) : (i % 5 == 0 ? -0.3 : 1.0) * Math.Exp(-i / 60.0)).ToArray();

    static StochasticLanczosQuadrature.LockstepRuns Runs(ICurvatureOperator op, int runs, int steps, DensityReorthogonalization how)
    {
        var starts = SpectrumMath.Rademacher(runs, op.Size, new Generator(4), ScalarType.Float64) / Math.Sqrt(op.Size);
        var o = new SpectralDensityOptions { Runs = runs, Steps = steps, Reorthogonalization = how };
        return StochasticLanczosQuadrature.LanczosLockstep(op, new ProductBudget(op, runs * steps, "test"), starts, steps, o, null, default, measureOrthogonality: true);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void SemiorthogonalGivesTheQuadratureOfFullReorthogonalizationWithFewerPasses(int runs)
    {
        const int n = 300, steps = 60;
        using var op = DenseOperator.WithSpectrum(Spectrum(n), seed: 7);
        var semi = Runs(op, runs, steps, DensityReorthogonalization.Semiorthogonal);
        var full = Runs(op, runs, steps, DensityReorthogonalization.Full);
        Assert.Equal(0, full.SkippedSubtractions);
        Assert.True(semi.SkippedSubtractions > 0 && semi.SkippedSubtractions < steps - 1, $"skipped {semi.SkippedSubtractions} of {steps - 1}");
        // Semiorthogonal: every pair of basis vectors within √u (float64: 1.05e-8), and more than full reorthogonalization's
        // rounding level, or the test would not show that orthogonality was allowed to decay at all.
        Assert.True(semi.OrthogonalityDefect <= 1.1 * Math.Sqrt(1.1e-16), $"semiorthogonal basis off by {semi.OrthogonalityDefect:0.0e+0}");
        Assert.True(full.OrthogonalityDefect < 1e-13, $"full basis off by {full.OrthogonalityDefect:0.0e+0}");
        Assert.True(semi.OrthogonalityDefect > 100 * full.OrthogonalityDefect, $"semi {semi.OrthogonalityDefect:0.0e+0}, full {full.OrthogonalityDefect:0.0e+0}");
        // Simon (1984): a semiorthogonal basis gives T = projection of A to O(u‖A‖), so the Gauss quadrature is the same.
        AssertSameQuadrature(semi, full, runs, nodes: 1e-10 * 40, weights: 1e-9);
    }

    /// <summary>The first <paramref name="runs"/> runs of both have the same Gauss quadrature, nodes and weights within the tolerances.</summary>
    static void AssertSameQuadrature(StochasticLanczosQuadrature.LockstepRuns semi, StochasticLanczosQuadrature.LockstepRuns full, int runs, double nodes, double weights)
    {
        for (int r = 0; r < runs; r++)
        {
            var (sn, sw) = StochasticLanczosQuadrature.GaussQuadrature(semi.Tridiagonals[r].Alpha, semi.Tridiagonals[r].Beta);
            var (fn, fw) = StochasticLanczosQuadrature.GaussQuadrature(full.Tridiagonals[r].Alpha, full.Tridiagonals[r].Beta);
            Assert.Equal(fn.Length, sn.Length);
            for (int i = 0; i < sn.Length; i++)
            {
                Assert.True(Math.Abs(sn[i] - fn[i]) <= nodes, $"run {r}, node {i}: {sn[i]} vs {fn[i]}");
                Assert.True(Math.Abs(sw[i] - fw[i]) <= weights, $"run {r}, weight {i}: {sw[i]} vs {fw[i]}");
            }
        }
    }

    [Fact]
    public void AFloat32OperatorKeepsAFloat32BasisWithinItsSquareRootOfU()
    {
        // The common case: float32 products and a float32 basis, u = 6e-8, √u = 2.4e-4.
        const int n = 300, steps = 60;
        using var op64 = DenseOperator.WithSpectrum(Spectrum(n), seed: 7);
        using var op = new DenseOperator(op64.Matrix.to(ScalarType.Float32));
        var semi = Runs(op, 2, steps, DensityReorthogonalization.Semiorthogonal);
        var full = Runs(op, 2, steps, DensityReorthogonalization.Full);
        Assert.True(semi.SkippedSubtractions > 0, "no subtraction skipped");
        Assert.True(semi.OrthogonalityDefect <= 1.1 * Math.Sqrt(6e-8), $"semiorthogonal basis off by {semi.OrthogonalityDefect:0.0e+0}");
        // Float32 products: agreement to a few hundred u·‖A‖ (‖A‖ = 40).
        AssertSameQuadrature(semi, full, 2, nodes: 1e-5 * 40, weights: 1e-4);
    }

    [Fact]
    public void ARunThatEndsInAnInvariantSubspaceNeitherBreaksNorBlocksTheOthers()
    {
        // Run 1 starts in the span of three eigenvectors: its Krylov space is invariant after three steps, its quadrature
        // is exact (those three eigenvalues), and it goes on as zeros without asking run 0 for Gram-Schmidt passes.
        const int n = 300, steps = 60;
        var lambda = Spectrum(n);
        using var op = DenseOperator.WithSpectrum(lambda, seed: 7);
        var (values, vectors) = linalg.eigh(op.Matrix.to(ScalarType.Float64));
        var generic = SpectrumMath.Rademacher(1, n, new Generator(4), ScalarType.Float64) / Math.Sqrt(n);
        var inside = (vectors[.., n - 1] + vectors[.., n - 2] * 0.5 + vectors[.., 0] * 0.25).unsqueeze(0);
        var starts = cat([generic, inside / inside.norm()], 0);
        StochasticLanczosQuadrature.LockstepRuns Run(DensityReorthogonalization how) =>
            StochasticLanczosQuadrature.LanczosLockstep(op, new ProductBudget(op, 2 * steps, "test"), starts, steps,
                new SpectralDensityOptions { Runs = 2, Steps = steps, Reorthogonalization = how }, null, default, measureOrthogonality: true);
        var semi = Run(DensityReorthogonalization.Semiorthogonal);
        var full = Run(DensityReorthogonalization.Full);
        Assert.Equal(3, semi.Tridiagonals[1].Alpha.Length);
        var (nodes, weights) = StochasticLanczosQuadrature.GaussQuadrature(semi.Tridiagonals[1].Alpha, semi.Tridiagonals[1].Beta);
        var expected = new[] { values[0].ToDouble(), values[n - 2].ToDouble(), values[n - 1].ToDouble() };
        for (int i = 0; i < 3; i++) Assert.True(Math.Abs(nodes[i] - expected[i]) < 1e-10, $"node {i}: {nodes[i]} vs {expected[i]}");
        Assert.True(Math.Abs(weights.Sum() - 1) < 1e-12);
        // Run 0 still skips subtractions, and its quadrature is that of full reorthogonalization.
        var alone = StochasticLanczosQuadrature.LanczosLockstep(op, new ProductBudget(op, steps, "test"), generic, steps,
            new SpectralDensityOptions { Runs = 1, Steps = steps }, null, default);
        Assert.True(semi.SkippedSubtractions >= alone.SkippedSubtractions - 3,
            $"with the ended run beside it, run 0 skipped {semi.SkippedSubtractions} subtractions; alone {alone.SkippedSubtractions}");
        AssertSameQuadrature(semi, full, 1, nodes: 1e-10 * 40, weights: 1e-9);
    }

    [Fact]
    public void WithoutAnyReorthogonalizationTheSameSpectrumGrowsGhosts()
    {
        // The test above is only meaningful if the spectrum does lose orthogonality: plain Lanczos (the recurrence alone)
        // on it must drift far from orthogonal within the same 60 steps.
        const int n = 300, steps = 60;
        using var op = DenseOperator.WithSpectrum(Spectrum(n), seed: 7);
        var A = op.Matrix.to(ScalarType.Float64);
        var q = (SpectrumMath.Rademacher(1, n, new Generator(4), ScalarType.Float64) / Math.Sqrt(n)).reshape(-1);
        var basis = new List<Tensor> { q };
        Tensor? prev = null;
        double beta = 0;
        for (int j = 0; j < steps - 1; j++)
        {
            var w = A.mv(basis[^1]);
            double alpha = w.dot(basis[^1]).ToDouble();
            w = w - alpha * basis[^1];
            if (prev is not null) w = w - beta * prev;
            beta = w.norm().ToDouble();
            prev = basis[^1];
            basis.Add(w / beta);
        }
        var Q = stack(basis.ToArray());
        double defect = (Q.matmul(Q.t()) - eye(steps, dtype: ScalarType.Float64)).abs().max().ToDouble();
        Assert.True(defect > 0.5, $"plain Lanczos stayed orthogonal to {defect:0.0e+0}");
    }
}
