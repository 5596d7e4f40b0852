namespace Valley.Study;

/// <summary>Kendall rank correlation τ_b (ties handled), and Jiang et al.'s (2020) granulated version.</summary>
public static class KendallTau
{
    /// <summary>τ_b = (concordant − discordant) / sqrt((n₀ − n₁)(n₀ − n₂)); NaN when either variable is constant.</summary>
    public static double Compute(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        if (x.Count != y.Count) throw new ArgumentException("Kendall τ: lengths differ");
        return RankStatistics.Tau(x, y, Enumerable.Range(0, x.Count).ToArray());
    }

    /// <summary>
    /// Granulated τ (Jiang et al. 2020, §4.2): for each hyperparameter, the mean τ over groups of models that agree on every
    /// other hyperparameter (groups of one are skipped); Ψ is the mean over hyperparameters that had a group.
    /// </summary>
    public static (double Psi, Dictionary<string, double> PerHyperparameter) Granulated(
        IReadOnlyList<IReadOnlyDictionary<string, string>> hyper, IReadOnlyList<double> measure, IReadOnlyList<double> gap) =>
        RankStatistics.Granulated(hyper, measure, gap);
}
