using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>Block Lanczos when the Krylov space runs out inside a block (an operator of low rank).</summary>
public class BlockLanczosDeflationTests
{
    public BlockLanczosDeflationTests() => TestUtil.Init();

    [Theory]
    [InlineData(4, 5)]
    [InlineData(3, 2)]
    [InlineData(5, 7)]
    public void TheBlockTridiagonalIsTheProjectionEvenAfterDeflation(int block, int rank)
    {
        // An operator of rank r: after a few blocks the residual block has fewer independent rows than b, and the rows
        // that are exhausted are replaced by fresh directions. T must still be QᵀAQ on the whole basis, and the top
        // eigenvalues must come out of it without residual checks.
        var spectrum = Enumerable.Range(0, 40).Select(i => i < rank ? rank - i : 0.0).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 11);
        using var scope = NewDisposeScope();
        var gen = new Generator(3);
        using var proc = new BlockLanczosProcess(new ProductBudget(op, 10_000, "test"), 40, op.Device, block, null, gen);
        proc.Start(randn([block, 40], dtype: ScalarType.Float64, generator: gen));
        for (int s = 0; s < 4; s++) proc.Step();
        int m = proc.TridiagonalSize;
        var Q = proc.Basis(m);
        var projected = Q.matmul(op.Matrix.matmul(Q.t()));
        var T = Valley.Data.OwnedTensor.From(proc.Tridiagonal().Cast<double>().ToArray(), m, m);
        Assert.True((projected - T).abs().max().ToDouble() <= 1e-9 * rank, $"max |QᵀAQ − T| = {(projected - T).abs().max().ToDouble():G3}");
        Assert.True((Q.matmul(Q.t()) - eye(m, dtype: ScalarType.Float64)).abs().max().ToDouble() <= 1e-10, "basis not orthonormal");
        var top = Lanczos.Compute(op, new LanczosOptions { K = Math.Min(rank, 3), BlockSize = block, VerifyResiduals = false, Seed = 5, Tolerance = 1e-8 });
        for (int i = 0; i < top.Values.Length; i++) Assert.Equal(rank - i, top.Values[i], 8);
    }

    [Theory]
    [InlineData(10, 4)]
    [InlineData(11, 3)]
    [InlineData(7, 5)]
    public void ABlockSizeThatDoesNotDivideTheSizeStillEndsWithTheEigenvalues(int n, int block)
    {
        // The basis fills up with a last, partial block; the Ritz values are then the eigenvalues.
        var spectrum = Enumerable.Range(0, n).Select(i => 1.0 + i * i).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 12);
        var top = Lanczos.Compute(op, new LanczosOptions { K = 3, BlockSize = block, Seed = 2, Tolerance = 1e-10 });
        Assert.True(top.Converged, top.StopMessage);
        var expected = spectrum.OrderByDescending(x => x).Take(3).ToArray();
        for (int i = 0; i < 3; i++) Assert.Equal(expected[i], top.Values[i], 8);
    }
}
