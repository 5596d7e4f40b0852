using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>A product with a NaN or an infinite entry stops every estimator with a message, whatever else it holds.</summary>
public class NonFiniteProductTests
{
    public NonFiniteProductTests() => TestUtil.Init();

    // The identity, except one entry of every product, which is replaced by `bad`.
    sealed class Poisoned(long n, ScalarType dtype, double bad) : CurvatureOperator
    {
        public override long Size => n;
        public override ScalarType DType => dtype;
        public override Device Device => CPU;
        protected override Tensor ApplyCore(Tensor v)
        {
            var r = v.clone();
            r[n / 2] = bad;
            return r;
        }
    }

    [Theory]
    [InlineData(double.NaN, ScalarType.Float32)]
    [InlineData(double.PositiveInfinity, ScalarType.Float32)]
    [InlineData(double.NegativeInfinity, ScalarType.Float64)]
    [InlineData(double.NaN, ScalarType.Float64)]
    public void ANonFiniteEntryStopsLanczosAndTheTraceEstimators(double bad, ScalarType dtype)
    {
        var op = new Poisoned(50, dtype, bad);
        Assert.Throws<NonFiniteException>(() => Lanczos.Compute(op, new LanczosOptions { K = 1 }));
        Assert.Throws<NonFiniteException>(() => XTrace.Estimate(op, new XTraceOptions()));
        Assert.Throws<NonFiniteException>(() => Hutchinson.Estimate(op, new HutchinsonOptions()));
    }

    [Fact]
    public void LargeFiniteEntriesWhoseSumOverflowsAreNotRefused()
    {
        // A float64 product with two entries near the top of the range: their sum overflows, their maximum does not.
        var big = new DenseOperator(diag(full(4, 1e308, dtype: ScalarType.Float64)));
        var product = new ProductBudget(big, 10, "test").Apply(ones([4, 1], dtype: ScalarType.Float64));
        Assert.Equal(1e308, product[2, 0].ToDouble());
        Assert.Throws<NonFiniteException>(() => new ProductBudget(new Poisoned(4, ScalarType.Float64, double.PositiveInfinity), 10, "test")
            .Apply(ones([4, 1], dtype: ScalarType.Float64)));
    }
}
