using Valley.IO;
using System.Globalization;
using System.Text;
using ScottPlot;
using Valley.Landscape;

namespace Valley.Reporting;

/// <summary>How landscape values are shown (not stored): clipped at a maximum (Li et al. use 5–10) and optionally on a log scale.</summary>
public sealed record LandscapeView(double? Clip = 10, bool Log = false)
{
    /// <summary>The value as plotted: clipped, then on a log scale if asked.</summary>
    public double Apply(double v)
    {
        if (Clip is { } c) v = Math.Min(v, c);
        return Log ? Math.Log10(Math.Max(v, 1e-12)) : v;
    }

    /// <summary>An axis label for a quantity as plotted.</summary>
    public string Label(string name) => Log ? $"log10 {name}" : name;
}

/// <summary>Files of a landscape run: JSON, PNG (1D curves, 2D contour + heatmap with trajectory), offline HTML surface, VTK.</summary>
public static class LandscapeFigures
{
    /// <summary>Writes grid.json and the figures of a grid into a folder: landscape.png (curves or contours), and for 2D grids surface.html and surface.vtk.</summary>
    public static void WriteAll(GridResult g, string dir, string title, LandscapeView view)
    {
        AtomicFile.WriteJson(Path.Combine(dir, "grid.json"), g);
        if (g.Spec.Is2D)
        {
            Contour(g, Path.Combine(dir, "landscape.png"), title, view);
            AtomicFile.WriteAllText(Path.Combine(dir, "surface.html"), SurfaceHtml(g, title, view));
            AtomicFile.WriteAllText(Path.Combine(dir, "surface.vtk"), Vtk(g));
        }
        else Curves(g, Path.Combine(dir, "landscape.png"), title, view);
    }

    /// <summary>A 1D grid as curves: loss (and accuracy where known) against α, train and test, as a PNG.</summary>
    public static void Curves(GridResult g, string path, string title, LandscapeView view)
    {
        var xs = g.Points.Select(p => p.X).ToArray();
        var loss = new Plot();
        Plots.Line(loss, xs, g.Points.Select(p => view.Apply(p.TrainLoss)).ToArray(), "train loss", Colors.Navy);
        if (g.Points.All(p => p.TestLoss is not null)) Plots.Line(loss, xs, g.Points.Select(p => view.Apply(p.TestLoss!.Value)).ToArray(), "test loss", Colors.DarkOrange);
        loss.Title(title);
        loss.XLabel("α");
        loss.YLabel(view.Label("loss"));
        loss.ShowLegend(Alignment.UpperCenter);
        var panels = new List<Plot> { loss };
        if (g.Points.All(p => p.TrainAccuracy is not null))
        {
            var acc = new Plot();
            Plots.Line(acc, xs, g.Points.Select(p => 100 * p.TrainAccuracy!.Value).ToArray(), "train accuracy", Colors.Navy);
            if (g.Points.All(p => p.TestAccuracy is not null)) Plots.Line(acc, xs, g.Points.Select(p => 100 * p.TestAccuracy!.Value).ToArray(), "test accuracy", Colors.DarkOrange);
            acc.XLabel("α");
            acc.YLabel("accuracy (%)");
            acc.ShowLegend(Alignment.LowerCenter);
            panels.Add(acc);
        }
        Plots.Stack(panels, path, 900, 380);
    }

    /// <summary>Contour lines over the training loss, with the trajectory drawn over it when there is one; a heatmap below.</summary>
    public static void Contour(GridResult g, string path, string title, LandscapeView view)
    {
        var xs = g.Spec.Xs;
        var ys = g.Spec.Ys!;
        var z = g.Matrix(p => view.Apply(p.TrainLoss));
        var coords = new Coordinates3d[ys.Length, xs.Length];
        for (int j = 0; j < ys.Length; j++)
            for (int i = 0; i < xs.Length; i++)
                coords[j, i] = new Coordinates3d(xs[i], ys[j], z[j, i]);
        var contour = new Plot();
        var lines = contour.Add.ContourLines(coords, 20);
        lines.Colormap = new ScottPlot.Colormaps.Viridis();
        if (g.TrajectoryX is { } tx && g.TrajectoryY is { } ty)
        {
            var t = contour.Add.Scatter(tx, ty);
            t.Color = Colors.Red;
            t.MarkerSize = 5;
            t.LegendText = "trajectory";
            contour.ShowLegend(Alignment.UpperRight);
        }
        contour.Title(title + $" ({view.Label("train loss")})");
        contour.XLabel("α");
        contour.YLabel("β");
        var heat = new Plot();
        // Heatmap rows run top to bottom: flip so that β grows upwards.
        var flipped = new double[ys.Length, xs.Length];
        for (int j = 0; j < ys.Length; j++) for (int i = 0; i < xs.Length; i++) flipped[ys.Length - 1 - j, i] = z[j, i];
        var hm = heat.Add.Heatmap(flipped);
        hm.Colormap = new ScottPlot.Colormaps.Viridis();
        hm.Extent = new CoordinateRect(xs[0], xs[^1], ys[0], ys[^1]);
        heat.Add.ColorBar(hm);
        heat.XLabel("α");
        heat.YLabel("β");
        Plots.Stack([contour, heat], path, 760, 640);
    }

