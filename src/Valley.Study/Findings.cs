using System.Globalization;

namespace Valley.Study;

/// <summary>
/// Short plain-language findings generated from the numbers: each claim only as strong as its 95% interval allows
/// ("inconclusive" when the interval contains zero), with the number of models and the intervals' width stated.
/// Works for any hyperparameter columns (a model zoo may have none of optimizer, batch size or seed).
/// </summary>
internal static class Findings
{
    static string T(double v) => double.IsFinite(v) ? v.ToString("+0.00;-0.00;0.00", CultureInfo.InvariantCulture) : "–";
    static string Ci(TauEstimate t) => $"{T(t.Tau)} [{T(t.Lower)}, {T(t.Upper)}]";

    public static List<string> Write(IReadOnlyList<ModelMeasurements> models, RankingAnalysis r, StudyOptions o)
    {
        var f = new List<string>();
        PairFindings(models, f);
        int n = models.Count;
        string level = $"{100 * r.Options.Confidence:0.#}%";
        var rows = r.Rows.Where(x => double.IsFinite(x.AccuracyGap.Tau)).ToList();
        if (rows.Count == 0) { f.Add($"With {n} models no measure had a defined Kendall τ with the accuracy gap (a constant measure or gap)."); return f; }
        var widths = rows.Where(x => double.IsFinite(x.AccuracyGap.Lower)).Select(x => x.AccuracyGap.Upper - x.AccuracyGap.Lower).OrderBy(w => w).ToList();
        string width = widths.Count > 0 ? $"; the {level} bootstrap intervals of τ are {widths[widths.Count / 2]:F2} wide (median over {widths.Count} measures and baselines)" : "";
        f.Add($"{n} models ({n * (n - 1) / 2} pairs; one pair moves τ by about {4.0 / (n * (n - 1)):F2}){width}. " +
              "A measure is only called predictive here when its interval excludes zero and its permutation p-value is at most " +
              $"{1 - r.Options.Confidence:0.###}.");

        var sig = rows.Where(x => x.DistinguishableFromZero).ToList();
        if (sig.Count == 0)
            f.Add($"No measure or baseline has a τ with the accuracy gap that is told apart from zero ({level} interval and permutation test): with these {n} models the ranking is inconclusive " +
                  $"(the top by lower bound, {rows[0].Measure}, has τ = {Ci(rows[0].AccuracyGap)}).");
        else
        {
            var pos = sig.Where(x => x.AccuracyGap.Tau > 0).Select(x => $"{x.Measure} {Ci(x.AccuracyGap)}").ToList();
            var neg = sig.Where(x => x.AccuracyGap.Tau < 0).Select(x => $"{x.Measure} {Ci(x.AccuracyGap)}").ToList();
            if (pos.Count > 0) f.Add($"Ranks the models' accuracy gaps in the expected direction (larger value, larger gap; {level} interval above zero): {string.Join("; ", pos)}.");
            if (neg.Count > 0) f.Add($"Reversed (larger value, smaller gap; interval below zero): {string.Join("; ", neg)}.");
            f.Add($"Every other measure and baseline is inconclusive at this number of models (its interval contains zero, or its permutation p-value is above {1 - r.Options.Confidence:0.###}).");
        }

        var lam = rows.FirstOrDefault(x => x.Measure == "lambda_max");
        if (lam is not null)
        {
            var t = lam.AccuracyGap;
            f.Add($"Sharp minima generalize worse? By λmax: τ = {Ci(t)}, permutation p = {t.PValue:G2}. " +
                  (!lam.DistinguishableFromZero ? (t.ExcludesZero ? "The interval excludes zero but the permutation test does not: inconclusive for these models." : "The interval contains zero: inconclusive for these models.")
                   : t.Tau > 0 ? "Both the interval and the permutation test put it above zero: for these models, sharper by λmax went with a larger accuracy gap."
                   : "Both the interval and the permutation test put it below zero: for these models, sharper by λmax went with a smaller accuracy gap, against the claim."));
        }

        if (r.BestBaseline is { } bb && rows.FirstOrDefault(x => x.Measure == bb) is { } b)
        {
            var sharp = rows.Where(x => !x.IsBaseline && x.ComparedWithBestBaseline is not null).ToList();
            var better = sharp.Where(x => x.ComparedWithBestBaseline == "better").Select(x => x.Measure).ToList();
            var worse = sharp.Where(x => x.ComparedWithBestBaseline == "worse").Select(x => x.Measure).ToList();
            f.Add($"The best baseline by lower bound is {bb} (τ = {Ci(b.AccuracyGap)}). " +
                  (better.Count > 0 ? $"Distinguishably better than it (paired bootstrap of the oriented τ difference): {string.Join(", ", better)}. " : "No curvature or sharpness measure is distinguishably better than it. ") +
                  (worse.Count > 0 ? $"Distinguishably worse: {string.Join(", ", worse)}. " : "") +
                  $"{sharp.Count - better.Count - worse.Count} of {sharp.Count} measures are indistinguishable from it at this n.");
        }

        if (r.SeedValues.Count > 1)
        {
            var robust = rows.Where(x => x.Seeds is > 0 && x.SeedsAgreeing == x.Seeds).Select(x => x.Measure).ToList();
            f.Add($"Across {r.SeedValues.Count} seeds, " + (robust.Count > 0
                ? $"τ within each seed had the pooled sign for {string.Join(", ", robust)}; the others changed sign in at least one seed (Dziugaite et al. 2020: a measure that is not robust across such splits does not predict the gap)."
                : "no measure kept the pooled sign of τ within every seed."));
        }
        if (r.Hyperparameters.Count > 0)
            f.Add($"Ψ (granulated τ) averages τ within groups that differ in one of {string.Join(", ", r.Hyperparameters)}; the CMI conditions on {r.ConditioningSize} of them at a time " +
                  $"({r.ConditioningSets} sets, {r.Pairs} ordered pairs of models); 0 means the measure carries no information about the gap's sign beyond the conditioning set.");
        if (n < 30) f.Add($"With {n} models these are indications, not a ranking of measures (Jiang et al. 2020 used thousands of models)." +
                          (o.Preset is "quick" or "default" ? " The full preset (--preset full) trains more models." : ""));
        f.Add("Reading the table: larger values mean sharper for every measure (the flatness measures enter as 1/σ², larger also means sharper), and larger = more complex for " +
              "every baseline (the margin enters negated); accuracy gap = train − test accuracy, loss gap = test − train loss.");
        return f;
    }

