using System.Diagnostics;
using System.Globalization;
using Valley.Data;
using Valley.Study;
using Xunit;

namespace Valley.Tests.Study;

public class StudyTests
{
    public StudyTests() => TestUtil.Init();

    [Fact]
    public void KendallTauMatchesHandCountsAndGranulatedTauAveragesGroups()
    {
        Assert.Equal(1.0, KendallTau.Compute([1, 2, 3, 4], [10, 20, 30, 40]));
        Assert.Equal(-1.0, KendallTau.Compute([1, 2, 3], [3, 2, 1]));
        // 6 pairs: (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+ → (5 − 1)/6.
        Assert.Equal(4.0 / 6, KendallTau.Compute([1, 2, 3, 4], [1, 3, 2, 4]), 12);
        var hyper = new List<IReadOnlyDictionary<string, string>>
        {
            new Dictionary<string, string> { ["b"] = "1", ["o"] = "x" }, new Dictionary<string, string> { ["b"] = "2", ["o"] = "x" },
            new Dictionary<string, string> { ["b"] = "1", ["o"] = "y" }, new Dictionary<string, string> { ["b"] = "2", ["o"] = "y" },
        };
        var (psi, per) = KendallTau.Granulated(hyper, [1, 2, 3, 4], [1, 2, 4, 3]);
        Assert.Equal(0.0, per["b"]);   // within optimizer x the measure and gap agree on b (τ = 1), within y they disagree (τ = −1)
        Assert.Equal(1.0, per["o"]);   // within each batch size, y has both the larger measure and the larger gap
        Assert.Equal(0.5, psi);
    }

    [Fact]
    public void ReportEscapesEveryStringFromUsers()
    {
        var evil = "<script>alert('x')</script>";
        var m = new ModelMeasurements
        {
            Name = evil, Hyperparameters = new() { ["batch_size"] = "1", ["optimizer"] = "adam", ["seed"] = "0" }, Epochs = 1,
            TrainLoss = 0.1, TrainAccuracy = 0.9, TestLoss = 0.2, TestAccuracy = 0.8, Measures = new() { [evil] = 1 }, StandardErrors = [],
            Baselines = new() { [evil + "b"] = 2 }, BaselineNotes = new() { [evil + "n"] = evil },
        };
        var tau = new TauEstimate(0.5, 0.1, 0.9, 0.2, true);
        var ranking = new RankingAnalysis
        {
            Models = 2, Options = new StatisticsOptions(), Hyperparameters = [evil], SeedValues = [evil, "1"], BestBaseline = evil,
            Rows = [new MeasureRanking { Measure = evil, AccuracyGap = tau, LossGap = tau, Psi = new Estimate(0.5, 0, 1), PerHyperparameter = new() { [evil] = new Estimate(0.5, 0, 1) },
                                         ConditionedOn = [evil], ComparedWithBestBaseline = "better", VersusBestBaseline = new Estimate(0.1, 0, 0.2), Seeds = 2, SeedsAgreeing = 1 }],
        };
        var summary = new StudySummary
        {
            Options = StudyOptions.For("quick") with { Model = evil }, Data = evil + ".csv", Models = [m, m with { Name = "b" }],
            Ranking = ranking, Findings = [evil],
        };
        var html = StudyReport.Html(summary, TestUtil.TempDir("report-escape"));
        Assert.DoesNotContain("<script>alert", html);
        Assert.Contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;", html);
    }

