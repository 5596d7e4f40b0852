namespace Valley.Study;

/// <summary>
/// The rank statistics of the study, each deterministic given its seed: Kendall τ_b on resampled models, percentile bootstrap
/// intervals, permutation p-values, Jiang et al.'s (2020) granulated τ and conditional mutual information, and the sign
/// agreement across seeds. Random numbers come from <see cref="Random"/> seeded with the given seed (the same sequence on every
/// platform), drawn in the order each method documents, so a reader can reproduce every interval.
/// </summary>
public static class RankStatistics
{
    /// <summary>
    /// Bootstrap resamples of n models: <paramref name="resamples"/> arrays of n indices, drawn as
    /// <c>rng = new Random((int)seed)</c>, then for each resample b and position i in order, <c>rng.Next(n)</c>.
    /// Every measure of a study uses the same resamples, which makes paired comparisons possible.
    /// </summary>
    public static int[][] BootstrapIndices(int n, int resamples, long seed)
    {
        Check.AtLeast(n, 1, nameof(n));
        Check.AtLeast(resamples, 1, nameof(resamples));
        var rng = new Random(unchecked((int)seed));
        var idx = new int[resamples][];
        for (int b = 0; b < resamples; b++)
        {
            idx[b] = new int[n];
            for (int i = 0; i < n; i++) idx[b][i] = rng.Next(n);
        }
        return idx;
    }

