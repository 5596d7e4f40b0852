using System.Diagnostics;
using static System.FormattableString;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Options of <see cref="PowerIteration"/>; defaults are PyHessian's (<c>eigenvalues(maxIter=100, tol=1e-3, top_n=1)</c>).</summary>
public sealed record PowerIterationOptions
{
    /// <summary>Number of eigenvalues, found one after another by deflation. Default 1.</summary>
    public int TopN { get; init; } = 1;

    /// <summary>Iterations per eigenvalue (one product each). Default 100.</summary>
    public int MaxIterations { get; init; } = 100;

    /// <summary>Stop when the eigenvalue changes by less than this, relatively, between iterations. Default 1e-3.</summary>
    public double Tolerance { get; init; } = 1e-3;

    /// <summary>Seed of the random start vectors.</summary>
    public long Seed { get; init; }

    /// <summary>Recompute each residual ‖Av − θv‖ with a product at the end (TopN more products). Default true.</summary>
    public bool VerifyResiduals { get; init; } = true;
}

/// <summary>
/// Power iteration with deflation by orthogonalization, with PyHessian's semantics (Yao, Gholami, Keutzer, Mahoney 2020),
/// kept for comparison: Gaussian start; each iteration orthonormalizes v against the eigenvectors already found, takes
/// θ = vᵀHv and v ← Hv/‖Hv‖, and stops when |θ_prev − θ| / (|θ_prev| + 1e-6) &lt; tol (returning θ_prev, as PyHessian does).
/// It converges to the largest-magnitude eigenvalue, and slowly when the gap is small; <see cref="Lanczos"/> is the tool to use.
/// </summary>
public static class PowerIteration
{
    /// <summary>The TopN largest-magnitude eigenvalues and their vectors.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="PowerIterationOptions"/>).</exception>
    public static Eigenpairs Compute(ICurvatureOperator op, PowerIterationOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new PowerIterationOptions();
        Check.AtLeast(o.TopN, 1, nameof(o.TopN));
        if (o.TopN > op.Size) throw Check.OutOfRange(nameof(o.TopN), o.TopN, $"must not exceed the operator's size ({op.Size})");
        Check.AtLeast(o.MaxIterations, 1, nameof(o.MaxIterations));
        Check.PositiveFinite(o.Tolerance, nameof(o.Tolerance));
        var sw = Stopwatch.StartNew();
        var budget = new ProductBudget(op, (long)o.TopN * o.MaxIterations + (o.VerifyResiduals ? o.TopN : 0), "power iteration");
        var gen = new Generator((ulong)o.Seed);
        var values = new List<double>();
        var vectors = new List<Tensor>();
        int iterations = 0;
        bool allConverged = true;
        for (int e = 0; e < o.TopN; e++)
        {
            var v = randn(op.Size, dtype: ScalarType.Float64, generator: gen).to(op.Device);
            v = v / v.norm();
            double? eig = null;
            bool converged = false;
            for (int it = 0; it < o.MaxIterations; it++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                foreach (var u in vectors) v = v - u.dot(v) * u;
                v = v / v.norm();
                var hv = budget.Apply(v.unsqueeze(1)).squeeze(1);
                double tmp = hv.dot(v).ToDouble();
                v = (hv / hv.norm()).MoveToOuterDisposeScope();
                iterations++;
                double? change = eig is null ? null : Math.Abs(eig.Value - tmp) / (Math.Abs(eig.Value) + 1e-6);
                progress?.Report(new EstimatorProgress($"power iteration {e + 1}", budget.Used, budget.Max, change));
                if (eig is null) eig = tmp;
                else if (change < o.Tolerance) { converged = true; break; }
                else eig = tmp;
            }
            allConverged &= converged;
            values.Add(eig!.Value);
            vectors.Add(v.DetachFromDisposeScope());
        }
        var rows = stack(vectors);
        var residuals = o.VerifyResiduals ? SpectrumMath.ResidualNorms(budget, values.ToArray(), rows) : values.Select(_ => double.NaN).ToArray();
        return new Eigenpairs
        {
            Method = "power-iteration (PyHessian)",
            Target = EigenTarget.LargestMagnitude,
            Values = values.ToArray(),
            Residuals = residuals,
            ResidualsVerified = o.VerifyResiduals,
            Products = budget.Used,
            Iterations = iterations,
            Converged = allConverged,
            StopReason = allConverged ? StopReason.Converged : StopReason.BudgetExhausted,
            StopMessage = allConverged
                ? Invariant($"every eigenvalue changed by less than {o.Tolerance:G3} (relative) between two iterations")
                : Invariant($"an eigenvalue still changed by more than {o.Tolerance:G3} (relative) after MaxIterations = {o.MaxIterations} iterations"),
            Tolerance = o.Tolerance,
            Seconds = sw.Elapsed.TotalSeconds,
            Vectors = rows,
        };
    }
}
