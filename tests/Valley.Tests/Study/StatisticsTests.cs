using Valley.Study;
using Xunit;

namespace Valley.Tests.Study;

public class StatisticsTests
{
    // ---- independent straightforward implementations (definitions, not the library's code paths) ----

    /// <summary>τ_b = Σ_{i&lt;j} sign(Δx)·sign(Δy) / sqrt(Σ sign(Δx)² · Σ sign(Δy)²).</summary>
    static double RefTau(double[] x, double[] y)
    {
        double num = 0, nx = 0, ny = 0;
        for (int i = 0; i < x.Length; i++)
            for (int j = i + 1; j < x.Length; j++)
            {
                double sx = Math.Sign(x[i] - x[j]), sy = Math.Sign(y[i] - y[j]);
                num += sx * sy; nx += sx * sx; ny += sy * sy;
            }
        return nx * ny == 0 ? double.NaN : num / Math.Sqrt(nx * ny);
    }

    static double RefQuantile(List<double> v, double q)
    {
        var a = v.OrderBy(t => t).ToList();
        double h = (a.Count - 1) * q;
        int lo = (int)h;
        return lo + 1 < a.Count ? a[lo] + (h - lo) * (a[lo + 1] - a[lo]) : a[lo];
    }

    static IEnumerable<int[]> AllPermutations(int[] items)
    {
        if (items.Length <= 1) { yield return items; yield break; }
        for (int i = 0; i < items.Length; i++)
            foreach (var rest in AllPermutations(items.Where((_, k) => k != i).ToArray()))
                yield return [items[i], .. rest];
    }

    static ModelMeasurements Model(string name, double gap, Dictionary<string, double> measures, Dictionary<string, string>? hyper = null,
        Dictionary<string, double>? baselines = null, double lossGap = double.NaN) => new()
    {
        Name = name, Hyperparameters = hyper ?? [], Epochs = 1, TrainLoss = 0, TestLoss = double.IsNaN(lossGap) ? gap : lossGap,
        TrainAccuracy = gap, TestAccuracy = 0, Measures = measures, StandardErrors = [], Baselines = baselines ?? [],
    };

    [Fact]
    public void TauWithTiesMatchesHandCountsAndTheExactPermutationTestMatchesEnumeration()
    {
        // x = [1,1,2,3], y = [1,2,2,3]: 4 concordant, 0 discordant, one pair tied in x only, one in y only: τ_b = 4 / sqrt(5 · 5).
        Assert.Equal(0.8, RankStatistics.Tau([1, 1, 2, 3], [1, 2, 2, 3], [0, 1, 2, 3]), 12);
        Assert.Equal(0.8, KendallTau.Compute([1, 1, 2, 3], [1, 2, 2, 3]), 12);
        // [1,2,3,4] vs [1,3,2,4]: τ = 4/6 (one inversion). Among the 24 orderings, |τ| ≥ 4/6 means 0, 1, 5 or 6 inversions:
        // 1 + 3 + 3 + 1 = 8 permutations, so the exact two-sided p = 8/24.
        var (p, exact) = RankStatistics.PermutationPValue([1, 2, 3, 4], [1, 3, 2, 4]);
        Assert.True(exact);
        Assert.Equal(1.0 / 3, p, 12);
        // With ties, against enumeration in the test.
        double[] x = [1, 1, 2, 3, 3, 5], y = [2, 1, 2, 4, 6, 6];
        double obs = Math.Abs(RefTau(x, y));
        var perms = AllPermutations([0, 1, 2, 3, 4, 5]).ToList();
        Assert.Equal(720, perms.Count);
        double expected = perms.Count(q => Math.Abs(RefTau(x, q.Select(i => y[i]).ToArray())) >= obs - 1e-12) / 720.0;
        var (pt, et) = RankStatistics.PermutationPValue(x, y);
        Assert.True(et);
        Assert.Equal(expected, pt, 12);
        Assert.Equal(RefTau(x, y), RankStatistics.Tau(x, y, [0, 1, 2, 3, 4, 5]), 12);
    }

