using System.Diagnostics;
using static System.FormattableString;
using MathNet.Numerics.LinearAlgebra;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Options of <see cref="Lanczos"/>. Convergence as in docs/design.md §4: every wanted Ritz pair has
/// ‖Av − θv‖ ≤ tol·max(|θ|, ε·‖A‖).
/// </summary>
public sealed record LanczosOptions
{
    /// <summary>Number of eigenpairs wanted. Default 1.</summary>
    public int K { get; init; } = 1;

    /// <summary>Which end of the spectrum. Default the largest eigenvalues.</summary>
    public EigenTarget Target { get; init; } = EigenTarget.Largest;

    /// <summary>Relative residual tolerance, in (0, 1). Default 1e-3, which gives eigenvalues to about 1e-6 relative (the error is about residual²/gap).</summary>
    public double Tolerance { get; init; } = 1e-3;

    /// <summary>ε of the criterion, relative to the largest |Ritz value| (so that eigenvalues near zero can converge). Default 1e-6.</summary>
    public double ZeroThreshold { get; init; } = 1e-6;

    /// <summary>
    /// Budget of operator products: every product Lanczos asks for, the multiplicity check and the final verification of
    /// the residuals included. Default 1000.
    /// </summary>
    public long MaxProducts { get; init; } = 1000;

    /// <summary>Block size b: b vectors per step, applied as one block product (shared forward passes for the Hessian). Default 1, classic Lanczos.</summary>
    public int BlockSize { get; init; } = 1;

    /// <summary>Seed of the random start block.</summary>
    public long Seed { get; init; }

    /// <summary>Return the eigenvectors in <see cref="Eigenpairs.Vectors"/>.</summary>
    public bool ReturnVectors { get; init; }

    /// <summary>
    /// Recompute each residual ‖A y − θ y‖ at the end from operator products rather than Lanczos' estimate. A y comes from
    /// the products Lanczos already made (kept as the operator returned them: A Q s = W s) when they and the basis fit in half the memory, otherwise
    /// from K more products of the budget. Default true.
    /// </summary>
    public bool VerifyResiduals { get; init; } = true;

    /// <summary>
    /// After convergence, run Lanczos again orthogonal to the found vectors to catch copies of repeated eigenvalues,
    /// which a single Krylov space cannot contain. Null (default): when K ≥ 2.
    /// </summary>
    public bool? CheckMultiplicity { get; init; }

    /// <summary>Vectors (rows [l, n]) the Krylov space is kept orthogonal to (deflation).</summary>
    public Tensor? Locked { get; init; }
}

/// <summary>
/// Extreme eigenpairs by (block) Lanczos with full reorthogonalization (Lanczos 1950; block form Golub and Underwood 1977):
/// the Krylov basis and the tridiagonal bookkeeping are float64 whatever the operator's dtype (docs/design.md §3, §4), and
/// every new block is orthogonalized against the whole basis by classical Gram-Schmidt with the DGKS criterion
/// (<see cref="Reorthogonalization"/>). Ritz pairs are checked against the tolerance with Lanczos' residual estimate
/// ‖B_m s_last‖ and, at the end, verified from operator products (the kept products of the basis, or explicit ones);
/// <see cref="Eigenpairs.StopReason"/> says why it stopped.
/// </summary>
public static class Lanczos
{
    /// <summary>
    /// Up to this size m of the tridiagonal matrix T, convergence is checked after every step; beyond it, every
    /// <see cref="CheckEvery"/>-th step. A check is a dense eigendecomposition of T, O(m³): MathNet's took milliseconds at
    /// m = 100 but about 0.1 s at m = 200 and seconds at m = 1,000 on the 2-core development machine, more than a small
    /// model's Hessian-vector product, so checking every step would dominate long runs. Checking every fifth step cuts that
    /// fivefold and overshoots convergence by at most (CheckEvery − 1)·b products. Both are fixed numbers, not timings, so
    /// that every MPI rank checks at the same steps and asks for the same products.
    /// </summary>
    const int CheckEveryStepUpTo = 200;

