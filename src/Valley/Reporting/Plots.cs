using ScottPlot;
using Valley.Curvature.Spectrum;

namespace Valley.Reporting;

/// <summary>PNG/SVG figures (ScottPlot).</summary>
public static class Plots
{
    /// <summary>
    /// The spectral density on a log scale (density + 1e-7, PyHessian's convention for plotting), with λmax and λmin marked.
    /// </summary>
    public static void SpectralDensity(SpectralDensity d, string path, string title, double? lambdaMax = null, double? lambdaMin = null)
    {
        var plt = new Plot();
        var ys = d.Density.Select(v => Math.Log10(v + 1e-7)).ToArray();
        var line = plt.Add.ScatterLine(d.Grid, ys);
        line.LineWidth = 1.5f;
        line.Color = Colors.Navy;
        double lmax = lambdaMax ?? d.LambdaMax, lmin = lambdaMin ?? d.LambdaMin;
        var vmax = plt.Add.VerticalLine(lmax);
        vmax.Color = Colors.FireBrick;
        vmax.LinePattern = LinePattern.Dashed;
        vmax.Text = $"λmax = {lmax:G4}";
        vmax.LabelOppositeAxis = true;
        var vmin = plt.Add.VerticalLine(lmin);
        vmin.Color = Colors.DarkGreen;
        vmin.LinePattern = LinePattern.Dashed;
        vmin.Text = $"λmin = {lmin:G4}";
        vmin.LabelOppositeAxis = true;
        LogAxis(plt);
        plt.Title(title);
        plt.XLabel("eigenvalue");
        plt.YLabel("density (log scale)");
        Save(plt, path, 900, 520);
    }

    /// <summary>Label a left axis whose data are log10 values with powers of ten.</summary>
    public static void LogAxis(Plot plt)
    {
        var ticks = new ScottPlot.TickGenerators.NumericAutomatic
        {
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
            LabelFormatter = y => $"1e{y:0}",
        };
        plt.Axes.Left.TickGenerator = ticks;
    }

    /// <summary>Save as PNG or SVG by extension, atomically.</summary>
    public static void Save(Plot plt, string path, int width, int height)
    {
        var full = Path.GetFullPath(path);
        var tmp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileNameWithoutExtension(full)}.{Environment.ProcessId}.tmp{Path.GetExtension(full)}");
        if (path.EndsWith(".svg", StringComparison.OrdinalIgnoreCase)) plt.SaveSvg(tmp, width, height);
        else plt.SavePng(tmp, width, height);
        File.Move(tmp, full, overwrite: true);
    }
}
