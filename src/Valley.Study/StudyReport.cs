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
        b.Append("<h2>Models</h2><div style=\"overflow-x:auto\"><table><tr><th>model</th><th>epochs</th><th>train loss</th><th>test loss</th><th>train acc</th><th>test acc</th><th>acc gap</th><th>loss gap</th>");
        foreach (var k in keys) b.Append($"<th>{E(k)}</th>");
        b.Append("</tr>");
        foreach (var m in s.Models)
        {
            b.Append($"<tr><td>{E(m.Name)}</td><td>{m.Epochs}</td><td>{m.TrainLoss:G4}</td><td>{m.TestLoss:G4}</td><td>{100 * m.TrainAccuracy:F2}%</td><td>{100 * m.TestAccuracy:F2}%</td><td>{100 * m.AccuracyGap:F2}%</td><td>{m.LossGap:G3}</td>");
            foreach (var k in keys)
                b.Append($"<td>{m.Measures.GetValueOrDefault(k, double.NaN):G4}{(m.StandardErrors.TryGetValue(k, out var se) ? $" ± {se:G2}" : "")}</td>");
            b.Append("</tr>");
        }
        b.Append("</table></div>");
        b.Append("<h2>Which measure predicts the generalization gap?</h2><p>Kendall τ between each measure and the gaps across the models; Ψ is Jiang et al.'s (2020) granulated τ over the varied hyperparameters.</p>");
        b.Append("<table><tr><th>measure</th><th>τ (accuracy gap)</th><th>τ (loss gap)</th><th>Ψ</th><th>per hyperparameter</th></tr>");
        foreach (var t in s.Tau)
            b.Append($"<tr><td>{E(t.Measure)}</td><td>{t.TauAccuracyGap:+0.00;-0.00}</td><td>{t.TauLossGap:+0.00;-0.00}</td><td>{(double.IsFinite(t.GranulatedPsi) ? t.GranulatedPsi.ToString("+0.00;-0.00") : "–")}</td><td>{E(string.Join(", ", t.PerHyperparameter.Select(kv => $"{kv.Key} {kv.Value:+0.00;-0.00}")))}</td></tr>");
        b.Append("</table>");
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