    /// <summary>Keskar's large- vs small-batch and SAM vs SGD comparisons, when the grid has those hyperparameters.</summary>
    static void PairFindings(IReadOnlyList<ModelMeasurements> models, List<string> f)
    {
        if (!models.All(m => m.Hyperparameters.ContainsKey("optimizer") && m.Hyperparameters.ContainsKey("batch_size") && m.Hyperparameters.ContainsKey("seed")
                             && m.Measures.ContainsKey("lambda_max"))) return;
        string P(double v) => $"{100 * v:F2}%";
        string? H(ModelMeasurements m, string key) => m.Hyperparameters.GetValueOrDefault(key);
        static string Others(ModelMeasurements m, params string[] except) =>
            string.Join("\u001f", m.Hyperparameters.Where(kv => !except.Contains(kv.Key)).OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value));
        static long Batch(ModelMeasurements m) => long.TryParse(m.Hyperparameters["batch_size"], NumberStyles.Integer, CultureInfo.InvariantCulture, out var b) ? b : 0;
        foreach (var seed in models.Select(m => m.Hyperparameters["seed"]).Distinct())
        {
            // A pair differs in the compared setting only: the first group of Adam models alike in every other hyperparameter.
            var adam = models.Where(m => m.Hyperparameters["optimizer"] == "adam" && m.Hyperparameters["seed"] == seed)
                .GroupBy(m => Others(m, "batch_size")).Select(g => g.OrderBy(Batch).ToList()).FirstOrDefault(g => g.Count >= 2 && Batch(g[0]) != Batch(g[^1])) ?? [];
            if (adam.Count >= 2)
            {
                var sb = adam[0]; var lb = adam[^1];
                double ls = sb.Measures["lambda_max"], ll = lb.Measures["lambda_max"];
                bool sharper = ll > ls;
                f.Add($"Seed {seed}: large-batch Adam (batch {lb.Hyperparameters["batch_size"]}) ended {(sharper ? "sharper" : "flatter")} than small-batch Adam " +
                      $"(batch {sb.Hyperparameters["batch_size"]}): λmax {ll:G4} vs {ls:G4}; accuracy gap {P(lb.AccuracyGap)} vs {P(sb.AccuracyGap)}. " +
                      "One pair is an anecdote; the ranking below says what the whole grid supports.");
            }
            var sam = models.FirstOrDefault(m => H(m, "optimizer") == "sam" && H(m, "seed") == seed);
            var sgd = sam is null ? null : models.FirstOrDefault(m => H(m, "optimizer") == "sgd" && Others(m, "optimizer", "rho") == Others(sam, "optimizer", "rho"));
            if (sgd is not null && sam is not null)
            {
                double a = sgd.Measures["lambda_max"], b = sam.Measures["lambda_max"];
                f.Add($"Seed {seed}: SAM at batch {sam.Hyperparameters["batch_size"]} found a {(b < a ? "flatter" : "sharper")} minimum than SGD with the same base: " +
                      $"λmax {b:G4} vs {a:G4}; test accuracy {P(sam.TestAccuracy)} vs {P(sgd.TestAccuracy)} (one pair).");
            }
        }
    }
}
