using System.Text;
using Valley.Reporting;

namespace Valley.Study;

/// <summary>The self-contained HTML report: every figure embedded as a data URI, tables, the τ ranking and the findings.</summary>
public static class StudyReport
{
    /// <summary>The self-contained report.html of a study (figures from <paramref name="dir"/> inlined, every user string escaped).</summary>
    public static string Html(StudySummary s, string dir)
    {
        string E(string x) => Reporting.Html.Escape(x);
        var b = new StringBuilder();
        b.Append($"<h1>Sharp or flat? Valley study ({E(s.Options.Preset)} preset)</h1>");
        b.Append($"<p>{E(s.Options.Model)} on {E(s.Data)}. Each model trained until its full training loss fell below {s.Options.StopAtLoss} " +
                 $"(or {s.Options.MaxEpochs} epochs); curvature and sharpness measured on {s.Options.MeasureExamples} training examples. {s.Seconds:F0} s in all.</p>");
        b.Append("<h2>Findings</h2><ul>");
        foreach (var f in s.Findings) b.Append($"<li>{E(f)}</li>");
        b.Append("</ul>");
        var keys = s.Models.SelectMany(m => m.Measures.Keys).Distinct().ToList();
        var baselines = s.Models.SelectMany(m => m.Baselines.Keys).Distinct().ToList();
        b.Append("<h2>Models</h2><div style=\"overflow-x:auto\"><table><tr><th>model</th><th>epochs</th><th>train loss</th><th>test loss</th><th>train acc</th><th>test acc</th><th>acc gap</th><th>loss gap</th>");
        foreach (var k in keys) b.Append($"<th>{E(k)}</th>");
        foreach (var k in baselines) b.Append($"<th>{E(k)} (baseline)</th>");
        b.Append("</tr>");
        foreach (var m in s.Models)
        {
            b.Append($"<tr><td>{E(m.Name)}</td><td>{m.Epochs}</td><td>{m.TrainLoss:G4}</td><td>{m.TestLoss:G4}</td><td>{100 * m.TrainAccuracy:F2}%</td><td>{100 * m.TestAccuracy:F2}%</td><td>{100 * m.AccuracyGap:F2}%</td><td>{m.LossGap:G3}</td>");
            foreach (var k in keys)
                b.Append($"<td>{m.Measures.GetValueOrDefault(k, double.NaN):G4}{(m.StandardErrors.TryGetValue(k, out var se) ? $" ± {se:G2}" : "")}</td>");
            foreach (var k in baselines)
                b.Append(m.Baselines.TryGetValue(k, out var v) ? $"<td>{v:G4}</td>" : $"<td title=\"{E(m.BaselineNotes.GetValueOrDefault(k, ""))}\">undefined</td>");
            b.Append("</tr>");
        }
        b.Append("</table></div>");
        var undefinedNotes = s.Models.SelectMany(m => m.BaselineNotes).GroupBy(kv => kv.Key).Select(g => $"{g.Key}: {g.First().Value}").ToList();
        if (undefinedNotes.Count > 0) b.Append($"<p>Baselines not defined for these models: {E(string.Join("; ", undefinedNotes))}.</p>");
        var r = s.Ranking;
        string level = $"{100 * r.Options.Confidence:0.#}%";
        b.Append("<h2>Which measure predicts the generalization gap?</h2>");
        b.Append($"<p>Kendall τ<sub>b</sub> between each measure (or baseline) and the gaps across the {r.Models} models, with {level} percentile bootstrap intervals " +
                 $"({r.Options.Resamples} resamples of the models, seed {r.Options.Seed}) and two-sided permutation p-values " +
                 $"({(r.Models <= r.Options.ExactPermutationUpTo ? "exact, every permutation" : $"{r.Options.Permutations} permutations, +1 correction")}). " +
                 "Sorted by the lower bound of the interval of τ taken in the measure's own direction: a negative τ is ranked by how far its upper bound is below zero and marked reversed. " +
                 "Ψ: Jiang et al.'s (2020) granulated τ" + (r.Hyperparameters.Count > 0 ? $" over {E(string.Join(", ", r.Hyperparameters))}" : " (no varied hyperparameter: undefined)") +
                 ", its interval from the same resamples. " +
                 $"CMI: Jiang et al.'s conditional mutual information between the signs of the measure's and the accuracy gap's differences over {r.Pairs} ordered pairs, " +
                 $"normalized by the gap sign's conditional entropy, minimized over the {r.ConditioningSets} sets of {r.ConditioningSize} hyperparameters (|S| = {r.ConditioningSize}); MI: the same without conditioning. " +
                 (r.SeedValues.Count > 1 ? $"Seeds: in how many of the {r.SeedValues.Count} seeds τ within the seed's models has the pooled sign. " : "") +
                 $"≠0: the interval of τ excludes zero and p ≤ {1 - r.Options.Confidence:0.###} (the percentile bootstrap alone is degenerate for a handful of models). vs best baseline: paired bootstrap interval of the difference in oriented τ with " +
                 (r.BestBaseline is null ? "the best baseline (none here)." : $"{E(r.BestBaseline)}, the best baseline.") + "</p>");
        string T(double v) => double.IsFinite(v) ? v.ToString("+0.00;-0.00;0.00", System.Globalization.CultureInfo.InvariantCulture) : "–";
        string Ci(double v, double lo, double hi) => $"{T(v)} [{T(lo)}, {T(hi)}]";
        b.Append("<div style=\"overflow-x:auto\"><table><tr><th>measure</th><th>τ (accuracy gap)</th><th>p</th><th>τ (loss gap)</th><th>p</th><th>Ψ</th><th>per hyperparameter</th><th>CMI</th><th>MI</th>" +
                 (r.SeedValues.Count > 1 ? "<th>seeds agreeing</th>" : "") + "<th>≠0</th><th>vs best baseline</th></tr>");
        foreach (var t in r.Rows)
        {
            var a = t.AccuracyGap;
            b.Append($"<tr><td>{E(t.Measure)}{(t.IsBaseline ? " <i>(baseline)</i>" : "")}</td><td>{Ci(a.Tau, a.Lower, a.Upper)}</td><td>{a.PValue:G2}</td>" +
                     $"<td>{Ci(t.LossGap.Tau, t.LossGap.Lower, t.LossGap.Upper)}</td><td>{t.LossGap.PValue:G2}</td><td>{Ci(t.Psi.Value, t.Psi.Lower, t.Psi.Upper)}</td>" +
                     $"<td>{E(string.Join("; ", t.PerHyperparameter.Select(kv => $"{kv.Key} {Ci(kv.Value.Value, kv.Value.Lower, kv.Value.Upper)}")))}</td>" +
                     $"<td>{(double.IsFinite(t.ConditionalMutualInformation) ? t.ConditionalMutualInformation.ToString("F3", System.Globalization.CultureInfo.InvariantCulture) : "–")}" +
                     $"{(t.ConditionedOn.Count > 0 ? $" <small>| {E(string.Join(", ", t.ConditionedOn))}</small>" : "")}</td>" +
                     $"<td>{(double.IsFinite(t.MutualInformation) ? t.MutualInformation.ToString("F3", System.Globalization.CultureInfo.InvariantCulture) : "–")}</td>" +
                     (r.SeedValues.Count > 1 ? $"<td>{(t.Seeds is > 0 ? $"{t.SeedsAgreeing}/{t.Seeds}" : "–")}</td>" : "") +
                     $"<td>{(t.DistinguishableFromZero ? (a.Tau > 0 ? "yes" : "yes (reversed)") : "no: inconclusive")}</td>" +
                     $"<td>{(t.VersusBestBaseline is { } d ? $"{E(t.ComparedWithBestBaseline ?? "–")} {Ci(d.Value, d.Lower, d.Upper)}" : t.Measure == r.BestBaseline ? "best baseline" : "–")}</td></tr>");
        }
        b.Append("</table></div>");
        foreach (var (file, caption) in new[]
        {
            ("parametric.png", "Keskar et al.'s parametric plot: loss and accuracy along the line from the small-batch to the large-batch solution (α ∈ [−1, 2]); dashed: test."),
            ("slices.png", "Filter-normalized 1D slices (Li et al. 2018) of every model."),
            ("contours.png", "2D filter-normalized contours of the flattest and the sharpest model by λmax."),
            ("densities.png", "Hessian eigenvalue densities by stochastic Lanczos quadrature."),
            ("scatter.png", "The best-ranked measures against the accuracy gap."),
        })
        {
            var path = Path.Combine(dir, file);
            if (!File.Exists(path)) continue;
            b.Append($"<figure><img alt=\"{E(file)}\" src=\"data:image/png;base64,{Convert.ToBase64String(File.ReadAllBytes(path))}\"><figcaption>{E(caption)}</figcaption></figure>");
        }
        foreach (var n in s.Notes) b.Append($"<p><em>{E(n)}</em></p>");
        b.Append("<p>Definitions and references: Valley's README and docs/design.md §4–§8 (in the repository).</p>");
        return Reporting.Html.Page("Valley study", b.ToString(), plotly: false).Replace("<body>", "<body data-rendered=\"yes\">");
    }
}
