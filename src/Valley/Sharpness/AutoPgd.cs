using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Auto-PGD (Croce and Hein 2020, Algorithm 1), the maximizer of <see cref="WorstCaseSharpness"/>: it maximizes
/// f(u) = L_B(w + c⊙u) over ‖u‖_p ≤ ρ with η₀ = 2ρ, momentum 0.75, and checkpoints p₀ = 0, p₁ = 0.22,
/// p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06); at a checkpoint η halves (restarting from the best point) when fewer than
/// 75% of the steps since the last one increased f, or when neither η nor the best value changed since.
/// </summary>
internal static class AutoPgd
{
    /// <summary>The best value of f found, its u, and f(0). Tensors belong to the caller's dispose scope.</summary>
    public static (double Best, Tensor BestU, double F0) Maximize(PerturbationProbe probe, Tensor c, PerturbationNorm norm, double rho, int steps, Generator gen,
        CancellationToken ct)
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

    /// <summary>Projection onto the ball ‖u‖_p ≤ ρ.</summary>
    static Tensor Project(Tensor u, PerturbationNorm norm, double rho) => norm == PerturbationNorm.L2
        ? u * Math.Min(1.0, rho / Math.Max(u.norm().ToDouble(), 1e-300))
        : u.clamp(-rho, rho);

    /// <summary>The steepest-ascent direction of the norm's unit ball: g/‖g‖₂ (L2) or sign(g) (L∞).</summary>
    static Tensor Direction(Tensor g, PerturbationNorm norm) => norm == PerturbationNorm.L2 ? g / (g.norm() + 1e-12) : g.sign();
}
