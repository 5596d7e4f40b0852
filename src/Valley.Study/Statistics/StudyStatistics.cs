namespace Valley.Study;

/// <summary>How <see cref="StudyStatistics.Analyze"/> quantifies uncertainty.</summary>
public sealed record StatisticsOptions
{
    /// <summary>Bootstrap resamples of the models (percentile intervals).</summary>
    public int Resamples { get; init; } = 2000;
    /// <summary>Random permutations for the p-values when the exact test is too large.</summary>
    public int Permutations { get; init; } = 2000;
    /// <summary>Up to this many models the permutation test enumerates all n! permutations (8! = 40,320).</summary>
    public int ExactPermutationUpTo { get; init; } = 8;
    /// <summary>Confidence level of every interval.</summary>
    public double Confidence { get; init; } = 0.95;
    /// <summary>Size of the hyperparameter sets the conditional mutual information is conditioned on (Jiang et al. use 2; capped at the number of varied hyperparameters).</summary>
    public int ConditioningSize { get; init; } = 2;
    /// <summary>The hyperparameter whose values are seeds: left out of Ψ and the CMI, used for the sign agreement.</summary>
    public string SeedKey { get; init; } = "seed";
    /// <summary>Seed of the resamples and permutations.</summary>
    public long Seed { get; init; }
}

/// <summary>Kendall τ_b with a percentile bootstrap interval over models and a two-sided permutation p-value.</summary>
/// <param name="Tau">τ_b on all models.</param>
/// <param name="Lower">Lower bound of the bootstrap interval.</param>
/// <param name="Upper">Upper bound of the bootstrap interval.</param>
/// <param name="PValue">Permutation p-value (two-sided).</param>
/// <param name="ExactPValue">Whether the p-value enumerated every permutation.</param>
public sealed record TauEstimate(double Tau, double Lower, double Upper, double PValue, bool ExactPValue)
{
    /// <summary>Whether the interval excludes zero.</summary>
    public bool ExcludesZero => Lower > 0 || Upper < 0;
}

/// <summary>A value with a percentile bootstrap interval (NaN bounds: too few defined resamples).</summary>
public sealed record Estimate(double Value, double Lower, double Upper);

/// <summary>How one measure (or baseline) ranks the models against the generalization gaps.</summary>
public sealed record MeasureRanking
{
    /// <summary>The measure's name (as in <see cref="ModelMeasurements.Measures"/> or <see cref="ModelMeasurements.Baselines"/>).</summary>
    public required string Measure { get; init; }
    /// <summary>Whether it is a baseline (norm, margin, steps) rather than a curvature or sharpness measure.</summary>
    public bool IsBaseline { get; init; }
    /// <summary>τ with the accuracy gap (train − test accuracy).</summary>
    public required TauEstimate AccuracyGap { get; init; }
    /// <summary>τ with the loss gap (test − train loss).</summary>
    public required TauEstimate LossGap { get; init; }
    /// <summary>
    /// Whether τ with the accuracy gap is told apart from zero: its interval excludes zero and its permutation p-value is at
    /// most 1 − confidence. Both are required because the percentile bootstrap is degenerate for a handful of models (three
    /// models in the measure's order give τ = 1 on every resample) while the permutation test is exact there.
    /// </summary>
    public bool DistinguishableFromZero { get; init; }
    /// <summary>+1 when τ with the accuracy gap is ≥ 0 (larger value, larger gap: the direction every measure is oriented in), −1 when reversed.</summary>
    public int Direction { get; init; }
    /// <summary>
    /// The sort key: the lower bound of the interval of Direction·τ, i.e. how strongly the measure orders the gap in either
    /// direction, with the uncertainty counted against it (a τ of −0.6 [−0.8, −0.3] has key 0.3 and is marked reversed).
    /// </summary>
    public double SortKey { get; init; }
    /// <summary>Granulated τ Ψ with the accuracy gap (Jiang et al. 2020, eq. 4) and its interval (same bootstrap resamples of the models).</summary>
    public required Estimate Psi { get; init; }
    /// <summary>Per hyperparameter ψ_h with its interval.</summary>
    public Dictionary<string, Estimate> PerHyperparameter { get; init; } = [];
    /// <summary>Jiang et al.'s K(μ): the minimum over conditioning sets of <see cref="RankingAnalysis.ConditioningSize"/> hyperparameters of the normalized conditional mutual information with the accuracy gap's sign.</summary>
    public double ConditionalMutualInformation { get; init; } = double.NaN;
    /// <summary>The conditioning set attaining <see cref="ConditionalMutualInformation"/>.</summary>
    public List<string> ConditionedOn { get; init; } = [];
    /// <summary>Normalized mutual information without conditioning (|S| = 0).</summary>
    public double MutualInformation { get; init; } = double.NaN;
    /// <summary>Seeds whose within-seed τ has the pooled τ's sign (null: the study has fewer than two seeds).</summary>
    public int? SeedsAgreeing { get; init; }
    /// <summary>Seeds counted for the sign agreement.</summary>
    public int? Seeds { get; init; }
    /// <summary>Paired bootstrap interval of Direction·τ − Direction_b·τ_b against the best baseline (null for the best baseline itself, or without baselines).</summary>
    public Estimate? VersusBestBaseline { get; init; }
    /// <summary>"better", "worse" or "indistinguishable" from the best baseline by <see cref="VersusBestBaseline"/>; null when not compared.</summary>
    public string? ComparedWithBestBaseline { get; init; }
}

