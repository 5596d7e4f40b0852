using Valley.Distributed;
using MathNet.Numerics.LinearAlgebra;
using MathNet.Numerics.Optimization;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Keskar et al. (2017) ε-sharpness (DESIGN.md §5.1): φ(ε, A) = 100 · (max_{y∈C_ε} L(w + Ay) − L(w)) / (1 + L(w)),
/// C_ε = { y : |y_i| ≤ ε (|(A⁺w)_i| + 1) }. Full space (A = I): projected sign-gradient ascent in the box, <see cref="Steps"/>
/// steps of size <see cref="StepFraction"/> of the box half-width, halved at 50% and 75% of the steps, starting at y = 0; the
/// best point seen counts; the ascent starts at a seeded random point within a tenth of the box (at a minimum the gradient at
/// y = 0 vanishes). Random subspace (A ∈ R^{n×p}, standard normal, p = 100): L-BFGS-B (MathNet) for
/// <see cref="LbfgsIterations"/> iterations, as in the paper.
/// </summary>
public sealed record KeskarOptions
{
    public double Epsilon { get; init; } = 1e-3;
    /// <summary>Null: full space (A = I). Otherwise the dimension p of a random subspace (paper: 100).</summary>
    public int? SubspaceDimension { get; init; }
    public int Steps { get; init; } = 20;
    public double StepFraction { get; init; } = 0.25;
    public int LbfgsIterations { get; init; } = 10;
    public long Seed { get; init; }
}

public static class KeskarSharpness
{
    public static SharpnessResult Compute(Objective objective, KeskarOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new KeskarOptions();
        if (!(o.Epsilon > 0) || !double.IsFinite(o.Epsilon)) throw new ValleyException($"--epsilon: must be a positive finite number, got {o.Epsilon}");
        if (o.Steps < 1) throw new ValleyException($"--steps: must be at least 1, got {o.Steps}");
        using var probe = new PerturbationProbe(objective);
        using var scope = NewDisposeScope();
        double l0 = probe.EvaluateAt(null, ct: ct).Loss;
        double best = l0;
        Tensor bestDelta = zeros_like(probe.Origin);
        if (o.SubspaceDimension is null)
        {
            var half = o.Epsilon * (probe.Origin.abs() + 1);
            // Start inside the box near 0, not at 0: at a minimum the gradient vanishes and sign ascent could not move.
            var y = (rand(probe.Origin.shape, dtype: ScalarType.Float64, generator: new Generator((ulong)o.Seed)) * 2 - 1) * 0.1 * half;
            for (int k = 0; k < o.Steps; k++)
            {
                var (l, g) = probe.GradientAt(y, ct);
                if (l > best) { best = l; bestDelta = y.clone(); }
                double alpha = o.StepFraction * (k >= 0.75 * o.Steps ? 0.25 : k >= 0.5 * o.Steps ? 0.5 : 1);
                y = minimum(maximum(y + alpha * half * g.sign(), -half), half);
            }
            double last = probe.EvaluateAt(y, ct: ct).Loss;
            if (last > best) { best = last; bestDelta = y; }
        }
        else
        {
            int p = o.SubspaceDimension.Value;
            if (p < 1 || p > probe.Origin.shape[0]) throw new ValleyException($"--subspace: must be between 1 and the number of parameters, got {p}");
            var A = randn([probe.Origin.shape[0], p], dtype: ScalarType.Float64, generator: new Generator((ulong)o.Seed));
            var Apinv = linalg.pinv(A);
            var half = (o.Epsilon * (Apinv.matmul(probe.Origin).abs() + 1)).data<double>().ToArray();
            var lower = Vector<double>.Build.DenseOfArray(half.Select(h => -h).ToArray());
            var upper = Vector<double>.Build.DenseOfArray(half);
            // Minimize −L(w + A y) over the box (L-BFGS-B); the best point evaluated counts whatever the minimizer reports.
            var f = ObjectiveFunction.Gradient(yv =>
            {
                using var s = NewDisposeScope();
                var delta = A.matmul(OwnedTensor.From(yv.ToArray()));
                var (l, g) = probe.GradientAt(delta, ct);
                if (l > best) { best = l; bestDelta.Dispose(); bestDelta = delta.MoveToOuterDisposeScope(); }
                return (-l, Vector<double>.Build.DenseOfArray(A.t().matmul(g).neg().data<double>().ToArray()));
            });
            try { new BfgsBMinimizer(1e-12, 1e-12, 1e-12, o.LbfgsIterations).FindMinimum(f, lower, upper, Vector<double>.Build.Dense(p)); }
            catch (MaximumIterationsException) { /* the paper runs a fixed number of iterations */ }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or EvaluationException or OptimizationException) { /* a line search that cannot progress: keep the best point evaluated */ }
        }
        return new SharpnessResult
        {
            Measure = o.SubspaceDimension is null ? "keskar" : "keskar-subspace",
            Parameters = new() { ["epsilon"] = o.Epsilon, ["subspace_dimension"] = o.SubspaceDimension ?? 0, ["steps"] = o.SubspaceDimension is null ? o.Steps : o.LbfgsIterations },
            Value = 100 * (best - l0) / (1 + l0),
            BaseLoss = l0, MaxLoss = best, PerturbationNorm = bestDelta.norm().ToDouble(),
            LossEvaluations = probe.LossEvaluations, GradientEvaluations = probe.GradientEvaluations, Seconds = probe.Seconds,
        };
    }
}