    /// <summary>A self-contained interactive 3D surface (plotly.js inlined, no network access).</summary>
    public static string SurfaceHtml(GridResult g, string title, LandscapeView view)
    {
        var z = g.Matrix(p => view.Apply(p.TrainLoss));
        var rows = Enumerable.Range(0, z.GetLength(0)).Select(j => Enumerable.Range(0, z.GetLength(1)).Select(i => z[j, i]).ToArray()).ToArray();
        var payload = System.Text.Json.JsonSerializer.Serialize(new
        {
            title,
            x = g.Spec.Xs,
            y = g.Spec.Ys,
            z = rows,
            zlabel = view.Label("train loss"),
            trajectory = g.TrajectoryX is null ? null : new { x = g.TrajectoryX, y = g.TrajectoryY },
        });
        return Html.Page(title, $$"""
            <div id="plot" style="width:100%;height:92vh"></div>
            <script>
            const d = {{payload}};
            const traces = [{ type: 'surface', x: d.x, y: d.y, z: d.z, colorscale: 'Viridis', contours: { z: { show: true, usecolormap: true, project: { z: true } } } }];
            Plotly.newPlot('plot', traces, { title: { text: d.title }, scene: { xaxis: { title: { text: 'α' } }, yaxis: { title: { text: 'β' } }, zaxis: { title: { text: d.zlabel } } } },
              { displaylogo: false }).then(() => document.body.setAttribute('data-rendered', 'yes'));
            </script>
            """);
    }

    /// <summary>Legacy VTK structured grid (ParaView): points (α, β, loss) with train (and test) loss as point data.</summary>
    public static string Vtk(GridResult g)
    {
        var inv = CultureInfo.InvariantCulture;
        int nx = g.Spec.Xs.Length, ny = g.Spec.Ys!.Length;
        var sb = new StringBuilder();
        sb.AppendLine("# vtk DataFile Version 3.0");
        sb.AppendLine($"Valley loss landscape ({g.Kind})");
        sb.AppendLine("ASCII");
        sb.AppendLine("DATASET STRUCTURED_GRID");
        sb.AppendLine($"DIMENSIONS {nx} {ny} 1");
        sb.AppendLine($"POINTS {nx * ny} double");
        var ordered = g.Points.OrderBy(p => p.J).ThenBy(p => p.I).ToList();
        foreach (var p in ordered) sb.AppendLine(string.Format(inv, "{0:R} {1:R} {2:R}", p.X, p.Y, p.TrainLoss));
        sb.AppendLine($"POINT_DATA {nx * ny}");
        sb.AppendLine("SCALARS train_loss double 1");
        sb.AppendLine("LOOKUP_TABLE default");
        foreach (var p in ordered) sb.AppendLine(p.TrainLoss.ToString("R", inv));
        if (ordered.All(p => p.TestLoss is not null))
        {
            sb.AppendLine("SCALARS test_loss double 1");
            sb.AppendLine("LOOKUP_TABLE default");
            foreach (var p in ordered) sb.AppendLine(p.TestLoss!.Value.ToString("R", inv));
        }
        return sb.ToString();
    }
}

/// <summary>Self-contained HTML pages: plotly.js is inlined from the embedded resource; text from users is escaped.</summary>
internal static class Html
{
    static string? _plotly;

    public static string Plotly
    {
        get
        {
            if (_plotly is not null) return _plotly;
            using var s = typeof(Html).Assembly.GetManifestResourceStream("Valley.plotly.min.js") ?? throw new InvalidOperationException("plotly.js resource missing");
            using var r = new StreamReader(s);
            return _plotly = r.ReadToEnd();
        }
    }

    public static string Escape(string s) => System.Net.WebUtility.HtmlEncode(s);

    public static string Page(string title, string body, bool plotly = true) => $"""
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>{Escape(title)}</title>
        <meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:; worker-src blob:">
        <style>body {"{"} font-family: sans-serif; margin: 1em 2em; max-width: 1200px; {"}"} table {"{"} border-collapse: collapse; margin: 1em 0; {"}"} td, th {"{"} border: 1px solid #ccc; padding: 3px 8px; text-align: right; {"}"} th {"{"} background: #f0f0f0; {"}"} td:first-child {"{"} text-align: left; {"}"} img {"{"} max-width: 100%; {"}"}</style>
        {(plotly ? "<script>" + Plotly + "</script>" : "")}
        </head><body>
        {body}
        </body></html>
        """;
}