    /// <summary>See <see cref="CheckEveryStepUpTo"/>.</summary>
    const int CheckEvery = 5;

    /// <summary>A Ritz basis whose vectors are off unit norm or orthogonality by more than this has lost orthogonality.</summary>
    const double OrthogonalityLoss = 1e-8;

    /// <summary>The k wanted eigenpairs of a symmetric operator.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="LanczosOptions"/>).</exception>
    public static Eigenpairs Compute(ICurvatureOperator op, LanczosOptions? options = null, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        var o = options ?? new LanczosOptions();
        long n = op.Size;
        Check.AtLeast(o.K, 1, nameof(o.K));
        if (o.K > n) throw Check.OutOfRange(nameof(o.K), o.K, $"must not exceed the operator's size ({n})");
        Check.Between(o.Tolerance, 0, 1, nameof(o.Tolerance));
        Check.NonNegativeFinite(o.ZeroThreshold, nameof(o.ZeroThreshold));
        Check.AtLeast(o.BlockSize, 1, nameof(o.BlockSize));
        bool check = o.CheckMultiplicity ?? o.K >= 2;
        Check.AtLeast(o.MaxProducts, MinimumProducts(n, o), nameof(o.MaxProducts));
        // The basis grows to at most min(n, budget) rows of n float64 values; it doubles as it grows, so the old and the new
        // one coexist for a moment. Refused up front when that cannot fit, instead of failing after hours.
        double rows = Math.Min(n, (double)o.MaxProducts + o.K + o.BlockSize);
        double basisBytes = (Math.Min(n, 2 * rows) + rows) * n * sizeof(double);
        MachineLimits.EnsureMemory(basisBytes, $"Lanczos with a budget of {o.MaxProducts} products on {n} parameters");
        // With the products kept (when they and the basis fit in half the memory), A y = W s for every Ritz vector
        // y = Q s, so the residuals are recomputed from the products already made instead of k more: one fewer product
        // for the top eigenvalue, k fewer for the top k.
        // Not when the residuals are neither verified nor recomputed, and not for an objective in train mode: there a
        // product may differ between calls (dropout masks in batches beyond the graph cache), which only fresh products show.
        bool keepImages = (o.VerifyResiduals || check) && op is not ObjectiveOperator { Objective.Options.TrainMode: true }
                          && 2 * basisBytes <= MachineLimits.MemoryBytes / 2;
        // The k residual products at the end come out of the budget: kept back from the iteration when they may be needed
        // (without kept products, or when the products' rounding is too close to the tolerance for them to show it).
        long reserve = o.VerifyResiduals || check ? o.K : 0;
        var sw = Stopwatch.StartNew();
        var budget = new ProductBudget(op, o.MaxProducts, "Lanczos");

        // Intermediates (cat, index_select) live in this scope; the runs' own results are detached and disposed below.
        using var scope = NewDisposeScope();
        var runTensors = new List<Tensor>();
        // One basis for all runs of this computation: the multiplicity check's runs reuse the first run's memory, already
        // touched, instead of a fresh buffer that faults in page by page.
        using var storage = new KrylovStorage();
        var result = Run(op, o, budget, reserve, keepImages, storage, progress, ct);
        runTensors.Add(result.Vectors);
        if (result.Images is { } ri) runTensors.Add(ri);
        var values = result.Values.ToList();
        var vectors = result.Vectors;
        var images = result.Images;
        int iterations = result.Iterations;
        double orthogonality = result.OrthogonalityDefect;
        bool found = result.Stop != RunStop.Budget && values.Count == o.K;
        if (check && found && o.K < n - (o.Locked?.shape[0] ?? 0))
        {
            // Look for a missed copy of a repeated eigenvalue: the best eigenvalue orthogonal to what was found.
            for (int round = 0; round < o.K; round++)
            {
                long left = budget.Left - reserve;
                var locked = o.Locked is null ? vectors : cat([o.Locked, vectors], 0);
                if (locked.shape[0] >= n || left < Math.Max(2, Math.Min(o.BlockSize, n - locked.shape[0]))) break;
                var probe = Run(op, o with { K = 1, Locked = locked, Seed = o.Seed + 1000 + round }, budget, reserve, keepImages, storage, progress, ct);
                runTensors.Add(probe.Vectors);
                if (probe.Images is { } pi) runTensors.Add(pi);
                iterations += probe.Iterations;
                orthogonality = Math.Max(orthogonality, probe.OrthogonalityDefect);
                double kth = values[^1];
                double margin = o.Tolerance * Math.Max(Math.Abs(kth), 1e-12) + probe.Residuals[0];
                if (probe.Stop == RunStop.Budget || !SpectrumMath.Better(probe.Values[0], kth, o.Target, margin)) break;
                values.Add(probe.Values[0]);
                vectors = cat([vectors, probe.Vectors], 0);
                var order = SpectrumMath.Wanted(values.ToArray(), o.K, o.Target);
                values = order.Select(i => values[i]).ToList();
                var index = Data.OwnedTensor.From(order.Select(i => (long)i).ToArray());
                vectors = vectors.index_select(0, index);
                images = images is not null && probe.Images is not null ? cat([images, probe.Images], 0).index_select(0, index) : null;
            }
        }

        double[] residuals = result.Residuals;
        bool verified = false;
        // Residuals from kept products cannot show the products' own rounding (Lanczos treated them as exact): they are used
        // only when a bound on that rounding, 10 unit roundoffs of ‖A‖, lies an order of magnitude below what the tolerance
        // allows for every pair; otherwise k explicit products recompute the residuals (docs/design.md §4).
        double normGuess = Math.Max(result.NormEstimate, values.Select(Math.Abs).DefaultIfEmpty(0).Max());
        double rounding = 10 * UnitRoundoff(op.DType) * normGuess;
        if (images is not null && values.Any(v => rounding > 0.1 * o.Tolerance * Math.Max(Math.Abs(v), o.ZeroThreshold * normGuess)))
            images = null;
        double[] Recomputed() => images is not null ? SpectrumMath.ResidualNorms(images, values.ToArray(), vectors)
                                                    : SpectrumMath.ResidualNorms(budget, values.ToArray(), vectors);
        if (o.VerifyResiduals)
        {
            residuals = Recomputed();
            verified = true;
        }
        else if (values.Count != result.Values.Length || !values.SequenceEqual(result.Values))
            residuals = Recomputed();
        double normEst = Math.Max(result.NormEstimate, values.Max(Math.Abs));
        double Relative(int i) => residuals[i] / Math.Max(Math.Max(Math.Abs(values[i]), o.ZeroThreshold * normEst), 1e-300);
        // A verified residual may exceed the estimate by the rounding of the products: half the tolerance again is allowed.
        bool converged = values.Count == o.K && (verified ? Enumerable.Range(0, values.Count).All(i => Relative(i) <= 1.5 * o.Tolerance) : found);
        double worst = Enumerable.Range(0, values.Count).Select(Relative).DefaultIfEmpty(double.NaN).Max();
        var (reason, message) = Explain(op, o, result, converged, verified, worst, residuals.DefaultIfEmpty(0).Max() / Math.Max(normEst, 1e-300),
            orthogonality, n - (o.Locked?.shape[0] ?? 0), values.Count);
        var returned = o.ReturnVectors ? vectors.clone().DetachFromDisposeScope() : null;
        foreach (var t in runTensors) t.Dispose();
        return new Eigenpairs
        {
            Method = o.BlockSize == 1 ? "lanczos" : $"block-lanczos(b={o.BlockSize})",
            Target = o.Target,
            Values = values.ToArray(),
            Residuals = residuals,
            ResidualsVerified = verified,
            Products = budget.Used,
            Iterations = iterations,
            Converged = converged,
            StopReason = reason,
            StopMessage = message,
            Tolerance = o.Tolerance,
            Seconds = sw.Elapsed.TotalSeconds,
            Vectors = returned,
        };
    }

