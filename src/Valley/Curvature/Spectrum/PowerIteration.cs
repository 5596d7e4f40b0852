using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>Options of <see cref="PowerIteration"/>; defaults are PyHessian's (<c>eigenvalues(maxIter=100, tol=1e-3, top_n=1)</c>).</summary>
public sealed record PowerIterationOptions
{
    public int TopN { get; init; } = 1;
    public int MaxIterations { get; init; } = 100;
    public double Tolerance { get; init; } = 1e-3;
    public long Seed { get; init; }
    public bool VerifyResiduals { get; init; } = true;
    public IProgress<EstimatorProgress>? Progress { get; init; }
    public CancellationToken Cancellation { get; init; }
}

/// <summary>
/// Power iteration with deflation by orthogonalization, with PyHessian's semantics, kept for comparison:
/// Gaussian start; each iteration orthonormalizes v against the eigenvectors already found, takes
/// θ = vᵀHv and v ← Hv/‖Hv‖, and stops when |θ_prev − θ| / (|θ_prev| + 1e-6) &lt; tol (returning θ_prev, as PyHessian does).
/// It converges to the largest-magnitude eigenvalue, and slowly when the gap is small; <see cref="Lanczos"/> is the tool to use.
/// </summary>
public static class PowerIteration
{
    public static Eigenpairs Compute(ICurvatureOperator op, PowerIterationOptions? options = null)
    {
        var o = options ?? new PowerIterationOptions();
        if (o.TopN < 1 || o.TopN > op.Size) throw new ValleyException($"power iteration: top_n must be in [1, {op.Size}], got {o.TopN}");
        if (o.MaxIterations < 1) throw new ValleyException($"power iteration: max iterations must be positive, got {o.MaxIterations}");
        var sw = Stopwatch.StartNew();
        long start = op.Products;
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
                o.Cancellation.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                foreach (var u in vectors) v = v - u.dot(v) * u;
                v = v / v.norm();
                var hv = SpectrumMath.Apply(op, v.unsqueeze(1), "power iteration").squeeze(1);
                double tmp = hv.dot(v).ToDouble();
                v = (hv / hv.norm()).MoveToOuterDisposeScope();
                iterations++;
                double? change = eig is null ? null : Math.Abs(eig.Value - tmp) / (Math.Abs(eig.Value) + 1e-6);
                o.Progress?.Report(new EstimatorProgress($"power iteration {e + 1}", op.Products - start, (long)o.TopN * o.MaxIterations, change));
                if (eig is null) eig = tmp;
                else if (change < o.Tolerance) { converged = true; break; }
                else eig = tmp;
            }
            allConverged &= converged;
            values.Add(eig!.Value);
            vectors.Add(v.DetachFromDisposeScope());
        }
        long products = op.Products - start;
        var rows = stack(vectors);
        var residuals = o.VerifyResiduals ? Lanczos.ResidualNorms(op, values.ToArray(), rows) : values.Select(_ => double.NaN).ToArray();
        return new Eigenpairs
        {
            Method = "power-iteration (PyHessian)",
            Target = EigenTarget.LargestMagnitude,
            Values = values.ToArray(),
            Residuals = residuals,
            ResidualsVerified = o.VerifyResiduals,
            Products = products,
            Iterations = iterations,
            Converged = allConverged,
            Tolerance = o.Tolerance,
            Seconds = sw.Elapsed.TotalSeconds,
            Vectors = rows,
        };
    }
}