/// <summary>The study's statistics: every measure and baseline ranked, sorted by <see cref="MeasureRanking.SortKey"/>.</summary>
public sealed record RankingAnalysis
{
    /// <summary>Models analyzed.</summary>
    public int Models { get; init; }
    /// <summary>The options used.</summary>
    public required StatisticsOptions Options { get; init; }
    /// <summary>Hyperparameters with at least two values, other than the seed: those of Ψ and the CMI.</summary>
    public List<string> Hyperparameters { get; init; } = [];
    /// <summary>The size |S| of the conditioning sets of the CMI (0 = plain mutual information).</summary>
    public int ConditioningSize { get; init; }
    /// <summary>Number of conditioning sets of that size the minimum ran over.</summary>
    public int ConditioningSets { get; init; }
    /// <summary>Ordered pairs of models the CMI counts, n(n − 1).</summary>
    public long Pairs { get; init; }
    /// <summary>The seeds of the sign agreement (empty when fewer than two).</summary>
    public List<string> SeedValues { get; init; } = [];
    /// <summary>The baseline with the largest sort key, if any.</summary>
    public string? BestBaseline { get; init; }
    /// <summary>Every measure and baseline, best first.</summary>
    public List<MeasureRanking> Rows { get; init; } = [];
}

/// <summary>Relates every measure and baseline of a study's models to their generalization gaps, with uncertainty.</summary>
public static class StudyStatistics
{
    /// <summary>
    /// Kendall τ_b of every measure and every baseline (alike) with the accuracy gap and the loss gap, with percentile bootstrap
    /// intervals over models (<see cref="StatisticsOptions.Resamples"/> resamples of the models, the same for every measure, see
    /// <see cref="RankStatistics.BootstrapIndices"/>) and permutation p-values; the granulated Ψ and its per-hyperparameter ψ with
    /// intervals from the same resamples of the models; Jiang et al.'s conditional mutual information; the sign agreement across
    /// seeds; and a paired bootstrap comparison with the best baseline. Only names defined and finite for every model are ranked.
    /// Deterministic given <see cref="StatisticsOptions.Seed"/>.
    /// </summary>
    public static RankingAnalysis Analyze(IReadOnlyList<ModelMeasurements> models, StatisticsOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new StatisticsOptions();
        Check.AtLeast(o.Resamples, 10, nameof(o.Resamples));
        Check.Between(o.Confidence, 0, 1, nameof(o.Confidence));
        int n = models.Count;
        var acc = models.Select(m => m.AccuracyGap).ToArray();
        var loss = models.Select(m => m.LossGap).ToArray();
        var columns = new List<(string Name, bool Baseline, double[] Values)>();
        foreach (var (dicts, baseline) in new[] { (models.Select(m => m.Measures).ToList(), false), (models.Select(m => m.Baselines).ToList(), true) })
            foreach (var k in dicts.SelectMany(d => d.Keys).Distinct().OrderBy(k => k, StringComparer.Ordinal))
                if (dicts.All(d => d.TryGetValue(k, out var v) && double.IsFinite(v)) && !columns.Any(c => c.Name == k))
                    columns.Add((k, baseline, dicts.Select(d => d[k]).ToArray()));

        var seeds = models.Select(m => m.Hyperparameters.GetValueOrDefault(o.SeedKey, "")).ToArray();
        var seedValues = seeds.Distinct().Count() > 1 && models.All(m => m.Hyperparameters.ContainsKey(o.SeedKey)) ? seeds.Distinct().OrderBy(s => s, StringComparer.Ordinal).ToList() : [];
        var hyperNames = models.SelectMany(m => m.Hyperparameters.Keys).Distinct().Where(k => k != o.SeedKey)
            .Where(k => models.Select(m => m.Hyperparameters.GetValueOrDefault(k, "")).Distinct().Count() > 1).OrderBy(k => k, StringComparer.Ordinal).ToList();
        var hyper = models.Select(m => (IReadOnlyDictionary<string, string>)hyperNames.ToDictionary(k => k, k => m.Hyperparameters.GetValueOrDefault(k, ""))).ToList();
        int size = Math.Clamp(o.ConditioningSize, 0, hyperNames.Count);
        var indices = RankStatistics.BootstrapIndices(Math.Max(n, 1), o.Resamples, o.Seed);
        var all = Enumerable.Range(0, n).ToArray();
        // ψ_h compares models that differ in h only: the seed is held fixed within a group too (Jiang et al. 2020, eq. 4), but Ψ does not average over it.
        var granulation = RankStatistics.GranulationKeys(hyper, seeds);

        var rows = new List<(MeasureRanking Row, double[] Oriented)>();
        foreach (var (name, baseline, v) in columns)
        {
            ct.ThrowIfCancellationRequested();
            TauEstimate Tau(double[] gap, out double[] reps)
            {
                reps = RankStatistics.BootstrapTau(v, gap, indices);
                var (lo, hi) = RankStatistics.PercentileInterval(reps, o.Confidence);
                var (p, exact) = RankStatistics.PermutationPValue(v, gap, o.Permutations, o.Seed, o.ExactPermutationUpTo);
                return new TauEstimate(RankStatistics.Tau(v, gap, all), lo, hi, p, exact);
            }
            var ta = Tau(acc, out var repsAcc);
            var tl = Tau(loss, out _);
            int dir = ta.Tau < 0 ? -1 : 1;
            var oriented = repsAcc.Select(t => dir * t).ToArray();
            double key = !double.IsFinite(ta.Tau) ? double.NegativeInfinity : dir > 0 ? ta.Lower : -ta.Upper;

            var (psi, per) = RankStatistics.Granulated(granulation, v, acc, all);
            var psiReps = new double[indices.Length];
            var perReps = per.Keys.ToDictionary(h => h, _ => new double[indices.Length]);
            for (int b = 0; b < indices.Length; b++)
            {
                var (pb, perb) = RankStatistics.Granulated(granulation, v, acc, indices[b]);
                psiReps[b] = pb;
                foreach (var h in per.Keys) perReps[h][b] = perb.GetValueOrDefault(h, double.NaN);
            }
            Estimate Est(double value, double[] reps) { var (lo, hi) = RankStatistics.PercentileInterval(reps, o.Confidence); return new Estimate(value, lo, hi); }

            var (cmi, set) = hyperNames.Count > 0 ? RankStatistics.MinimumConditionalMutualInformation(v, acc, hyper, hyperNames, size) : (double.NaN, []);
            double mi = RankStatistics.ConditionalMutualInformation(v, acc, hyper, []);
            if (size == 0) { cmi = mi; set = []; }
            int? agreeing = null, counted = null;
            if (seedValues.Count > 1) { var (ag, c) = RankStatistics.SignAgreement(v, acc, seeds); agreeing = ag; counted = c; }
            rows.Add((new MeasureRanking
            {
                Measure = name, IsBaseline = baseline, AccuracyGap = ta, LossGap = tl, Direction = dir, SortKey = key,
                DistinguishableFromZero = ta.ExcludesZero && ta.PValue <= 1 - o.Confidence + 1e-12,
                Psi = Est(psi, psiReps), PerHyperparameter = per.ToDictionary(kv => kv.Key, kv => Est(kv.Value, perReps[kv.Key])),
                ConditionalMutualInformation = cmi, ConditionedOn = [.. set], MutualInformation = mi, SeedsAgreeing = agreeing, Seeds = counted,
            }, oriented));
        }
        var best = rows.Where(r => r.Row.IsBaseline && double.IsFinite(r.Row.SortKey)).OrderByDescending(r => r.Row.SortKey).Select(r => ((MeasureRanking, double[])?)r).FirstOrDefault();
        var ranked = rows.Select(r =>
        {
            if (best is not { } bb || ReferenceEquals(r.Row, bb.Item1)) return r.Row;
            var diff = r.Oriented.Zip(bb.Item2, (a, b) => a - b).ToArray();
            var (lo, hi) = RankStatistics.PercentileInterval(diff, o.Confidence);
            double point = r.Row.Direction * r.Row.AccuracyGap.Tau - bb.Item1.Direction * bb.Item1.AccuracyGap.Tau;
            string? verdict = double.IsNaN(lo) ? null : lo > 0 ? "better" : hi < 0 ? "worse" : "indistinguishable";
            return r.Row with { VersusBestBaseline = new Estimate(point, lo, hi), ComparedWithBestBaseline = verdict };
        }).OrderByDescending(r => r.SortKey).ThenBy(r => r.Measure, StringComparer.Ordinal).ToList();
        return new RankingAnalysis
        {
            Models = n, Options = o, Hyperparameters = hyperNames, ConditioningSize = size, ConditioningSets = (int)Choose(hyperNames.Count, size),
            Pairs = (long)n * (n - 1), SeedValues = seedValues, BestBaseline = best?.Item1.Measure, Rows = ranked,
        };
    }

    static long Choose(int n, int k)
    {
        long c = 1;
        for (int i = 0; i < k; i++) c = c * (n - i) / (i + 1);
        return c;
    }
}