    [Fact]
    public void MonteCarloPermutationPValueAndBootstrapIntervalMatchAStraightforwardImplementation()
    {
        var rng = new Random(5);
        int n = 12;
        var x = Enumerable.Range(0, n).Select(_ => (double)rng.Next(6)).ToArray();   // many ties
        var y = x.Select(v => v + rng.NextDouble() * 4).ToArray();
        // Permutation test: Fisher–Yates with Random(seed), +1 correction.
        const int P = 500;
        var r = new Random(42);
        var perm = Enumerable.Range(0, n).ToArray();
        int hits = 0;
        double obs = Math.Abs(RefTau(x, y));
        for (int k = 0; k < P; k++)
        {
            for (int i = n - 1; i >= 1; i--) { int j = r.Next(i + 1); (perm[i], perm[j]) = (perm[j], perm[i]); }
            if (Math.Abs(RefTau(x, perm.Select(i => y[i]).ToArray())) >= obs - 1e-12) hits++;
        }
        var (p, exact) = RankStatistics.PermutationPValue(x, y, P, 42, exactUpTo: 8);
        Assert.False(exact);
        Assert.Equal((1.0 + hits) / (1.0 + P), p, 12);

        // Bootstrap: resample b draws n indices in order from one Random(seed); percentile interval of the defined τs.
        const int B = 400;
        var br = new Random(7);
        var taus = new List<double>();
        for (int b = 0; b < B; b++)
        {
            var idx = Enumerable.Range(0, n).Select(_ => br.Next(n)).ToArray();
            double t = RefTau(idx.Select(i => x[i]).ToArray(), idx.Select(i => y[i]).ToArray());
            if (double.IsFinite(t)) taus.Add(t);
        }
        var models = Enumerable.Range(0, n).Select(i => Model($"m{i}", y[i], new() { ["m"] = x[i] })).ToList();
        var a = StudyStatistics.Analyze(models, new StatisticsOptions { Resamples = B, Permutations = P, Seed = 7 });
        var row = Assert.Single(a.Rows);
        Assert.Equal(RefTau(x, y), row.AccuracyGap.Tau, 12);
        Assert.Equal(RefQuantile(taus, 0.025), row.AccuracyGap.Lower, 12);
        Assert.Equal(RefQuantile(taus, 0.975), row.AccuracyGap.Upper, 12);
        Assert.Equal(RankStatistics.PermutationPValue(x, y, P, 7).PValue, row.AccuracyGap.PValue, 12);
    }

    [Fact]
    public void AMeasureEqualToTheGapHasTauOneWithAnIntervalAtOneAndARandomMeasureAnIntervalContainingZero()
    {
        var rng = new Random(3);
        int n = 20;
        var gaps = Enumerable.Range(0, n).Select(_ => rng.NextDouble()).ToArray();
        var noise = Enumerable.Range(0, n).Select(_ => rng.NextDouble()).ToArray();
        var models = Enumerable.Range(0, n).Select(i => Model($"m{i}", gaps[i], new() { ["gap"] = gaps[i], ["random"] = noise[i] },
            baselines: new() { ["noise_baseline"] = noise[n - 1 - i] })).ToList();
        var a = StudyStatistics.Analyze(models, new StatisticsOptions { Seed = 11 });
        var g = a.Rows.Single(r => r.Measure == "gap");
        Assert.Equal(1.0, g.AccuracyGap.Tau, 12);
        Assert.Equal(1.0, g.AccuracyGap.Lower, 12);
        Assert.Equal(1.0, g.AccuracyGap.Upper, 12);
        Assert.True(g.AccuracyGap.ExcludesZero);
        Assert.True(g.DistinguishableFromZero);
        Assert.True(g.AccuracyGap.PValue <= 1.0 / 2001 + 1e-12);   // no random permutation reaches |τ| = 1
        Assert.Equal("gap", a.Rows[0].Measure);                     // sorted by the lower bound
        Assert.Equal(1.0, g.MutualInformation, 12);                 // the measure's sign determines the gap's

        var rnd = a.Rows.Single(r => r.Measure == "random");
        Assert.InRange(0.0, rnd.AccuracyGap.Lower, rnd.AccuracyGap.Upper);
        Assert.False(rnd.AccuracyGap.ExcludesZero);
        Assert.False(rnd.DistinguishableFromZero);
        // Three models in the measure's order: every bootstrap τ is 1, but the exact permutation p is 2/6, so not told apart from zero.
        var three = Enumerable.Range(0, 3).Select(i => Model($"t{i}", i, new() { ["m"] = i })).ToList();
        var t3 = Assert.Single(StudyStatistics.Analyze(three).Rows);
        Assert.Equal((1.0, 1.0), (t3.AccuracyGap.Lower, t3.AccuracyGap.Upper));
        Assert.Equal(1.0 / 3, t3.AccuracyGap.PValue, 12);
        Assert.False(t3.DistinguishableFromZero);
        // The only baseline is the best one; the measure equal to the gap is distinguishably better than it (paired bootstrap).
        Assert.Equal("noise_baseline", a.BestBaseline);
        Assert.Equal("better", g.ComparedWithBestBaseline);
        Assert.Null(a.Rows.Single(r => r.Measure == "noise_baseline").ComparedWithBestBaseline);
        // Deterministic given the seed.
        var again = StudyStatistics.Analyze(models, new StatisticsOptions { Seed = 11 });
        Assert.Equal(rnd.AccuracyGap, again.Rows.Single(r => r.Measure == "random").AccuracyGap);
    }