    /// <summary>Kendall τ_b of (x[k], y[k]) for k in <paramref name="idx"/> (repeated indices are pairs tied in both: skipped); NaN when either is constant.</summary>
    public static double Tau(IReadOnlyList<double> x, IReadOnlyList<double> y, IReadOnlyList<int> idx)
    {
        long c = 0, d = 0, tx = 0, ty = 0;
        for (int a = 0; a < idx.Count; a++)
            for (int b = a + 1; b < idx.Count; b++)
            {
                int i = idx[a], j = idx[b];
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
    /// Percentile interval at <paramref name="confidence"/> (e.g. 0.95: the 2.5th and 97.5th percentiles) of the finite
    /// replicates, with linear interpolation between order statistics; (NaN, NaN) when fewer than 10 replicates are finite
    /// (replicates whose resample makes a variable constant have no τ and are left out).
    /// </summary>
    public static (double Lower, double Upper) PercentileInterval(IEnumerable<double> replicates, double confidence = 0.95)
    {
        var a = replicates.Where(double.IsFinite).OrderBy(v => v).ToArray();
        if (a.Length < 10) return (double.NaN, double.NaN);
        double alpha = (1 - confidence) / 2;
        return (Quantile(a, alpha), Quantile(a, 1 - alpha));
    }

    static double Quantile(double[] sorted, double q)
    {
        double pos = (sorted.Length - 1) * q;
        int lo = (int)Math.Floor(pos);
        int hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (pos - lo) * (sorted[hi] - sorted[lo]);
    }

    /// <summary>τ_b on each bootstrap resample (NaN where the resample makes a variable constant).</summary>
    public static double[] BootstrapTau(IReadOnlyList<double> x, IReadOnlyList<double> y, int[][] indices) =>
        indices.Select(idx => Tau(x, y, idx)).ToArray();

    /// <summary>
    /// Two-sided permutation p-value of τ_b(x, y) against "no association": the share of permutations of y whose |τ| is at
    /// least the observed |τ| (within 1e-12). Exact, by enumerating all n! permutations, when n ≤ <paramref name="exactUpTo"/>;
    /// otherwise Monte Carlo with <paramref name="permutations"/> Fisher–Yates shuffles (<c>rng = new Random((int)seed)</c>; for i
    /// from n − 1 down to 1, swap i with <c>rng.Next(i + 1)</c>) and the +1 correction: p = (1 + hits) / (1 + permutations), never 0.
    /// NaN when τ is undefined.
    /// </summary>
    public static (double PValue, bool Exact) PermutationPValue(IReadOnlyList<double> x, IReadOnlyList<double> y, int permutations = 2000, long seed = 0, int exactUpTo = 8)
    {
        if (x.Count != y.Count) throw new ArgumentException("permutation test: lengths differ");
        int n = x.Count;
        var all = Enumerable.Range(0, n).ToArray();
        double observed = Tau(x, y, all);
        if (!double.IsFinite(observed)) return (double.NaN, n <= exactUpTo);
        double threshold = Math.Abs(observed) - 1e-12;
        var perm = (int[])all.Clone();
        var yp = new double[n];
        double TauOf(int[] p) { for (int i = 0; i < n; i++) yp[i] = y[p[i]]; return Tau(x, yp, all); }
        if (n <= exactUpTo)
        {
            long hits = 0, total = 0;
            do { total++; if (Math.Abs(TauOf(perm)) >= threshold) hits++; } while (NextPermutation(perm));
            return ((double)hits / total, true);
        }
        Check.AtLeast(permutations, 1, nameof(permutations));
        var rng = new Random(unchecked((int)seed));
        long count = 0;
        for (int k = 0; k < permutations; k++)
        {
            for (int i = n - 1; i >= 1; i--) { int j = rng.Next(i + 1); (perm[i], perm[j]) = (perm[j], perm[i]); }
            if (Math.Abs(TauOf(perm)) >= threshold) count++;
        }
        return ((1.0 + count) / (1.0 + permutations), false);
    }

    /// <summary>Lexicographic successor of a permutation in place; false after the last one.</summary>
    static bool NextPermutation(int[] a)
    {
        int i = a.Length - 2;
        while (i >= 0 && a[i] >= a[i + 1]) i--;
        if (i < 0) return false;
        int j = a.Length - 1;
        while (a[j] <= a[i]) j--;
        (a[i], a[j]) = (a[j], a[i]);
        Array.Reverse(a, i + 1, a.Length - i - 1);
        return true;
    }

    /// <summary>
    /// Granulated τ (Jiang et al. 2020, §4.2, eq. 4) of the models in <paramref name="idx"/>: for each hyperparameter, the mean
    /// τ over groups of models that agree on every other hyperparameter and take at least two values of this one; Ψ the mean
    /// over hyperparameters that had such a group. Missing keys count as the empty value.
    /// </summary>
    public static (double Psi, Dictionary<string, double> PerHyperparameter) Granulated(IReadOnlyList<IReadOnlyDictionary<string, string>> hyper,
        IReadOnlyList<double> measure, IReadOnlyList<double> gap, IReadOnlyList<int>? idx = null)
    {
        idx ??= Enumerable.Range(0, hyper.Count).ToArray();
        return Granulated(GranulationKeys(hyper), measure, gap, idx);
    }

    /// <summary>
    /// For each hyperparameter (ordinal order): its name, every model's group key (the other hyperparameters' values, and
    /// <paramref name="fixedPart"/>, e.g. the seed, which Jiang et al.'s eq. 4 also holds fixed without averaging over it) and its own value.
    /// </summary>
    internal static (string Name, string[] Group, string[] Value)[] GranulationKeys(IReadOnlyList<IReadOnlyDictionary<string, string>> hyper, IReadOnlyList<string>? fixedPart = null)
    {
        var names = hyper.SelectMany(h => h.Keys).Distinct().OrderBy(k => k, StringComparer.Ordinal).ToList();
        return names.Select(h => (h,
            hyper.Select((m, i) => string.Join("\u001f", names.Where(n => n != h).Select(n => m.GetValueOrDefault(n, ""))) + "\u001d" + (fixedPart?[i] ?? "")).ToArray(),
            hyper.Select(m => m.GetValueOrDefault(h, "")).ToArray())).ToArray();
    }

    /// <summary>Ψ and ψ_h of the models in <paramref name="idx"/> from precomputed <see cref="GranulationKeys"/> (the bootstrap calls this once per resample).</summary>
    internal static (double Psi, Dictionary<string, double> PerHyperparameter) Granulated((string Name, string[] Group, string[] Value)[] keys,
        IReadOnlyList<double> measure, IReadOnlyList<double> gap, IReadOnlyList<int> idx)
    {
        var per = new Dictionary<string, double>();
        foreach (var (h, group, value) in keys)
        {
            var taus = new List<double>();
            foreach (var g in idx.GroupBy(i => group[i]))
            {
                var members = g.ToArray();
                if (members.Select(i => value[i]).Distinct().Count() < 2) continue;
                double t = Tau(measure, gap, members);
                if (double.IsFinite(t)) taus.Add(t);
            }
            if (taus.Count > 0) per[h] = taus.Average();
        }
        return (per.Count > 0 ? per.Values.Average() : double.NaN, per);
    }

    /// <summary>
    /// Jiang et al.'s (2020, §4, eq. 5) normalized conditional mutual information Î(V_μ; V_g | U_S) / Ĥ(V_g | U_S) over all ordered
    /// pairs of distinct models (i, j): V_μ = sign(μ_i − μ_j), V_g = sign(g_i − g_j) (ties are a third value), U_S = the pair's
    /// values of the hyperparameters in <paramref name="conditioning"/> (empty: plain mutual information). Natural logarithms;
    /// 1 when the measure's order determines the gap's within every cell, 0 when independent; NaN when the gap's sign is
    /// determined by U_S alone (Ĥ = 0) or there are fewer than two models.
    /// </summary>
    public static double ConditionalMutualInformation(IReadOnlyList<double> measure, IReadOnlyList<double> gap,
        IReadOnlyList<IReadOnlyDictionary<string, string>> hyper, IReadOnlyCollection<string> conditioning)
    {
        int n = measure.Count;
        // cell → counts of (V_μ, V_g) as 3×3 (sign + 1).
        var cells = new Dictionary<string, long[]>();
        long total = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                if (i == j) continue;
                string u = string.Join("\u001f", conditioning.Select(k => hyper[i].GetValueOrDefault(k, "") + "\u001e" + hyper[j].GetValueOrDefault(k, "")));
                if (!cells.TryGetValue(u, out var c)) cells[u] = c = new long[9];
                c[(Math.Sign(measure[i] - measure[j]) + 1) * 3 + Math.Sign(gap[i] - gap[j]) + 1]++;
                total++;
            }
        if (total == 0) return double.NaN;
        double mi = 0, h = 0;
        foreach (var c in cells.Values)
        {
            double nu = c.Sum();
            var pa = new double[3];
            var pb = new double[3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) { pa[a] += c[a * 3 + b] / nu; pb[b] += c[a * 3 + b] / nu; }
            double wu = nu / total;
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                {
                    double pab = c[a * 3 + b] / nu;
                    if (pab > 0) mi += wu * pab * Math.Log(pab / (pa[a] * pb[b]));
                }
            for (int b = 0; b < 3; b++) if (pb[b] > 0) h -= wu * pb[b] * Math.Log(pb[b]);
        }
        return h <= 1e-15 ? double.NaN : Math.Max(0, mi) / h;
    }

    /// <summary>
    /// Jiang et al.'s ranking quantity K(μ): the minimum of <see cref="ConditionalMutualInformation"/> over every set S of
    /// <paramref name="size"/> hyperparameters (NaN sets skipped), and the set attaining it.
    /// </summary>
    public static (double Value, IReadOnlyList<string> Set) MinimumConditionalMutualInformation(IReadOnlyList<double> measure, IReadOnlyList<double> gap,
        IReadOnlyList<IReadOnlyDictionary<string, string>> hyper, IReadOnlyList<string> hyperparameters, int size)
    {
        double best = double.NaN;
        IReadOnlyList<string> arg = [];
        foreach (var s in Subsets(hyperparameters, size))
        {
            double v = ConditionalMutualInformation(measure, gap, hyper, s);
            if (double.IsFinite(v) && !(v >= best)) { best = v; arg = s; }
        }
        return (best, arg);
    }

    static IEnumerable<string[]> Subsets(IReadOnlyList<string> items, int size)
    {
        if (size == 0) { yield return []; yield break; }
        for (int i = 0; i <= items.Count - size; i++)
            foreach (var rest in Subsets(items.Skip(i + 1).ToList(), size - 1))
                yield return [items[i], .. rest];
    }

    /// <summary>
    /// Sign agreement across seeds (in the spirit of Dziugaite et al. 2020's robustness): for each seed with at least two
    /// models whose τ is defined, whether τ among that seed's models has the sign of the pooled τ (a τ of 0 does not agree).
    /// Returns the agreeing seeds and the seeds counted; (0, 0) when no seed counts or the pooled τ is 0 or undefined.
    /// </summary>
    public static (int Agreeing, int Seeds) SignAgreement(IReadOnlyList<double> measure, IReadOnlyList<double> gap, IReadOnlyList<string> seeds)
    {
        var all = Enumerable.Range(0, measure.Count).ToArray();
        int pooled = Math.Sign(Tau(measure, gap, all) is var t && double.IsFinite(t) ? t : 0);
        if (pooled == 0) return (0, 0);
        int agree = 0, counted = 0;
        foreach (var g in all.GroupBy(i => seeds[i]))
        {
            var members = g.ToArray();
            if (members.Length < 2) continue;
            double ts = Tau(measure, gap, members);
            if (!double.IsFinite(ts)) continue;
            counted++;
            if (Math.Sign(ts) == pooled) agree++;
        }
        return (agree, counted);
    }
}