    /// <summary>Unit roundoff u of a floating-point dtype (half the machine epsilon).</summary>
    internal static double UnitRoundoff(ScalarType t) => t switch
    {
        ScalarType.Float64 => 1.1e-16,
        ScalarType.Float32 => 6.0e-8,
        ScalarType.BFloat16 => 3.9e-3,
        _ => 4.9e-4,
    };

    /// <summary>The smallest budget <see cref="Compute"/> accepts: a first step long enough for k Ritz values, and the k residual products.</summary>
    internal static long MinimumProducts(long n, LanczosOptions o) =>
        Math.Min(n, Math.Max(o.K + 1, o.BlockSize)) + (o.VerifyResiduals || (o.CheckMultiplicity ?? o.K >= 2) ? o.K : 0);

    /// <summary>Why Lanczos stopped, in one line with the numbers behind it.</summary>
    /// <param name="worst">The worst relative residual of the returned pairs (verified when <paramref name="verified"/>).</param>
    /// <param name="floor">The largest residual relative to ‖A‖: when the estimate converged but this did not, the accuracy of the products.</param>
    static (StopReason, string) Explain(ICurvatureOperator op, LanczosOptions o, RunResult run, bool converged, bool verified, double worst, double floor,
        double orthogonality, long space, int found)
    {
        double tol = o.Tolerance;
        if (converged)
            return (StopReason.Converged, Invariant($"every wanted pair has a {(verified ? "verified" : "estimated")} relative residual of at most {worst:0.0e+0} (tolerance {tol:G3})") +
                                          (run.Stop == RunStop.Exhausted ? Invariant($"; the Krylov space spans all {space} directions, so the Ritz values are the eigenvalues") : ""));
        if (found < o.K && run.Stop == RunStop.Exhausted)
            return (StopReason.InvariantSubspace, Invariant($"the Krylov space became invariant with {found} eigenpairs, fewer than the {o.K} asked for: ") +
                                                  Invariant($"only {space} directions are orthogonal to the locked vectors"));
        if (run.Stop == RunStop.Budget)
            return (StopReason.BudgetExhausted, Invariant($"the budget of {o.MaxProducts} products ran out with the worst relative residual at {worst:0.0e+0} ") +
                                                Invariant($"(tolerance {tol:G3}): raise MaxProducts or loosen Tolerance"));
        if (orthogonality > OrthogonalityLoss)
            return (StopReason.LossOfOrthogonality, Invariant($"the Lanczos basis lost orthogonality (Ritz vectors off by {orthogonality:0.0e+0}), so its residual estimates ") +
                                                    Invariant($"were wrong: the verified relative residual is {worst:0.0e+0} (tolerance {tol:G3})"));
        bool lowPrecision = op.DType is ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16;
        string dtype = op.DType.ToString().ToLowerInvariant();
        return (StopReason.PrecisionFloor, Invariant($"Lanczos' residual estimate {run.WorstEstimate:0.0e+0} is within the tolerance {tol:G3}, but recomputed from products ") +
                                           Invariant($"the residual is {worst:0.0e+0}·|θ|: the {dtype} products are accurate only to about {floor:0.0e+0}·‖A‖") +
                                           (lowPrecision ? "; compute in float64" : "; the operator's products are not that accurate (or not symmetric)"));
    }