    [Fact]
    public void GranulatedPsiOnAHandMadeTableLeavesTheSeedOut()
    {
        // b ∈ {1, 2, 3} × o ∈ {x, y}; seed constant.
        // Within o = x: measure 1, 2, 3 and gap 1, 3, 2 → τ = 1/3; within o = y: measure 4, 5, 6 and gap 3, 2, 1 → τ = −1: ψ_b = −1/3.
        // Within b = 1: (1, 1) vs (4, 3) concordant → +1; b = 2: (2, 3) vs (5, 2) → −1; b = 3: (3, 2) vs (6, 1) → −1: ψ_o = −1/3.
        double[] m = [1, 2, 3, 4, 5, 6], gap = [1, 3, 2, 3, 2, 1];
        string[] b = ["1", "2", "3", "1", "2", "3"], o = ["x", "x", "x", "y", "y", "y"];
        var models = Enumerable.Range(0, 6).Select(i => Model($"m{i}", gap[i], new() { ["m"] = m[i] }, new() { ["b"] = b[i], ["o"] = o[i], ["seed"] = "0" })).ToList();
        var a = StudyStatistics.Analyze(models, new StatisticsOptions { Resamples = 200 });
        var row = Assert.Single(a.Rows);
        Assert.Equal(-1.0 / 3, row.PerHyperparameter["b"].Value, 12);
        Assert.Equal(-1.0 / 3, row.PerHyperparameter["o"].Value, 12);
        Assert.Equal(-1.0 / 3, row.Psi.Value, 12);
        Assert.False(row.PerHyperparameter.ContainsKey("seed"));
        Assert.Equal(["b", "o"], a.Hyperparameters);
        Assert.Empty(a.SeedValues);
        Assert.Null(row.Seeds);
        Assert.True(row.Psi.Lower <= row.Psi.Upper);
    }

    [Fact]
    public void GranulatedPsiHoldsTheSeedFixedWithinEachGroup()
    {
        // b ∈ {1, 2} × seed ∈ {0, 1}. Within seed 0: measure 1, 2 and gap 2, 3 → τ = +1; within seed 1: measure 3, 4 and gap 0, 1
        // → τ = +1: ψ_b = +1 (Jiang et al. eq. 4 fixes every other setting, the seed included). Pooling the seeds into one
        // group would give c = 2, d = 4: −1/3.
        double[] m = [1, 2, 3, 4], gap = [2, 3, 0, 1];
        string[] b = ["1", "2", "1", "2"], seed = ["0", "0", "1", "1"];
        var models = Enumerable.Range(0, 4).Select(i => Model($"m{i}", gap[i], new() { ["m"] = m[i] }, new() { ["b"] = b[i], ["seed"] = seed[i] })).ToList();
        var row = Assert.Single(StudyStatistics.Analyze(models, new StatisticsOptions { Resamples = 200 }).Rows);
        Assert.Equal(1.0, row.PerHyperparameter["b"].Value, 12);
        Assert.Equal(1.0, row.Psi.Value, 12);
        Assert.False(row.PerHyperparameter.ContainsKey("seed"));
    }

    [Fact]
    public void SignAgreementCountsTheSeedsWhoseTauHasThePooledSign()
    {
        // Seed 0: τ = 1; seed 1: gaps 4, 6, 5 → τ = 1/3; seed 2: gaps 9, 8, 7 → τ = −1. Pooled: the 27 pairs across seeds are
        // concordant, within seeds 3 + 2 concordant and 1 + 3 discordant: τ = (32 − 4)/36 > 0. Seeds 0 and 1 agree: 2 of 3.
        double[] m = [1, 2, 3, 4, 5, 6, 7, 8, 9], gap = [1, 2, 3, 4, 6, 5, 9, 8, 7];
        string[] seeds = ["0", "0", "0", "1", "1", "1", "2", "2", "2"];
        Assert.Equal(28.0 / 36, RankStatistics.Tau(m, gap, Enumerable.Range(0, 9).ToArray()), 12);
        Assert.Equal((2, 3), RankStatistics.SignAgreement(m, gap, seeds));
        var models = Enumerable.Range(0, 9).Select(i => Model($"m{i}", gap[i], new() { ["m"] = m[i] }, new() { ["seed"] = seeds[i] })).ToList();
        var row = Assert.Single(StudyStatistics.Analyze(models, new StatisticsOptions { Resamples = 100 }).Rows);
        Assert.Equal(2, row.SeedsAgreeing);
        Assert.Equal(3, row.Seeds);
        // Reversed measure: the pooled sign flips with every seed's, so the agreement is the same.
        Assert.Equal((2, 3), RankStatistics.SignAgreement(m.Select(v => -v).ToArray(), gap, seeds));
    }

