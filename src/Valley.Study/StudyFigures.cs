using ScottPlot;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Landscape;
using Valley.Reporting;
using static TorchSharp.torch;

namespace Valley.Study;

/// <summary>The study's figures: Keskar's parametric plot, overlaid 1D slices, contours of the flattest and sharpest model, densities, scatter plots.</summary>
internal static class StudyFigures
{
    static readonly ScottPlot.Palettes.Category10 Palette = new();

    /// <summary>Draws every figure the study's models allow and returns a note for each one left out, saying why.</summary>
    public static List<string> WriteAll(StudySummary s, IReadOnlyDictionary<string, nn.Module<Tensor, Tensor>> models, Dataset train, Dataset test, Dataset measureData, string dir, CancellationToken ct)
    {
        var notes = new List<string>();
        if (Parametric(s, models, train, test, dir, ct) is { } p) notes.Add(p);
        Slices(s, models, measureData, dir, ct);
        if (Contours(s, models, measureData, dir, ct) is { } c) notes.Add(c);
        if (s.Models.Any(m => m.DensityNodes.Length > 0)) Densities(s, dir);
        else notes.Add("No density figure: negative_mass (the SLQ density) is not among the measures.");
        Scatters(s, dir);
        return notes;
    }

    static string? Hyper(ModelMeasurements m, string key) => m.Hyperparameters.GetValueOrDefault(key);

    /// <summary>Keskar's parametric plot between the small- and large-batch Adam models of the first seed.</summary>
    static string? Parametric(StudySummary s, IReadOnlyDictionary<string, nn.Module<Tensor, Tensor>> models, Dataset train, Dataset test, string dir, CancellationToken ct)
    {
        var o = s.Options;
        // The pair differs in batch size only where the grid allows: same seed, architecture, weight decay, learning rate and training set.
        var adam = s.Models.Where(m => Hyper(m, "optimizer") == "adam" && long.TryParse(Hyper(m, "batch_size"), out _))
            .GroupBy(m => string.Join("|", m.Hyperparameters.Where(kv => kv.Key != "batch_size").OrderBy(kv => kv.Key).Select(kv => $"{kv.Key}={kv.Value}")))
            .Select(g => g.OrderBy(m => long.Parse(Hyper(m, "batch_size")!, System.Globalization.CultureInfo.InvariantCulture)).ToList())
            .FirstOrDefault(g => g.Count >= 2 && g[0].Hyperparameters["batch_size"] != g[^1].Hyperparameters["batch_size"]);
        if (adam is null)
            return "No parametric plot: it needs two Adam models that differ in batch size only (Keskar et al.'s small- and large-batch pair).";
        var a = models[adam[0].Name];
        var b = models[adam[^1].Name];
        using var wb = ParameterSet.From(b).GetFlat();
        using var wa = ParameterSet.From(a).GetFlat();
        using var d = wb - wa;
        var grid = new LandscapeEvaluator(a, o.EffectiveLoss, train, test).Run(d, null,
            new GridSpec(GridSpec.Range(-1, 2, o.ParametricPoints), null), ct: ct, endpoint: wb, kind: "parametric");
        var xs = grid.Points.Select(p => p.X).ToArray();
        var loss = new Plot();
        Plots.Line(loss, xs, grid.Points.Select(p => Math.Log10(Math.Max(p.TrainLoss, 1e-6))).ToArray(), "train loss", Colors.Navy, false);
        Plots.Line(loss, xs, grid.Points.Select(p => Math.Log10(Math.Max(p.TestLoss!.Value, 1e-6))).ToArray(), "test loss", Colors.Navy, true);
        loss.Title($"Keskar's parametric plot: (1−α)·{adam[0].Name} + α·{adam[^1].Name}");
        loss.YLabel("loss (log10)");
        Plots.LogAxis(loss);
        var acc = new Plot();
        Plots.Line(acc, xs, grid.Points.Select(p => 100 * p.TrainAccuracy!.Value).ToArray(), "train accuracy", Colors.FireBrick, false);
        Plots.Line(acc, xs, grid.Points.Select(p => 100 * p.TestAccuracy!.Value).ToArray(), "test accuracy", Colors.FireBrick, true);
        acc.XLabel("α (0 = small batch, 1 = large batch)");
        acc.YLabel("accuracy (%)");
        loss.ShowLegend(Alignment.UpperCenter);
        acc.ShowLegend(Alignment.LowerCenter);
        Plots.Stack([loss, acc], Path.Combine(dir, "parametric.png"), 900, 340);
        return null;
    }