    enum RunStop { Converged, Exhausted, Budget }

    /// <summary>One Lanczos run: values best-first, their estimated residuals, Ritz vectors (rows, float64), and why it stopped.</summary>
    /// <param name="Images">A times each Ritz vector (rows), from the kept products; null when they were not kept.</param>
    readonly record struct RunResult(double[] Values, double[] Residuals, Tensor Vectors, Tensor? Images, RunStop Stop, int Iterations, double NormEstimate,
        double WorstEstimate, double OrthogonalityDefect);

    /// <param name="storage">The basis's memory, shared by the runs of one computation (<see cref="KrylovStorage"/>).</param>
    static RunResult Run(ICurvatureOperator op, LanczosOptions o, ProductBudget budget, long reserve, bool keepImages, KrylovStorage storage,
        IProgress<EstimatorProgress>? progress, CancellationToken ct)
    {
        long n = op.Size;
        long lockedCount = o.Locked?.shape[0] ?? 0;
        long space = n - lockedCount;
        int b = (int)Math.Min(o.BlockSize, space);
        var gen = new Generator((ulong)o.Seed);
        using var proc = new BlockLanczosProcess(budget, n, op.Device, b, o.Locked, gen, keepImages, storage);
        // Drawn in float32 and widened: LibTorch's float32 normals are vectorized and its float64 ones are not (0.6 against
        // 2.4 ms at n = 109,386), and a start vector needs no more precision than its direction. Over the start seeds the
        // products needed are unchanged (`lanczos-seeds`, docs/benchmarks.md session 13).
        proc.Start(randn([b, n], dtype: ScalarType.Float32, generator: gen));
        double[] theta = [];
        Matrix<double>? S = null;
        int[] wanted = [];
        double[] res = [];
        double worst = double.PositiveInfinity;
        RunStop stop;
        int iter = 0;
        while (true)
        {
            ct.ThrowIfCancellationRequested();
            proc.Step();
            iter++;
            int m = proc.TridiagonalSize;
            bool exhausted = m >= space;
            bool outOfBudget = budget.Left - reserve < b;
            if (m < o.K && !exhausted && !outOfBudget) continue;
            if (m > CheckEveryStepUpTo && iter % CheckEvery != 0 && !exhausted && !outOfBudget) continue;
            (theta, S) = SpectrumMath.SymmetricEigen(proc.Tridiagonal());
            wanted = SpectrumMath.Wanted(theta, Math.Min(o.K, m), o.Target);
            var lastB = exhausted ? null : proc.LastCoupling();
            int last = proc.LastBlockSize;
            double normEst = theta.Max(Math.Abs);
            // Lanczos' residual estimate: ‖A y − θ y‖ = ‖B_m s_last‖ for the Ritz vector y = Q s (exact once the space is invariant).
            res = wanted.Select(i => lastB is null ? 0.0 : (lastB * S.Column(i).SubVector(m - last, last)).L2Norm()).ToArray();
            worst = wanted.Select((i, j) => res[j] / Math.Max(Math.Abs(theta[i]), o.ZeroThreshold * normEst + 1e-300)).DefaultIfEmpty(double.PositiveInfinity).Max();
            progress?.Report(new EstimatorProgress("lanczos", budget.Used, budget.Max, worst));
            if (exhausted) { stop = RunStop.Exhausted; break; }
            if (wanted.Length == o.K && worst <= o.Tolerance) { stop = RunStop.Converged; break; }
            if (outOfBudget) { stop = RunStop.Budget; break; }
        }
        var basis = proc.Basis(proc.TridiagonalSize);
        var coeffs = Matrix<double>.Build.Dense(proc.TridiagonalSize, wanted.Length, (r, c) => S![r, wanted[c]]);
        var coefficients = Data.OwnedTensor.From(coeffs.ToColumnMajorArray(), wanted.Length, proc.TridiagonalSize).to(basis.device);
        var raw = coefficients.matmul(basis);
        // The coefficient vectors are orthonormal, so the Ritz vectors are too unless the basis lost orthogonality.
        var norms = raw.norm(1, keepdim: true);
        var vectors = raw / norms;
        var gram = vectors.matmul(vectors.t()) - eye(wanted.Length, dtype: ScalarType.Float64, device: vectors.device);
        double defect = Math.Max((norms - 1).abs().max().ToDouble(), gram.abs().max().ToDouble());
        var images = proc.ImagesOf(coefficients) is { } w ? (w / norms).DetachFromDisposeScope() : null;
        return new RunResult(wanted.Select(i => theta[i]).ToArray(), res, vectors.DetachFromDisposeScope(), images, stop, iter, theta.Max(Math.Abs), worst, defect);
    }
}
