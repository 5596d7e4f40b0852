using Valley.IO;
using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using Valley.Landscape;
using Valley.Reporting;

namespace Valley.Cli.Commands;

/// <summary><c>valley landscape 1d|2d|interpolate|trajectory|eigen</c>: loss-landscape slices, resumable, with PNG, HTML, VTK, CSV and JSON.</summary>
public static class LandscapeCommand
{
    public static Command Build()
    {
        var cmd = new Command("landscape", "Loss landscape around a model: filter-normalized random slices (Li et al. 2018), interpolation between models, trajectories, Hessian eigenvectors");
        cmd.Subcommands.Add(Mode("1d", LandscapeMode.OneD, "1D slice along a random filter-normalized direction (α ∈ [−1, 1], 51 points)"));
        cmd.Subcommands.Add(Mode("2d", LandscapeMode.TwoD, "2D slice along two random filter-normalized directions ([−1, 1]², 51×51)"));
        cmd.Subcommands.Add(Mode("interpolate", LandscapeMode.Interpolate, "Loss along w(α) = (1−α) w_from + α w_to (α ∈ [−0.5, 1.5], 401 points); with --third, the plane through three models"));
        cmd.Subcommands.Add(Mode("trajectory", LandscapeMode.Trajectory, "2D slice in the plane of the top-2 PCA directions of saved checkpoints, with the trajectory drawn over it"));
        cmd.Subcommands.Add(Mode("eigen", LandscapeMode.Eigen, "2D slice along the top-2 Hessian eigenvectors"));
        return cmd;
    }

