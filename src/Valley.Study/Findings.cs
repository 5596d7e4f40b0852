namespace Valley.Study;

/// <summary>Short plain-language findings generated from the numbers, including when they do not support the seed's claim.</summary>
internal static class Findings
{
    public static List<string> Write(IReadOnlyList<ModelMeasurements> models, IReadOnlyList<TauRow> tau, StudyOptions o)
    {
        var f = new List<string>();
        string P(double v) => $"{100 * v:F2}%";
        // A zoo's models.csv may have no optimizer, batch size or seed: those findings are then left out.
        string? H(ModelMeasurements m, string key) => m.Hyperparameters.GetValueOrDefault(key);
        foreach (var seed in models.Select(m => H(m, "seed")).Distinct())
        {
            var adam = models.Where(m => H(m, "optimizer") == "adam" && H(m, "seed") == seed && long.TryParse(H(m, "batch_size"), out _))
                .OrderBy(m => long.Parse(m.Hyperparameters["batch_size"])).ToList();
            if (adam.Count >= 2 && adam.All(m => m.Measures.ContainsKey("lambda_max")))
            {
                var sb = adam[0]; var lb = adam[^1];
                double ls = sb.Measures["lambda_max"], ll = lb.Measures["lambda_max"];
                bool sharper = ll > ls;
                bool worse = lb.AccuracyGap > sb.AccuracyGap;
                bool lowerTest = lb.TestAccuracy < sb.TestAccuracy;
                f.Add($"Seed {seed}: large-batch Adam (batch {lb.Hyperparameters["batch_size"]}) ended {(sharper ? "sharper" : "flatter")} than small-batch Adam " +
                      $"(batch {sb.Hyperparameters["batch_size"]}): λmax {ll:G4} vs {ls:G4} ({ll / ls:F2}×), Keskar ε-sharpness (ε = 1e-3) " +
                      $"{lb.Measures.GetValueOrDefault("keskar_eps1e-3"):G4} vs {sb.Measures.GetValueOrDefault("keskar_eps1e-3"):G4}. Its test accuracy is {P(lb.TestAccuracy)} vs {P(sb.TestAccuracy)} " +
                      $"and its accuracy gap {P(lb.AccuracyGap)} vs {P(sb.AccuracyGap)}. " +
                      (sharper && worse ? "This is the direction Keskar et al. (2017) report: the sharper large-batch minimum has the larger generalization gap."
                       : sharper && lowerTest ? "The large-batch minimum is sharper and tests worse, but its train-test gap is not larger" +
                         (lb.TrainAccuracy < sb.TrainAccuracy ? " (it also fits the training set less well)" : "") + ", so by the gap this pair does not support the claim."
                       : sharper ? "The large-batch minimum is sharper, but it does not generalize worse here, so this pair does not support the claim."
                       : "Here the large-batch minimum is not sharper, so this pair does not reproduce Keskar et al.'s observation."));
            }
            var sgd = models.FirstOrDefault(m => H(m, "optimizer") == "sgd" && H(m, "seed") == seed);
            var sam = models.FirstOrDefault(m => H(m, "optimizer") == "sam" && H(m, "seed") == seed);
            if (sgd is not null && sam is not null && H(sgd, "batch_size") == H(sam, "batch_size") && sgd.Measures.ContainsKey("lambda_max") && sam.Measures.ContainsKey("lambda_max"))
            {
                double a = sgd.Measures["lambda_max"], b = sam.Measures["lambda_max"];
                f.Add($"Seed {seed}: SAM (ρ = 0.05) at batch {sam.Hyperparameters["batch_size"]} found a {(b < a ? "flatter" : "sharper")} minimum than SGD with the same base: " +
                      $"λmax {b:G4} vs {a:G4}; test accuracy {P(sam.TestAccuracy)} vs {P(sgd.TestAccuracy)}" +
                      (b < a && sam.TestAccuracy >= sgd.TestAccuracy ? ", as Foret et al. (2021) lead one to expect." : b < a ? ", though without better test accuracy here." : "; this run does not show SAM's expected effect."));
            }
        }
        var ranked = tau.Where(t => double.IsFinite(t.TauAccuracyGap)).ToList();
        if (ranked.Count > 0)
        {
            var best = ranked[0];
            var lam = ranked.FirstOrDefault(t => t.Measure == "lambda_max");
            int n = models.Count;
            f.Add($"Across the {n} models, the measure whose ranking agrees best with the accuracy gap is {best.Measure} (Kendall τ = {best.TauAccuracyGap:+0.00;-0.00}" +
                  (double.IsFinite(best.GranulatedPsi) ? $", granulated Ψ = {best.GranulatedPsi:+0.00;-0.00}" : "") + ")" +
                  (lam is null ? "." : $"; λmax has τ = {lam.TauAccuracyGap:+0.00;-0.00}.") +
                  (best.TauAccuracyGap < 0 ? " Its sign is negative: sharper by this measure went with a smaller gap." : ""));
            f.Add($"With {n} models there are only {n * (n - 1) / 2} pairs, so one pair changes τ by {2.0 / (n * (n - 1) / 2):F2}: read these correlations as indicative, " +
                  "not as a ranking of measures (Jiang et al. 2020 used thousands of models). " + (o.Preset == "full" ? "" : "The full preset (--preset full) trains three seeds on the full training set."));
        }
        var flatness = new[] { "pacbayes_flatness", "pacbayes_mag_flatness" };
        f.Add("Reading the table: larger values mean sharper for every measure except " + string.Join(" and ", flatness) +
              " (1/σ², larger also means sharper: a smaller tolerated noise); accuracy gap = train − test accuracy, loss gap = test − train loss.");
        return f;
    }
}
