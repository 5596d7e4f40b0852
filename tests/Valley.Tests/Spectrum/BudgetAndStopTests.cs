using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Spectrum;

/// <summary>Every estimator keeps to its own product budget, whatever the operator, and says why it stopped.</summary>
public class BudgetAndStopTests
{
    public BudgetAndStopTests() => TestUtil.Init();

    /// <summary>An operator written against the interface alone, as a user would: no base class, no counting of its own use.</summary>
    sealed class PlainOperator(Tensor matrix) : ICurvatureOperator
    {
        public long Received;
        public long Size => matrix.shape[0];
        public ScalarType DType => matrix.dtype;
        public Device Device => matrix.device;
        public Tensor Apply(Tensor v) { Received++; return matrix.matmul(v); }
        public Tensor ApplyBlock(Tensor V) { Received += V.shape[1]; return matrix.matmul(V); }
    }

    static double[] Indefinite(int n) => Enumerable.Range(0, n).Select(i => Math.Sin(1.7 * i) * 3 - 0.15).ToArray();

    [Fact]
    public void HutchPlusPlusOnASmallBudgetStaysWithinItAndReportsAnError()
    {
        var spectrum = Indefinite(120);
        double exact = spectrum.Sum();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 21);
        var r = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 60, RelativeStandardError = 0.01, Seed = 1 });
        Assert.True(r.Products <= 60, $"{r.Products} products for a budget of 60");
        Assert.True(r.StandardError > 0 && double.IsFinite(r.StandardError), $"standard error {r.StandardError}");
        Assert.True(Math.Abs(r.Trace - exact) <= 4 * r.StandardError, $"trace {r.Trace} ± {r.StandardError}, exact {exact}");
        // Every budget: never more products, and an error that is known (two probes or more) or NaN, never a false zero.
        for (long budget = 2; budget <= 40; budget++)
            foreach (double? target in new double?[] { 0.01, null })
            {
                var e = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = budget, RelativeStandardError = target, Seed = budget });
                Assert.True(e.Products <= budget, $"{e.Products} products for a budget of {budget}");
                if (target is null) Assert.Equal(budget, e.Products);
                Assert.True(e.Probes >= 2, $"budget {budget}: {e.Probes} probes");
                Assert.True(e.StandardError > 0 && double.IsFinite(e.StandardError), $"budget {budget}: standard error {e.StandardError}");
            }
    }

    [Fact]
    public void HutchPlusPlusWithoutRoomForASketchIsHutchinsonAndASketchOfTheWholeSpaceIsExact()
    {
        var spectrum = Indefinite(12);
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 22);
        var tiny = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 3, RelativeStandardError = null });
        Assert.Equal("hutchinson", tiny.Method);
        Assert.Equal(3, tiny.Products);
        Assert.Equal(3, tiny.Probes);
        var whole = HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 30, SketchSize = 12 });
        Assert.Equal(24, whole.Products);
        Assert.Equal(spectrum.Sum(), whole.Trace, 9);
        Assert.Equal(0, whole.StandardError);
    }

    [Fact]
    public void AnOperatorThatDoesNotCountNeverReceivesMoreThanTheBudget()
    {
        using var dense = DenseOperator.WithSpectrum(Indefinite(60), seed: 23);
        var op = new PlainOperator(dense.Matrix);
        void Within(string what, long budget, Func<long> run)
        {
            op.Received = 0;
            long reported = run();
            Assert.True(op.Received <= budget, $"{what}: {op.Received} products for a budget of {budget}");
            Assert.Equal(op.Received, reported);
        }
        // Tolerances nothing reaches in 10 products: every estimator runs into its budget.
        Within("Lanczos", 10, () => Lanczos.Compute(op, new LanczosOptions { MaxProducts = 10, Tolerance = 1e-12 }).Products);
        Within("block Lanczos", 10, () => Lanczos.Compute(op, new LanczosOptions { K = 2, BlockSize = 3, MaxProducts = 10, Tolerance = 1e-12 }).Products);
        Within("Hutchinson", 10, () => Hutchinson.Estimate(op, new HutchinsonOptions { MaxProducts = 10, RelativeStandardError = 1e-12 }).Products);
        Within("Hutch++", 10, () => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { MaxProducts = 10, RelativeStandardError = 1e-12 }).Products);
        Within("power iteration", 10, () => PowerIteration.Compute(op, new PowerIterationOptions { MaxIterations = 9, Tolerance = 1e-15 }).Products);
        Within("SLQ", 10, () => StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 2, Steps = 5 }).Products);
        Within("analysis", 40, () => SpectrumAnalysis.Run(op, new SpectrumAnalysisOptions
        {
            Top = 1, Bottom = 1, Trace = true, Density = true, Tolerance = 1e-12, TraceRelativeError = 1e-12, MaxProducts = 10, DensityRuns = 2, DensitySteps = 5,
        }).Products);
        op.Received = 0;
        ExactHessian.Compute(op, blockSize: 7);
        Assert.Equal(60, op.Received);
    }

    [Fact]
    public void LanczosSaysWhenItsFloat32ProductsAreTooInaccurateForTheToleranceAndFloat64Converges()
    {
        var spectrum = Enumerable.Range(0, 300).Select(i => i < 3 ? 1.0 - 0.1 * i : 0.5 * Math.Sin(i)).ToArray();
        using var f64 = DenseOperator.WithSpectrum(spectrum, seed: 1);
        // Float32 products are accurate to float32's rounding, about 10⁻⁷ of ‖A‖: a tolerance of 10⁻⁸ is below what they can show.
        using var f32 = new DenseOperator(f64.Matrix.to(ScalarType.Float32));
        var options = new LanczosOptions { Tolerance = 1e-8 };
        var low = Lanczos.Compute(f32, options);
        Assert.False(low.Converged);
        Assert.Equal(StopReason.PrecisionFloor, low.StopReason);
        Assert.Matches(@"the float32 products are accurate only to about \d\.\de-[78]·‖A‖", low.StopMessage);
        Assert.EndsWith("compute in float64", low.StopMessage);
        Assert.True(low.Products < 100, $"{low.Products} products: the precision floor is found without spending the budget");
        var high = Lanczos.Compute(f64, options);
        Assert.True(high.Converged, high.StopMessage);
        Assert.Equal(StopReason.Converged, high.StopReason);
        Assert.Equal(1.0, high.Values[0], 10);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void LanczosVerifiesItsResidualsFromTheProductsItAlreadyMadeAndTheyEqualFreshProducts(int k)
    {
        // A repeated top eigenvalue, so that for k ≥ 2 the multiplicity probe finds the second copy and its vectors join.
        var spectrum = Enumerable.Range(0, 150).Select(i => i < 2 ? 5.0 : i < 4 ? 4.0 - 0.3 * i : Math.Cos(0.7 * i)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 6);
        var plain = new PlainOperator(op.Matrix);
        var verified = Lanczos.Compute(plain, new LanczosOptions { K = k, Tolerance = 1e-6, ReturnVectors = true, Seed = 2 });
        var unverified = Lanczos.Compute(op, new LanczosOptions { K = k, Tolerance = 1e-6, VerifyResiduals = false, Seed = 2 });
        Assert.True(verified.Converged, verified.StopMessage);
        Assert.True(verified.ResidualsVerified);
        // The check costs no product: exactly the products of the run without it, and the operator saw no more.
        Assert.Equal(unverified.Products, verified.Products);
        Assert.Equal(verified.Products, plain.Received);
        Assert.Equal(5.0, verified.Values[0], 9);
        // Each reported residual is ‖A y − θ y‖ recomputed here with a fresh product.
        var y = verified.Vectors!;
        var fresh = (op.Matrix.matmul(y.t()).t() - OwnedTensorRows(verified.Values) * y).norm(1).data<double>().ToArray();
        for (int i = 0; i < k; i++)
            Assert.True(Math.Abs(fresh[i] - verified.Residuals[i]) <= 1e-12 + 1e-6 * fresh[i], $"pair {i}: reported {verified.Residuals[i]:G4}, fresh {fresh[i]:G4}");
    }

    static Tensor OwnedTensorRows(double[] values) => Valley.Data.OwnedTensor.From(values).unsqueeze(1);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void TheMultiplicityProbeReusesTheGrownBasisAndItsKeptProductsGiveTheSameResidualsAsFreshProducts(int block)
    {
        // Runs long enough that the basis outgrows its first 32 rows per block row, and the probe for the repeated top
        // eigenvalue's second copy starts from that grown memory: a repeated top eigenvalue, the rest clustered below a small gap.
        var spectrum = Enumerable.Range(0, 400).Select(i => i < 2 ? 2.0 : i < 4 ? 2.0 - 0.05 * i : 1.7 * Math.Abs(Math.Sin(0.37 * i))).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 11);
        var plain = new PlainOperator(op.Matrix);
        var options = new LanczosOptions { K = 4, BlockSize = block, Tolerance = 1e-8, ReturnVectors = true, Seed = 5 };
        var r = Lanczos.Compute(plain, options);
        Assert.True(r.Converged, r.StopMessage);
        Assert.True(r.ResidualsVerified);
        Assert.True(r.Products > 2 * 32 * block + 10, $"{r.Products} products: the runs should outgrow the first buffer");
        // The residuals came from the kept products: every product the operator saw was a Lanczos step's (b per step).
        Assert.Equal(r.Iterations * (long)block, r.Products);
        Assert.Equal(r.Products, plain.Received);
        var exact = spectrum.OrderByDescending(x => x).Take(4).ToArray();
        for (int i = 0; i < 4; i++) Assert.Equal(exact[i], r.Values[i], 9);
        // The residuals from the kept products equal those of fresh products, pair by pair.
        var y = r.Vectors!;
        var fresh = (op.Matrix.matmul(y.t()).t() - OwnedTensorRows(r.Values) * y).norm(1).data<double>().ToArray();
        for (int i = 0; i < 4; i++)
            Assert.True(Math.Abs(fresh[i] - r.Residuals[i]) <= 1e-13 + 1e-6 * fresh[i], $"pair {i}: reported {r.Residuals[i]:G4}, fresh {fresh[i]:G4}");
        // Orthonormal vectors: the probe's basis, written over the main run's, stayed orthogonal to what was found.
        var gram = y.matmul(y.t()) - eye(4, dtype: ScalarType.Float64);
        Assert.True(gram.abs().max().ToDouble() < 1e-10);
        // Nothing left behind: the kept products, the shared basis and the runs' tensors are all disposed.
        var stats = TorchSharp.DisposeScopeManager.Statistics;
        long live = stats.ThreadTotalLiveCount;
        Lanczos.Compute(op, options with { ReturnVectors = false });
        Assert.Equal(live, stats.ThreadTotalLiveCount);
    }

    [Fact]
    public void LanczosSaysWhenTheBudgetRanOutOrTheSpaceHasFewerEigenpairsThanAskedFor()
    {
        var spectrum = Enumerable.Range(0, 200).Select(i => i < 190 ? i / 190.0 : 10 + 1e-4 * (i - 190)).ToArray();
        using var op = DenseOperator.WithSpectrum(spectrum, seed: 3);
        var r = Lanczos.Compute(op, new LanczosOptions { K = 3, MaxProducts = 12, Tolerance = 1e-10 });
        Assert.False(r.Converged);
        Assert.Equal(StopReason.BudgetExhausted, r.StopReason);
        Assert.Contains("the budget of 12 products ran out", r.StopMessage);
        Assert.True(r.Products <= 12);

        using var small = DenseOperator.WithSpectrum([1, 2, 3, 4, 5], seed: 4);
        var e = Lanczos.Compute(small, new LanczosOptions { K = 5, Tolerance = 1e-10, ReturnVectors = true });
        Assert.True(e.Converged, e.StopMessage);
        var locked = e.Vectors!.narrow(0, 0, 4);
        var rest = Lanczos.Compute(small, new LanczosOptions { K = 2, Locked = locked, Tolerance = 1e-10 });
        Assert.False(rest.Converged);
        Assert.Equal(StopReason.InvariantSubspace, rest.StopReason);
        Assert.Equal(1.0, rest.Values[0], 9);
    }

    [Fact]
    public void StopReasonsAreWrittenToJsonByName()
    {
        using var op = DenseOperator.WithSpectrum([1, 2, 3, 4, 5, 6], seed: 5);
        var r = Lanczos.Compute(op, new LanczosOptions { Tolerance = 1e-6 });
        var json = System.Text.Json.JsonDocument.Parse(Valley.IO.AtomicFile.ToJson(r)).RootElement;
        Assert.Equal("converged", json.GetProperty("stop_reason").GetString());
        Assert.StartsWith("every wanted pair", json.GetProperty("stop_message").GetString());
    }

    /// <summary>
    /// Every estimator takes progress and cancellation as its last two arguments: the reports arrive, and a token cancelled
    /// after the first report stops the estimator before its next block of products.
    /// </summary>
    [Fact]
    public void EveryEstimatorReportsProgressAndStopsWhenCancelled()
    {
        using var dense = DenseOperator.WithSpectrum(Indefinite(80), seed: 24);
        var runs = new (string Name, Action<IProgress<EstimatorProgress>, CancellationToken> Run)[]
        {
            ("lanczos", (p, ct) => Lanczos.Compute(dense, new LanczosOptions { K = 3, Tolerance = 1e-12 }, p, ct)),
            ("power iteration", (p, ct) => PowerIteration.Compute(dense, new PowerIterationOptions { TopN = 2, Tolerance = 1e-12 }, p, ct)),
            ("hutchinson", (p, ct) => Hutchinson.Estimate(dense, new HutchinsonOptions { RelativeStandardError = 1e-6, BlockSize = 1 }, p, ct)),
            ("hutch++", (p, ct) => HutchPlusPlus.Estimate(dense, new HutchPlusPlusOptions { RelativeStandardError = 1e-6 }, p, ct)),
            ("xtrace", (p, ct) => XTrace.Estimate(dense, new XTraceOptions { RelativeStandardError = 1e-6 }, p, ct)),
            ("slq", (p, ct) => StochasticLanczosQuadrature.Estimate(dense, new SpectralDensityOptions { Runs = 4, Steps = 30 }, p, ct)),
        };
        foreach (var (name, run) in runs)
        {
            using var cts = new CancellationTokenSource();
            int reports = 0;
            var progress = new SyncProgress<EstimatorProgress>(r => { reports++; Assert.True(r.Products <= r.MaxProducts, $"{name}: {r.Products} > {r.MaxProducts}"); cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() => run(progress, cts.Token));
            Assert.True(reports == 1, $"{name}: {reports} reports before stopping");
        }
    }
}