    static Command Mode(string name, LandscapeMode mode, string description)
    {
        var o = new CommonOptions(subsetDefault: 10_000, batchDefault: 10_000);
        var range = new Option<string?>("--range") { Description = "Coordinate range a:b (default −1:1; interpolate −0.5:1.5; trajectory: around the checkpoints)" };
        var points = new Option<string?>("--points") { Description = "Points per axis: 51, or 51x51 (default 51 / 51x51; interpolate 401)" };
        var norm = new Option<string>("--normalization") { Description = "Direction normalization", DefaultValueFactory = _ => "filter" }.AcceptOnlyFromAmong("filter", "layer", "model", "none");
        var biasBn = new Option<bool>("--include-bias-bn") { Description = "Perturb biases and BatchNorm parameters too (default: zero direction, as Li et al.)" };
        var test = new Option<bool>("--test") { Description = "Also evaluate on the test set" };
        var recompute = new Option<bool>("--recompute-bn") { Description = "Recompute BatchNorm statistics at every point" };
        var log = new Option<bool>("--log") { Description = "Plot log10 of the loss" };
        var clip = new Option<double>("--clip") { Description = "Clip plotted loss at this value (0 = off)", DefaultValueFactory = _ => 10 };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder", DefaultValueFactory = _ => $"out/landscape-{name}" };
        var from = new Option<string?>("--from") { Description = "interpolate: weights of the first model" };
        var to = new Option<string?>("--to") { Description = "interpolate: weights of the second model" };
        var third = new Option<string?>("--third") { Description = "interpolate: weights of a third model (plane)" };
        var checkpoints = new Option<string?>("--checkpoints") { Description = "trajectory: folder of checkpoint weights (e.g. out/train/checkpoints)" };
        var cmd = new Command(name, description);
        o.AddTo(cmd, layer: false);
        foreach (var opt in new Option[] { range, points, norm, biasBn, test, recompute, log, clip, outDir }) cmd.Options.Add(opt);
        if (mode == LandscapeMode.Interpolate) { cmd.Options.Add(from); cmd.Options.Add(to); cmd.Options.Add(third); }
        if (mode == LandscapeMode.Trajectory) cmd.Options.Add(checkpoints);
        cmd.SetAction((p, ct) =>
        {
            var request = new LandscapeRequest
            {
                Mode = mode, OutDir = p.GetValue(outDir)!, Model = p.GetValue(o.Model)!, Range = ParseRange(p.GetValue(range)), Points = ParsePoints(p.GetValue(points), mode),
                Normalization = Enum.Parse<DirectionNormalization>(p.GetValue(norm)!, ignoreCase: true), IncludeBiasBn = p.GetValue(biasBn), Seed = p.GetValue(o.Seed),
                Weights = p.GetValue(o.Weights), From = p.GetValue(from), To = p.GetValue(to), Third = p.GetValue(third), Checkpoints = p.GetValue(checkpoints),
                RecomputeBatchNorm = p.GetValue(recompute), BatchSize = p.GetValue(o.BatchSize), View = new LandscapeView(p.GetValue(clip) > 0 ? p.GetValue(clip) : null, p.GetValue(log)),
            };
            var group = CommonOptions.Group;
            var (lockFile, ctx) = o.Prepare(p, request.OutDir, shard: false);
            using var _lock = lockFile;
            using var _ctx = ctx;
            request = request with { DataName = ctx.Train.Name, Loss = ctx.Objective.Loss };
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            var tst = p.GetValue(test) ? ctx.Test : null;
            GridResult result = null!;
            ProgressBars.Run(term, CommonOptions.ShowProgress(json), ((int Done, int Total) pr) => new Bar("grid", $"grid points {pr.Done}/{pr.Total}", pr.Done, pr.Total),
                progress => result = LandscapeRunner.Run(ctx.Model, ctx.Objective.Data, tst, request, progress, ct, group));
            if (json) { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(result)); return Task.FromResult(0); }
            var centre = result.Points.OrderBy(q => Math.Abs(q.X) + Math.Abs(q.Y)).First();
            var min = result.Points.MinBy(q => q.TrainLoss)!;
            var max = result.Points.MaxBy(q => q.TrainLoss)!;
            var t = new Table().AddColumns("point", "α", "β", "train loss", "train acc");
            void Row(string n, GridPoint q) => t.AddRow(n, $"{q.X:G4}", result.Spec.Is2D ? $"{q.Y:G4}" : "", $"{q.TrainLoss:G5}", q.TrainAccuracy is { } a ? $"{100 * a:F2}%" : "");
            Row("nearest the origin", centre); Row("lowest loss", min); Row("highest loss", max);
            term.Write(t);
            foreach (var (k, v) in result.Description) term.MarkupLine($"  {Markup.Escape(k)}: {Markup.Escape(v)}");
            term.MarkupLine($"{result.Points.Count} points ({result.Resumed} reused from an earlier run) in {result.Seconds:F1} s. Files in [blue]{Markup.Escape(request.OutDir)}[/]: " +
                            (result.Spec.Is2D ? "landscape.png, surface.html, surface.vtk, " : "landscape.png, ") + "grid.json, points.csv");
            return Task.FromResult(0);
        });
        return cmd;
    }

    static (double, double)? ParseRange(string? s)
    {
        if (s is null) return null;
        var parts = s.Split(':');
        if (parts.Length != 2 || !double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out var a) ||
            !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out var b) || !(b > a))
            throw new ValleyException($"--range: expected a:b with a < b, e.g. -1:1, got '{s}'");
        // The grid's coordinates are a + (b − a)·i/(n − 1): b − a must be a finite number too.
        if (!double.IsFinite(a) || !double.IsFinite(b) || !double.IsFinite(b - a))
            throw new ValleyException($"--range {s}: the ends and their distance must be finite numbers");
        return (a, b);
    }

    static (int, int)? ParsePoints(string? s, LandscapeMode mode)
    {
        if (s is null) return null;
        var parts = s.ToLowerInvariant().Split('x');
        if (parts.Length > 2 || parts.Any(x => !int.TryParse(x, out var n) || n < 1))
            throw new ValleyException($"--points: expected a positive count such as 51 or 51x51, got '{s}'");
        int nx = int.Parse(parts[0]);
        var points = (nx, parts.Length == 2 ? int.Parse(parts[1]) : nx);
        GridSpec.EnsureFits(points.Item1, mode is LandscapeMode.OneD || (mode is LandscapeMode.Interpolate && parts.Length == 1) ? 1 : points.Item2, $"--points {s}");
        return points;
    }
}
