using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Curvature;

/// <summary>The one-call entry <see cref="Hessian.Of(nn.Module{Tensor, Tensor}, LossFunction, Dataset, ObjectiveOptions?)"/> against a closed form.</summary>
public class HessianEntryTests
{
    public HessianEntryTests() => TestUtil.Init();

    [Fact]
    public void TopEigenvaluesTraceAndDensityOfAQuadraticLossAreThoseOfItsMatrix()
    {
        // L(w) = ½ wᵀAw + bᵀw has Hessian A = Q diag(λ) Qᵀ, with a known spectrum.
        int n = 40;
        var spectrum = Enumerable.Range(0, n).Select(i => i < 3 ? 20.0 - 3 * i : Math.Cos(i) - 0.2).ToArray();
        using var dense = DenseOperator.WithSpectrum(spectrum, seed: 8);
        var g = new Generator(9);
        var model = new QuadraticModule(dense.Matrix, randn([n], dtype: ScalarType.Float64, generator: g), randn([n], dtype: ScalarType.Float64, generator: g));
        using var data = new Dataset("dummy", zeros([6, 1], dtype: ScalarType.Float64), zeros([6], dtype: ScalarType.Float64), TaskKind.Regression, 1);

        using var h = Hessian.Of(model, QuadraticModule.MeanOutput, data, new ObjectiveOptions { BatchSize = 4 });
        Assert.Equal(n, h.Size);
        var top = h.TopEigenvalues(3);
        Assert.True(top.Converged, top.StopMessage);
        // Each Ritz value at most its eigenvalue (interlacing) and within r²/(θ − λ_next) below it (Kato–Temple), r its
        // verified residual and λ_next the largest eigenvalue below λ_i.
        for (int i = 0; i < 3; i++)
        {
            double next = spectrum.Where(x => x < spectrum[i]).Max();
            Assert.InRange(top.Values[i], spectrum[i] - (top.Residuals[i] * top.Residuals[i] / (top.Values[i] - next) + 1e-12), spectrum[i] + 1e-12);
        }
        Assert.Null(top.Vectors);
        var pairs = h.TopEigenpairs(1);
        var v = pairs.Vectors![0];
        double residual = (dense.Matrix.matmul(v) - pairs.Values[0] * v).norm().ToDouble();
        Assert.Equal(pairs.Residuals[0], residual, 9);
        Assert.True(residual <= 1.5e-3 * 20, $"residual {residual}");
        // λmin of a cluster (cos i − 0.2 near −1.2): to about tol·|λ| at the default tolerance of 1e-3.
        var bottom = h.BottomEigenvalues(1);
        Assert.True(bottom.Converged, bottom.StopMessage);
        Assert.Equal(spectrum.Min(), bottom.Values[0], 1.5e-3 * 1.2);

        double exact = spectrum.Sum();
        foreach (var method in new[] { TraceMethod.HutchPlusPlus, TraceMethod.Hutchinson, TraceMethod.XTrace })
        {
            var tr = h.Trace(method);
            Assert.Equal(method switch { TraceMethod.HutchPlusPlus => "hutch++", TraceMethod.XTrace => "xtrace", _ => "hutchinson" }, tr.Method);
            Assert.True(Math.Abs(tr.Trace - exact) <= 4 * tr.StandardError, $"{method}: {tr.Trace} ± {tr.StandardError}, exact {exact}");
        }
        // A sketch of the whole space makes Hutch++ exact.
        Assert.Equal(exact, h.Trace(new HutchPlusPlusOptions { SketchSize = n }).Trace, 8);

        var density = h.Density(new SpectralDensityOptions { Runs = 4, Steps = 40 });
        Assert.Equal(20.0, density.LambdaMax, 6);
        Assert.True(Math.Abs(density.Trace - exact) <= 4 * density.TraceStandardError, $"density trace {density.Trace} ± {density.TraceStandardError}, exact {exact}");
        Assert.Equal(exact, h.Exact().Trace(), 9);
    }

    [Fact]
    public void AHessianOfAnObjectiveLeavesTheObjectiveToItsOwner()
    {
        var model = new QuadraticModule(eye(3, dtype: ScalarType.Float64) * 2, zeros(3, dtype: ScalarType.Float64), ones(3, dtype: ScalarType.Float64));
        using var data = new Dataset("dummy", zeros([2, 1], dtype: ScalarType.Float64), zeros([2], dtype: ScalarType.Float64), TaskKind.Regression, 1);
        using var obj = new Objective(model, QuadraticModule.MeanOutput, data);
        using (var h = Hessian.Of(obj)) Assert.Equal(2.0, h.TopEigenvalues().Values[0], 9);
        Assert.Equal(3.0, obj.Value(), 9); // ½ wᵀ(2I)w at w = 1: still usable after the Hessian is disposed
    }
}
