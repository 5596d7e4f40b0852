using Valley.Curvature;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>K-FAC's largest eigenvalues of a large factor from a block Krylov space, against known spectra.</summary>
public class KfacEigenvalueTests
{
    public KfacEigenvalueTests() => TestUtil.Init();

    [Fact]
    public void ALargeFactorsTopEigenvaluesComeFromItsKrylovSpaceAndEqualTheKnownOnes()
    {
        // A 600×600 positive definite factor with a decaying spectrum (as a layer's input moments have), smallest 0.5.
        var spectrum = Enumerable.Range(0, 600).Select(i => 0.5 + 40 * Math.Pow(0.9, i)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 3);
        var found = KfacOperator.ExtremeEigenvalues(op.Matrix, 5, ScalarType.Float64);
        var top = spectrum.OrderByDescending(x => x).Take(5).Reverse().ToArray();
        // The Krylov path: zeros stand in for the smallest eigenvalues (the dense solver would give 0.5).
        Assert.Equal(new double[5], found.Take(5).ToArray());
        for (int i = 0; i < 5; i++) Assert.Equal(top[i], found[5 + i], 9);
    }

    [Fact]
    public void AFlatSpectrumTheKrylovSpaceCannotResolveFallsBackToTheDenseSolver()
    {
        // Eigenvalues 1 + 1e-4·i: eight blocks cannot separate the top five, so the dense solver answers (smallest included).
        var spectrum = Enumerable.Range(0, 400).Select(i => 1 + 1e-4 * i).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 4);
        var found = KfacOperator.ExtremeEigenvalues(op.Matrix, 5, ScalarType.Float64);
        Assert.Equal(1.0, found[0], 9);
        Assert.Equal(1 + 1e-4 * 399, found[^1], 9);
        Assert.Equal(1 + 1e-4 * 395, found[5], 9);
    }
}
