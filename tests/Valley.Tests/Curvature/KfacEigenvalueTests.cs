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

    [Fact]
    public void AFloat32ModelsFactorWithAWideSpectrumStillTakesTheKrylovPath()
    {
        // An MLP input factor's top five span a factor of ~40 (112 … 2.85): in float32 the fifth residual cannot fall below
        // u·‖F‖ ≈ 2e-6·θ₅, so a float32 Krylov space always failed the 1e-6·θ test and the dense solver answered. The space
        // is built in float64 whatever the model's dtype.
        var spectrum = Enumerable.Range(0, 785).Select(i => 1e-3 + 112 * Math.Pow(0.4, i)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 5);
        var found = KfacOperator.ExtremeEigenvalues(op.Matrix, 5, ScalarType.Float32);
        Assert.Equal(new double[5], found.Take(5).ToArray());
        var top = spectrum.OrderByDescending(x => x).Take(5).Reverse().ToArray();
        for (int i = 0; i < 5; i++) Assert.Equal(1.0, found[5 + i] / top[i], 9);
    }

    [Fact]
    public void ALowRankFactorGivesItsTopEigenvaluesWhicheverPathAnswers()
    {
        // 50 nonzero eigenvalues of 600 (a G from fewer examples than outputs): the Krylov space is exhausted after four
        // blocks, and the top five must still be right, from the Krylov space or from the dense solver.
        var spectrum = Enumerable.Range(0, 600).Select(i => i < 50 ? 1 + 0.5 * i : 0.0).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 6);
        var found = KfacOperator.ExtremeEigenvalues(op.Matrix, 5, ScalarType.Float64);
        var top = spectrum.OrderByDescending(x => x).Take(5).Reverse().ToArray();
        for (int i = 0; i < 5; i++) Assert.Equal(top[i], found[5 + i], 9);
    }

    [Theory]
    [InlineData(512)]
    [InlineData(600)]
    [InlineData(785)]
    public void TheBlockedGramEqualsTheFullProduct(int width)
    {
        // Wide inputs (512 columns and more) are multiplied by column blocks (the upper three of four).
        using var scope = NewDisposeScope();
        var x = randn([300, width], dtype: ScalarType.Float64, generator: new TorchSharp.torch.Generator(7));
        var expected = x.t().matmul(x);
        var gram = KfacOperator.Gram(x);
        Assert.Equal(0.0, (gram - expected).abs().max().ToDouble() / expected.abs().max().ToDouble(), 13);
    }
}