/// <summary>SAM's one-step sharpness L(w + ρ g/‖g‖) − L(w) on the full data (DESIGN.md §5.2), ρ = 0.05.</summary>
public static class SamSharpness
{
    public static SharpnessResult Compute(Objective objective, double rho = 0.05, CancellationToken ct = default)
    {
        if (!(rho > 0) || !double.IsFinite(rho)) throw new ValleyException($"--rho: must be a positive finite number, got {rho}");
        using var probe = new PerturbationProbe(objective);
        using var scope = NewDisposeScope();
        var (l0, g) = probe.GradientAt(null, ct);
        var delta = rho * g / (g.norm() + 1e-12);
        double l1 = probe.EvaluateAt(delta, ct: ct).Loss;
        return new SharpnessResult
        {
            Measure = "sam-one-step", Parameters = new() { ["rho"] = rho }, Value = l1 - l0, BaseLoss = l0, MaxLoss = l1, PerturbationNorm = rho,
            LossEvaluations = probe.LossEvaluations, GradientEvaluations = probe.GradientEvaluations, Seconds = probe.Seconds,
        };
    }
}

public enum PerturbationNorm { L2, LInf }

/// <summary>
/// Worst-case and average-case sharpness (Andriushchenko et al. 2023; DESIGN.md §5.3–4). Perturbations δ = c ⊙ u with
/// ‖u‖_p ≤ ρ, c = 1 (plain) or |w| (adaptive). The value is averaged over batches of <see cref="BatchSize"/> (m = 128) from a
/// seeded subset of <see cref="Examples"/> (N = 1,024) training points. The paper varies ρ per setting and publishes no single
/// default; Valley's defaults are SAM's radius 0.05 (plain L2), ASAM's 0.5 (adaptive L2), 0.001 (plain L∞), 0.01 (adaptive L∞).
/// </summary>
public sealed record WorstCaseOptions
{
    public PerturbationNorm Norm { get; init; } = PerturbationNorm.L2;
    public bool Adaptive { get; init; }
    public double? Rho { get; init; }
    /// <summary>Auto-PGD steps (Croce and Hein 2020): step size starts at 2ρ, momentum 0.75, halved at checkpoints without progress.</summary>
    public int Steps { get; init; } = 20;
    public long BatchSize { get; init; } = 128;
    public long Examples { get; init; } = 1024;
    /// <summary>Average-case: Gaussian samples per batch.</summary>
    public int Samples { get; init; } = 20;
    public long Seed { get; init; }
    /// <summary>
    /// Data-parallel ranks: the data are then this rank's shard; the N examples are split between the ranks (each draws its
    /// share from its shard with its own seed) and the batch values of all ranks are averaged together.
    /// </summary>
    public Distributed.IProcessGroup? Group { get; init; }

    public double EffectiveRho => Rho ?? (Norm, Adaptive) switch
    {
        (PerturbationNorm.L2, false) => 0.05,
        (PerturbationNorm.L2, true) => 0.5,
        (PerturbationNorm.LInf, false) => 0.001,
        _ => 0.01,
    };

    public string Name(string kind) => $"{kind}-{(Norm == PerturbationNorm.L2 ? "l2" : "linf")}{(Adaptive ? "-adaptive" : "")}";
}