    [Fact]
    public void QuickStudyWritesEveryFileAndResumesToTheSameResults()
    {
        if (!Directory.Exists(DataSources.FashionMnistFolder)) return; // installed by scripts/setup.sh
        using var split = DataSources.Open(null);
        var o = StudyOptions.For("quick");
        var full = TestUtil.TempDir("study-full");
        var a = StudyRunner.Run(o, split, full);
        foreach (var f in new[] { "report.html", "summary.json", "results.csv", "parametric.png", "slices.png", "contours.png", "densities.png", "scatter.png" })
            Assert.True(File.Exists(Path.Combine(full, f)), f);
        foreach (var m in o.Models) Assert.True(File.Exists(Path.Combine(full, "models", m.Name, "model.dat")), m.Name);
        string[] expected = ["lambda_max", "trace", "negative_mass", "keskar_eps1e-3", "keskar_eps5e-4", "sam_one_step", "worst_case_l2_adaptive",
                             "average_case_adaptive", "pacbayes_flatness", "pacbayes_mag_flatness", "fisher_trace", "relative_flatness"];
        Assert.All(a.Models, m => Assert.All(expected, k => Assert.True(m.Measures.ContainsKey(k), $"{m.Name} lacks {k}")));
        // Every baseline is defined for a Valley-trained ReLU MLP (initial weights and steps are known).
        string[] baselines = ["param_norm", "dist_from_init", "prod_spectral", "prod_frobenius", "path_norm", "neg_margin_p10", "steps"];
        Assert.All(a.Models, m => Assert.All(baselines, k => Assert.True(m.Baselines.ContainsKey(k), $"{m.Name} lacks {k}")));
        Assert.All(a.Models, m => Assert.True(m.Baselines["steps"] >= m.Epochs));
        Assert.Equal(a.Ranking.Rows.OrderByDescending(r => r.SortKey).Select(r => r.Measure), a.Ranking.Rows.Select(r => r.Measure));
        Assert.Contains(a.Ranking.Rows, r => r.IsBaseline);
        // τ is in [−1, 1] and equals a direct computation on the stored table (measures and baselines alike).
        var rows = File.ReadAllLines(Path.Combine(full, "results.csv"));
        var header = rows[0].Split(',');
        int gapCol = Array.IndexOf(header, "accuracy_gap");
        foreach (var t in a.Ranking.Rows)
        {
            Assert.InRange(t.AccuracyGap.Tau, -1, 1);
            Assert.True(t.AccuracyGap.Lower <= t.AccuracyGap.Upper || double.IsNaN(t.AccuracyGap.Lower), t.Measure);
            int col = Array.IndexOf(header, t.Measure);
            var xs = rows.Skip(1).Select(r => double.Parse(r.Split(',')[col], CultureInfo.InvariantCulture)).ToList();
            var gs = rows.Skip(1).Select(r => double.Parse(r.Split(',')[gapCol], CultureInfo.InvariantCulture)).ToList();
            Assert.Equal(KendallTau.Compute(xs, gs), t.AccuracyGap.Tau, 12);
        }
        // Stopped after its first model, then rerun: the same results.
        var part = TestUtil.TempDir("study-part");
        using (var cts = new CancellationTokenSource())
        {
            var stopAfterFirst = new Valley.Curvature.Spectrum.SyncProgress<StudyProgress>(p => { if (p.Stage.StartsWith("training " + o.Models[1].Name)) cts.Cancel(); });
            Assert.ThrowsAny<OperationCanceledException>(() => StudyRunner.Run(o, split, part, stopAfterFirst, cts.Token));
        }
        Assert.True(File.Exists(Path.Combine(part, "models", o.Models[0].Name, "measures.json")));
        var b = StudyRunner.Run(o, split, part);
        for (int i = 0; i < a.Models.Count; i++)
        {
            Assert.Equal(a.Models[i].TestAccuracy, b.Models[i].TestAccuracy);
            Assert.Equal(a.Models[i].Measures, b.Models[i].Measures);
        }
        // The report is self-contained and renders offline.
        var html = File.ReadAllText(Path.Combine(full, "report.html"));
        Assert.DoesNotMatch(@"(src|href)\s*=\s*[""']?(https?:)?//", html);
        Assert.Contains("data:image/png;base64,", html);
        if (!File.Exists("/usr/bin/chromium")) return;
        var script = Path.Combine(Valley.Tests.Landscape.LandscapeTests.RepoRoot(), "scripts", "render-html.sh");
        var psi = new ProcessStartInfo("bash", [script, Path.Combine(full, "report.html"), Path.Combine(full, "report.png")]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var proc = Process.Start(psi)!;
        var dom = proc.StandardOutput.ReadToEnd();
        proc.WaitForExit();
        Assert.Contains("Which measure predicts the generalization gap?", dom);
        Assert.True(new FileInfo(Path.Combine(full, "report.png")).Length > 10_000);
    }
}
