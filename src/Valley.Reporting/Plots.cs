using Valley.IO;
using ScottPlot;
using Valley.Curvature.Spectrum;

namespace Valley.Reporting;

/// <summary>Figures as PNG (ScottPlot): a spectral density, training curves. The landscape's are in <see cref="LandscapeFigures"/>.</summary>
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
    internal static void LogAxis(Plot plt)
    {
        var ticks = new ScottPlot.TickGenerators.NumericAutomatic
        {
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
            LabelFormatter = y => $"1e{y:0}",
        };
        plt.Axes.Left.TickGenerator = ticks;
    }

    /// <summary>
    /// Training curves: loss and accuracy per epoch (train and test), and the monitored λmax over steps with the
    /// 2/η stability threshold of full-batch gradient descent where it applies. Panels stacked in one PNG.
    /// </summary>
    public static void Training(Valley.Training.TrainingLog log, string path)
    {
        var panels = new List<Plot>();
        var epochs = log.Epochs.Select(e => (double)e.Epoch).ToArray();
        var loss = new Plot();
        Line(loss, epochs, log.Epochs.Select(e => e.TrainLoss).ToArray(), "train loss", Colors.Navy);
        if (log.Epochs.All(e => e.TestLoss is not null)) Line(loss, epochs, log.Epochs.Select(e => e.TestLoss!.Value).ToArray(), "test loss", Colors.DarkOrange);
        loss.Title($"{log.Model}: {log.Options.Optimizer.ToString().ToLowerInvariant()}, lr {log.Options.LearningRate}, batch {(log.Options.BatchSize == 0 ? "full" : log.Options.BatchSize.ToString())}");
        loss.XLabel("epoch");
        loss.YLabel("loss");
        loss.ShowLegend(Alignment.UpperRight);
        panels.Add(loss);
        if (log.Epochs.All(e => e.TrainAccuracy is not null))
        {
            var acc = new Plot();
            Line(acc, epochs, log.Epochs.Select(e => 100 * e.TrainAccuracy!.Value).ToArray(), "train accuracy", Colors.Navy);
            if (log.Epochs.All(e => e.TestAccuracy is not null)) Line(acc, epochs, log.Epochs.Select(e => 100 * e.TestAccuracy!.Value).ToArray(), "test accuracy", Colors.DarkOrange);
            acc.XLabel("epoch");
            acc.YLabel("accuracy (%)");
            acc.ShowLegend(Alignment.LowerRight);
            panels.Add(acc);
        }
        if (log.Monitor.Count > 0)
        {
            var sharp = new Plot();
            Line(sharp, log.Monitor.Select(m => (double)m.Step).ToArray(), log.Monitor.Select(m => m.LambdaMax).ToArray(), "λmax (Lanczos)", Colors.FireBrick);
            if (log.StabilityThreshold is { } t)
            {
                var h = sharp.Add.HorizontalLine(t);
                h.LinePattern = LinePattern.Dashed;
                h.Color = Colors.Gray;
                h.LegendText = "2/η";
            }
            sharp.XLabel("step");
            sharp.YLabel("λmax");
            sharp.ShowLegend(Alignment.LowerRight);
            panels.Add(sharp);
        }
        Stack(panels, path, 900, 320);
    }

    /// <summary>A labelled line (markers only for short series), optionally dashed: the one line style of Valley's figures.</summary>
    internal static void Line(Plot plt, double[] xs, double[] ys, string label, Color color, bool dashed = false)
    {
        var s = plt.Add.Scatter(xs, ys);
        s.LegendText = label;
        s.Color = color;
        s.LineWidth = 2;
        s.MarkerSize = xs.Length > 60 || dashed ? 0 : 4;
        if (dashed) s.LinePattern = LinePattern.Dashed;
    }

    /// <summary>Render plots one above another into one PNG (atomically).</summary>
    internal static void Stack(IReadOnlyList<Plot> plots, string path, int width, int heightEach)
    {
        using var surface = SkiaSharp.SKSurface.Create(new SkiaSharp.SKImageInfo(width, heightEach * plots.Count));
        surface.Canvas.Clear(SkiaSharp.SKColors.White);
        for (int i = 0; i < plots.Count; i++)
        {
            var png = plots[i].GetImage(width, heightEach).GetImageBytes();
            using var bmp = SkiaSharp.SKBitmap.Decode(png);
            surface.Canvas.DrawBitmap(bmp, 0, i * heightEach);
        }
        using var image = surface.Snapshot();
        using var data = image.Encode(SkiaSharp.SKEncodedImageFormat.Png, 90);
        AtomicFile.WriteAllBytes(path, data.ToArray());
    }

    /// <summary>Save as PNG or SVG by extension, atomically.</summary>
    internal static void Save(Plot plt, string path, int width, int height)
    {
        var full = Path.GetFullPath(path);
        var tmp = AtomicFile.Temporary(full, Path.GetExtension(full));
        if (path.EndsWith(".svg", StringComparison.OrdinalIgnoreCase)) plt.SaveSvg(tmp, width, height);
        else plt.SavePng(tmp, width, height);
        File.Move(tmp, full, overwrite: true);
    }
}