    /// <summary>Filter-normalized 1D slices of every model, overlaid (the same direction seed for each).</summary>
    static void Slices(StudySummary s, IReadOnlyDictionary<string, nn.Module<Tensor, Tensor>> models, Dataset measureData, string dir, CancellationToken ct)
    {
        var o = s.Options;
        var slices = new Plot();
        int k = 0;
        foreach (var m in s.Models)
        {
            var model = models[m.Name];
            using var dir1 = Directions.Random(ParameterSet.From(model), DirectionNormalization.Filter, false, o.Seed + 11);
            var g = new LandscapeEvaluator(model, o.EffectiveLoss, measureData, null).Run(dir1, null, new GridSpec(GridSpec.Range(-1, 1, o.SlicePoints), null), ct: ct);
            Plots.Line(slices, g.Points.Select(p => p.X).ToArray(), g.Points.Select(p => Math.Min(p.TrainLoss, 10)).ToArray(), m.Name, Palette.GetColor(k++), false);
        }
        slices.Title("1D filter-normalized slices (train loss, clipped at 10)");
        slices.XLabel("α");
        slices.YLabel("train loss");
        slices.ShowLegend(Alignment.UpperCenter);
        Plots.Save(slices, Path.Combine(dir, "slices.png"), 900, 520);
    }

    /// <summary>2D contours of the flattest and the sharpest model by λmax.</summary>
    static string? Contours(StudySummary s, IReadOnlyDictionary<string, nn.Module<Tensor, Tensor>> models, Dataset measureData, string dir, CancellationToken ct)
    {
        var o = s.Options;
        if (!s.Models.All(m => m.Measures.ContainsKey("lambda_max"))) return "No contours of the flattest and sharpest model: lambda_max is not among the measures.";
        var flattest = s.Models.MinBy(m => m.Measures["lambda_max"])!;
        var sharpest = s.Models.MaxBy(m => m.Measures["lambda_max"])!;
        var panels = new List<Plot>();
        foreach (var m in new[] { flattest, sharpest })
        {
            var model = models[m.Name];
            var ps = ParameterSet.From(model);
            using var d1 = Directions.Random(ps, DirectionNormalization.Filter, false, o.Seed + 21);
            using var d2 = Directions.Random(ps, DirectionNormalization.Filter, false, o.Seed + 22);
            var spec = new GridSpec(GridSpec.Range(-1, 1, o.ContourPoints), GridSpec.Range(-1, 1, o.ContourPoints));
            var g = new LandscapeEvaluator(model, o.EffectiveLoss, measureData, null).Run(d1, d2, spec, ct: ct);
            var coords = new Coordinates3d[spec.Ys!.Length, spec.Xs.Length];
            foreach (var p in g.Points) coords[p.J, p.I] = new Coordinates3d(p.X, p.Y, Math.Min(p.TrainLoss, 10));
            var plt = new Plot();
            var lines = plt.Add.ContourLines(coords, 15);
            lines.Colormap = new ScottPlot.Colormaps.Viridis();
            plt.Title($"{(m == flattest ? "flattest" : "sharpest")}: {m.Name} (λmax {m.Measures["lambda_max"]:G4})");
            plt.XLabel("α");
            plt.YLabel("β");
            plt.Axes.SetLimits(-1, 1, -1, 1);
            panels.Add(plt);
        }
        Plots.Stack(panels, Path.Combine(dir, "contours.png"), 640, 560);
        return null;
    }

    /// <summary>The models' SLQ spectral densities, overlaid.</summary>
    static void Densities(StudySummary s, string dir)
    {
        var dens = new Plot();
        int k = 0;
        foreach (var m in s.Models.Where(m => m.DensityNodes.Length > 0))
        {
            var (grid, density, _) = StochasticLanczosQuadrature.Broaden(m.DensityNodes, m.DensityWeights, 1e-5, 2000);
            Plots.Line(dens, grid, density.Select(v => Math.Log10(v + 1e-7)).ToArray(), m.Name, Palette.GetColor(k++), false);
        }
        Plots.LogAxis(dens);
        dens.Title("Hessian spectral densities (SLQ)");
        dens.XLabel("eigenvalue");
        dens.YLabel("density (log scale)");
        dens.ShowLegend(Alignment.UpperRight);
        Plots.Save(dens, Path.Combine(dir, "densities.png"), 900, 520);
    }

    /// <summary>Each of the six best-ranked measures or baselines (by the lower bound of τ) against the accuracy gap.</summary>
    static void Scatters(StudySummary s, string dir)
    {
        var scatters = new List<Plot>();
        foreach (var t in s.Ranking.Rows.Where(r => double.IsFinite(r.AccuracyGap.Tau)).Take(6))
        {
            var plt = new Plot();
            int k = 0;
            foreach (var m in s.Models)
            {
                var x = t.IsBaseline ? m.Baselines[t.Measure] : m.Measures[t.Measure];
                var sc = plt.Add.Scatter(new[] { x }, new[] { 100 * m.AccuracyGap });
                sc.Color = Palette.GetColor(k++);
                sc.MarkerSize = 9;
                sc.LegendText = m.Name;
            }
            var a = t.AccuracyGap;
            plt.Title($"{t.Measure}{(t.IsBaseline ? " (baseline)" : "")}: τ = {a.Tau:+0.00;-0.00} [{a.Lower:+0.00;-0.00}, {a.Upper:+0.00;-0.00}]");
            plt.XLabel(t.Measure);
            plt.YLabel("accuracy gap (%)");
            if (scatters.Count == 0) plt.ShowLegend(Alignment.UpperLeft);
            scatters.Add(plt);
        }
        if (scatters.Count > 0) Plots.Stack(scatters, Path.Combine(dir, "scatter.png"), 700, 300);
    }
}
