namespace Valley.Study;

/// <summary>Kendall rank correlation τ_b (ties handled), and Jiang et al.'s (2020) granulated version.</summary>
public static class KendallTau
{
    /// <summary>τ_b = (concordant − discordant) / sqrt((n₀ − n₁)(n₀ − n₂)); NaN when either variable is constant.</summary>
    public static double Compute(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("Kendall τ: lengths differ");
        long c = 0, d = 0, tx = 0, ty = 0;
        for (int i = 0; i < x.Count; i++)
            for (int j = i + 1; j < x.Count; j++)
            {
                int sx = Math.Sign(x[i] - x[j]), sy = Math.Sign(y[i] - y[j]);
                if (sx == 0 && sy == 0) continue;
                if (sx == 0) { tx++; continue; }
                if (sy == 0) { ty++; continue; }
                if (sx == sy) c++; else d++;
            }
        double denom = Math.Sqrt((double)(c + d + tx) * (c + d + ty));
        return denom == 0 ? double.NaN : (c - d) / denom;
    }

    /// <summary>
    /// Granulated τ (Jiang et al. 2020, §4.2): for each hyperparameter, the mean τ over groups of models that agree on every
    /// other hyperparameter (groups of one are skipped); Ψ is the mean over hyperparameters that had a group.
    /// </summary>
    public static (double Psi, Dictionary<string, double> PerHyperparameter) Granulated(
        IReadOnlyList<IReadOnlyDictionary<string, string>> hyper, IReadOnlyList<double> measure, IReadOnlyList<double> gap) =>
        RankStatistics.Granulated(hyper, measure, gap);
}