    /// <summary>I(A; B | U) / H(B | U) as H(B|U) − H(B|A,U) over H(B|U), by counting tuples.</summary>
    static double RefCmi(int[] a, int[] b, string[] u)
    {
        double H(Func<int, string> cond)
        {
            int n = a.Length;
            double h = 0;
            foreach (var g in Enumerable.Range(0, n).GroupBy(cond))
            {
                double pg = (double)g.Count() / n;
                foreach (var gb in g.GroupBy(i => b[i]))
                {
                    double q = (double)gb.Count() / g.Count();
                    h -= pg * q * Math.Log(q);
                }
            }
            return h;
        }
        double hu = H(i => u[i]), hau = H(i => u[i] + "/" + a[i]);
        return (hu - hau) / hu;
    }

    [Fact]
    public void ConditionalMutualInformationMatchesAWorkedExampleAndACountingImplementation()
    {
        // Three models, measure 1, 2, 3 and gap 1, 3, 2. Over the 6 ordered pairs (V_μ, V_g) = (−,−) ×2, (+,+) ×2, (−,+), (+,−):
        // I = 2·(1/3)·ln((1/3)/(1/4)) + 2·(1/6)·ln((1/6)/(1/4)) and H(V_g) = ln 2.
        double handI = 2.0 / 3 * Math.Log(4.0 / 3) + 1.0 / 3 * Math.Log(2.0 / 3);
        var none = new List<IReadOnlyDictionary<string, string>> { new Dictionary<string, string>(), new Dictionary<string, string>(), new Dictionary<string, string>() };
        Assert.Equal(handI / Math.Log(2), RankStatistics.ConditionalMutualInformation([1, 2, 3], [1, 3, 2], none, []), 12);
        Assert.Equal(0.0817, handI / Math.Log(2), 4);

        // Random table with two hyperparameters, conditioned on each one and on both, against counting.
        var rng = new Random(9);
        int n = 10;
        var mu = Enumerable.Range(0, n).Select(_ => (double)rng.Next(5)).ToArray();
        var g = Enumerable.Range(0, n).Select(_ => (double)rng.Next(4)).ToArray();
        var hyper = Enumerable.Range(0, n).Select(_ => (IReadOnlyDictionary<string, string>)new Dictionary<string, string> { ["h"] = rng.Next(2).ToString(), ["k"] = rng.Next(3).ToString() }).ToList();
        var pairs = (from i in Enumerable.Range(0, n) from j in Enumerable.Range(0, n) where i != j select (i, j)).ToList();
        var va = pairs.Select(p => Math.Sign(mu[p.i] - mu[p.j])).ToArray();
        var vb = pairs.Select(p => Math.Sign(g[p.i] - g[p.j])).ToArray();
        var expected = new Dictionary<string, double>();
        foreach (var set in new[] { Array.Empty<string>(), ["h"], ["k"], new[] { "h", "k" } })
        {
            var u = pairs.Select(p => string.Join(";", set.Select(s => hyper[p.i][s] + ">" + hyper[p.j][s]))).ToArray();
            double reference = RefCmi(va, vb, u);
            expected[string.Join(",", set)] = reference;
            Assert.Equal(reference, RankStatistics.ConditionalMutualInformation(mu, g, hyper, set), 10);
        }
        var (min, arg) = RankStatistics.MinimumConditionalMutualInformation(mu, g, hyper, ["h", "k"], 1);
        Assert.Equal(Math.Min(expected["h"], expected["k"]), min, 10);
        Assert.Equal(expected["h"] <= expected["k"] ? "h" : "k", Assert.Single(arg));
        // In the study's analysis: |S| = 2 with two hyperparameters is the one set {h, k}.
        var models = Enumerable.Range(0, n).Select(i => Model($"m{i}", g[i], new() { ["m"] = mu[i] }, hyper[i].ToDictionary(kv => kv.Key, kv => kv.Value))).ToList();
        var a = StudyStatistics.Analyze(models, new StatisticsOptions { Resamples = 50 });
        Assert.Equal(2, a.ConditioningSize);
        Assert.Equal(1, a.ConditioningSets);
        Assert.Equal(n * (n - 1), a.Pairs);
        Assert.Equal(expected["h,k"], a.Rows[0].ConditionalMutualInformation, 10);
        Assert.Equal(expected[""], a.Rows[0].MutualInformation, 10);
    }
}