public static class WorstCaseSharpness
{
    /// <summary>max_{‖u‖_p ≤ ρ} L_B(w + c⊙u) − L_B(w), averaged over batches, with its standard error.</summary>
    public static SharpnessResult Compute(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, WorstCaseOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new WorstCaseOptions();
        double rho = o.EffectiveRho;
        Validate(o, rho);
        var g = o.Group ?? Distributed.SingleProcess.Instance;
        var (examples, subset) = ShareOf(data, o, g);
        using var _ = subset;
        var values = new List<double>();
        double maxLossSum = 0, baseSum = 0, normSum = 0;
        long lossEvals = 0, gradEvals = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        foreach (var (x, y, size) in subset.Batches(o.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var batch = new Dataset(subset.Name, x, y, subset.Task, subset.NumClasses);
            using var obj = new Objective(model, loss, batch, new ObjectiveOptions { BatchSize = size });
            using var probe = new PerturbationProbe(obj);
            using var scope = NewDisposeScope();
            var c = o.Adaptive ? probe.Origin.abs() : ones_like(probe.Origin);
            var (best, bestU, l0) = AutoPgd(probe, c, o.Norm, rho, o.Steps, new Generator((ulong)(o.Seed * 7919 + values.Count + 1_000_003L * g.Rank)), ct);
            values.Add(best - l0);
            maxLossSum += best; baseSum += l0; normSum += (c * bestU).norm().ToDouble();
            lossEvals += probe.LossEvaluations; gradEvals += probe.GradientEvaluations;
        }
        var (mean, se) = MeanSe(g.AllGather(values.ToArray()));
        var sums = g.Total(maxLossSum, baseSum, normSum, values.Count, lossEvals, gradEvals);
        (maxLossSum, baseSum, normSum, lossEvals, gradEvals) = (sums[0], sums[1], sums[2], (long)sums[4], (long)sums[5]);
        double batches = sums[3];
        return new SharpnessResult
        {
            Measure = o.Name("worst-case"),
            Parameters = new() { ["rho"] = rho, ["steps"] = o.Steps, ["batch_size"] = o.BatchSize, ["examples"] = examples },
            Value = mean, StandardError = se, BaseLoss = baseSum / batches, MaxLoss = maxLossSum / batches, PerturbationNorm = normSum / batches,
            LossEvaluations = lossEvals, GradientEvaluations = gradEvals, Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>E_{δ ~ N(0, ρ² diag(c²))} L_B(w + δ) − L_B(w), averaged over batches and samples, with its standard error.</summary>
    public static SharpnessResult AverageCase(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, WorstCaseOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new WorstCaseOptions();
        double rho = o.Rho ?? (o.Adaptive ? 0.1 : 0.01);
        Validate(o, rho);
        if (o.Samples < 1) throw new ValleyException($"--samples: must be at least 1, got {o.Samples}");
        var g = o.Group ?? Distributed.SingleProcess.Instance;
        var (examples, subset) = ShareOf(data, o, g);
        using var _ = subset;
        var gen = new Generator((ulong)o.Seed + 101 + 1_000_003UL * (ulong)g.Rank);
        var diffs = new List<double>();
        long lossEvals = 0;
        double baseSum = 0;
        int batches = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        foreach (var (x, y, size) in subset.Batches(o.BatchSize))
        {
            using var batch = new Dataset(subset.Name, x, y, subset.Task, subset.NumClasses);
            using var obj = new Objective(model, loss, batch, new ObjectiveOptions { BatchSize = size });
            using var probe = new PerturbationProbe(obj);
            double l0 = probe.EvaluateAt(null, ct: ct).Loss;
            baseSum += l0;
            batches++;
            for (int s = 0; s < o.Samples; s++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var c = o.Adaptive ? probe.Origin.abs() : ones_like(probe.Origin);
                var delta = rho * c * randn(probe.Origin.shape, dtype: ScalarType.Float64, generator: gen);
                diffs.Add(probe.EvaluateAt(delta, ct: ct).Loss - l0);
            }
            lossEvals += probe.LossEvaluations;
        }
        var (mean, se) = MeanSe(g.AllGather(diffs.ToArray()));
        var sums = g.Total(baseSum, batches, lossEvals);
        return new SharpnessResult
        {
            Measure = o.Name("average-case").Replace("-l2", "").Replace("-linf", ""),
            Parameters = new() { ["rho"] = rho, ["samples"] = o.Samples, ["batch_size"] = o.BatchSize, ["examples"] = examples },
            Value = mean, StandardError = se, BaseLoss = sums[0] / sums[1], LossEvaluations = (long)sums[2], Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>
    /// The seeded subset of min(N, examples) points the measure averages over; with several ranks, this rank's share of it,
    /// drawn from its shard with a seed of its own.
    /// </summary>
    static (long Examples, Dataset Subset) ShareOf(Dataset data, WorstCaseOptions o, Distributed.IProcessGroup g)
    {
        if (g.Size == 1) return (Math.Min(o.Examples, data.Count), data.Subset(Math.Min(o.Examples, data.Count), o.Seed));
        long total = (long)g.Total(data.Count)[0];
        long examples = Math.Min(o.Examples, total);
        long mine = Math.Min(Distributed.ProcessGroups.Share(examples, g.Rank, g.Size).Count, data.Count);
        return (examples, mine > 0 ? data.Subset(mine, o.Seed + g.Rank) : data.Slice(0, 0));
    }

    static void Validate(WorstCaseOptions o, double rho)
    {
        if (!(rho > 0) || !double.IsFinite(rho)) throw new ValleyException($"--rho: must be a positive finite number, got {rho}");
        if (o.Steps < 1) throw new ValleyException($"--steps: must be at least 1, got {o.Steps}");
        if (o.BatchSize < 1 || o.Examples < 1) throw new ValleyException("worst-case sharpness: batch size and examples must be positive");
    }

    internal static (double Mean, double StandardError) MeanSe(IReadOnlyList<double> v)
    {
        double mean = v.Average();
        if (v.Count < 2) return (mean, double.NaN);
        return (mean, Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Count - 1) / v.Count));
    }

    static Tensor Project(Tensor u, PerturbationNorm norm, double rho) => norm == PerturbationNorm.L2
        ? u * Math.Min(1.0, rho / Math.Max(u.norm().ToDouble(), 1e-300))
        : u.clamp(-rho, rho);

    static Tensor Direction(Tensor g, PerturbationNorm norm) => norm == PerturbationNorm.L2 ? g / (g.norm() + 1e-12) : g.sign();

    /// <summary>
    /// Auto-PGD (Croce and Hein 2020, Alg. 1) maximizing f(u) = L_B(w + c⊙u) over ‖u‖_p ≤ ρ: η₀ = 2ρ, momentum α = 0.75,
    /// checkpoints p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); at a checkpoint η halves (restarting
    /// from the best point) when fewer than 75% of the steps since the last one increased f, or when neither η nor the best
    /// value changed since. Returns the best value, its u, and f(0).
    /// </summary>
    internal static (double Best, Tensor BestU, double F0) AutoPgd(PerturbationProbe probe, Tensor c, PerturbationNorm norm, double rho, int steps, Generator gen, CancellationToken ct)
    {
        var checkpoints = new SortedSet<int>();
        double pPrev = 0, p = 0.22;
        while (p < 1) { checkpoints.Add((int)Math.Ceiling(p * steps)); (pPrev, p) = (p, p + Math.Max(p - pPrev - 0.03, 0.06)); }
        double eta = 2 * rho;
        // f(0) is the reference; the ascent starts at a seeded random point of norm 0.1ρ, since at a minimum ∇f(0) ≈ 0.
        double f0 = probe.EvaluateAt(null, ct: ct).Loss;
        var r0 = randn(c.shape, dtype: ScalarType.Float64, generator: gen);
        var u0 = norm == PerturbationNorm.L2 ? r0 * (0.1 * rho / r0.norm().ToDouble()) : r0.sign() * (0.1 * rho);
        var (fStart, g0) = probe.GradientAt(c * u0, ct);
        double best = Math.Max(f0, fStart);
        Tensor bestU = fStart > f0 ? u0 : zeros_like(c);
        var uPrev = u0;
        var u = Project(u0 + eta * Direction(c * g0, norm), norm, rho);
        int lastCheckpoint = 0, increases = 0;
        double etaAtCheckpoint = eta, bestAtCheckpoint = best, fPrev = fStart;
        for (int k = 1; k <= steps; k++)
        {
            var (f, g) = probe.GradientAt(c * u, ct);
            if (f > fPrev) increases++;
            if (f > best) { best = f; bestU = u; }
            fPrev = f;
            if (k == steps) break;
            if (checkpoints.Contains(k))
            {
                bool fewIncreases = increases < 0.75 * (k - lastCheckpoint);
                bool stalled = etaAtCheckpoint == eta && bestAtCheckpoint == best;
                if (fewIncreases || stalled)
                {
                    eta /= 2;
                    u = bestU;
                    (f, g) = probe.GradientAt(c * u, ct);
                }
                lastCheckpoint = k; increases = 0; etaAtCheckpoint = eta; bestAtCheckpoint = best;
            }
            var z = Project(u + eta * Direction(c * g, norm), norm, rho);
            var next = Project(u + 0.75 * (z - u) + 0.25 * (u - uPrev), norm, rho);
            uPrev = u;
            u = next;
        }
        return (best, bestU, f0);
    }
}
