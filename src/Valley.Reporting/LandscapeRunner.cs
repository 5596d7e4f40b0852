using Valley.IO;
using System.Text.Json;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Distributed;
using Valley.Models;
using Valley.Reporting;
using Valley.Runs;
using static TorchSharp.torch;

using Valley.Landscape;

namespace Valley.Reporting;

/// <summary>One landscape run: what to compute and where to write it. Defaults from docs/design.md §6.</summary>
public sealed record LandscapeRequest
{
    /// <summary>Which landscape to compute.</summary>
    public required LandscapeMode Mode { get; init; }
    /// <summary>The folder for run.json, points.csv, grid.json and the figures.</summary>
    public required string OutDir { get; init; }
    /// <summary>The model's name for titles and the run's inputs (e.g. its spec).</summary>
    public required string Model { get; init; }
    /// <summary>Null: the mode's default ([−1, 1]; interpolation [−0.5, 1.5]; trajectory: 1.25 × the farthest checkpoint).</summary>
    public (double From, double To)? Range { get; init; }
    /// <summary>Null: 51 (1D), 51×51 (2D), 401 (interpolation).</summary>
    public (int X, int Y)? Points { get; init; }
    /// <summary>How random directions are scaled to the weights (Li et al. 2018: per filter).</summary>
    public DirectionNormalization Normalization { get; init; } = DirectionNormalization.Filter;
    /// <summary>Perturb biases and BatchNorm parameters too (Li et al. leave them at zero).</summary>
    public bool IncludeBiasBn { get; init; }
    /// <summary>Seed of the random directions (the second uses Seed + 1) and of the eigenvector search.</summary>
    public long Seed { get; init; }
    /// <summary>The weights file the model was loaded from, if any (trajectory mode keeps them as the centre).</summary>
    public string? Weights { get; init; }
    /// <summary>Interpolation: the first model's weights file.</summary>
    public string? From { get; init; }
    /// <summary>Interpolation: the second model's weights file.</summary>
    public string? To { get; init; }
    /// <summary>Interpolation: a third model's weights file, for the plane through three models.</summary>
    public string? Third { get; init; }
    /// <summary>Trajectory: the folder of checkpoint weight files, in the order of their names.</summary>
    public string? Checkpoints { get; init; }
    /// <summary>Recompute BatchNorm running statistics at every point.</summary>
    public bool RecomputeBatchNorm { get; init; }
    /// <summary>Examples per forward pass (the values do not depend on it).</summary>
    public long BatchSize { get; init; } = 10_000;
    /// <summary>How the figures show the loss (clipping, log scale); not an input of the numbers.</summary>
    public LandscapeView View { get; init; } = new();
    /// <summary>The data's name for descriptions.</summary>
    public string DataName { get; init; } = "";
    /// <summary>The loss the grid shows; null: the task's default (<see cref="Losses.For"/>).</summary>
    [System.Text.Json.Serialization.JsonIgnore] public LossFunction? Loss { get; init; }
}

/// <summary>
/// Builds the directions for a mode, evaluates the grid (resumable), and writes every output file. With a group, every rank
/// holds the model and all the data, builds the same directions, and evaluates its share of the points; rank 0 writes.
/// </summary>
public static class LandscapeRunner
{
    /// <summary>Computes one landscape into <see cref="LandscapeRequest.OutDir"/>: refuses a folder that holds a run of other inputs, resumes the points of an earlier run of the same inputs, appends each finished point to points.csv, and writes grid.json and the figures (rank 0).</summary>
    public static GridResult Run(nn.Module<Tensor, Tensor> model, Dataset train, Dataset? test, LandscapeRequest r,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default, IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        group.Agree(() =>
        {
            if (!group.IsRoot()) return;
            Directory.CreateDirectory(r.OutDir);
            CheckSameRun(r, Inputs(r, model, train, test));
        });
        // The trainable parameters: the directions move them, frozen ones stay where they are.
        var all = ParameterSet.From(model);
        var loss = r.Loss ?? Losses.For(train.Task);
        using var scope = NewDisposeScope();
        var desc = new Dictionary<string, string> { ["model"] = r.Model, ["data"] = r.DataName, ["mode"] = r.Mode.ToString() };
        // In the scope above: the directions live until the grid is done.
        var (d1, d2, endpoint, range, tx, ty, explained) = BuildDirections(model, train, r, all, loss, group, desc);
        bool twoD = d2 is not null;
        var pts = r.Points ?? (r.Mode == LandscapeMode.Interpolate && !twoD ? (401, 1) : (51, 51));
        GridSpec.EnsureFits(pts.Item1, twoD ? pts.Item2 : 1, "--points");
        var xs = GridSpec.Range(range.Item1, range.Item2, pts.Item1);
        var spec = new GridSpec(xs, twoD ? GridSpec.Range(range.Item1, range.Item2, pts.Item2) : null);
        var evaluator = new LandscapeEvaluator(model, loss, train, test, new LandscapeOptions { BatchSize = r.BatchSize, RecomputeBatchNorm = r.RecomputeBatchNorm, Group = group, Parameters = all });
        // Rank 0 reads the points file of an earlier run of these inputs; every rank resumes from the same points, and rank 0
        // appends each round's points as they finish.
        var pointsPath = Path.Combine(r.OutDir, "points.csv");
        var earlier = group.Broadcast(group.IsRoot() && File.Exists(pointsPath) ? File.ReadAllBytes(pointsPath) : []);
        var finished = group.Agree(() => PointsFile.Parse(System.Text.Encoding.UTF8.GetString(earlier), spec, pointsPath));
        // Opened with the first finished points, so that a grid refused before any point leaves the folder as it was.
        StreamWriter? writer = null;
        GridResult result;
        try
        {
            result = evaluator.Run(d1, d2, spec, finished, points =>
            {
                if (!group.IsRoot()) return;
                writer ??= PointsFile.OpenForAppend(pointsPath, earlier);
                foreach (var p in points) writer.WriteLine(PointsFile.Format(p));
                writer.Flush();
            }, progress, ct, endpoint, kind: r.Mode.ToString());
        }
        finally { writer?.Dispose(); }
        result = result with { Description = desc, TrajectoryX = tx, TrajectoryY = ty, ExplainedVariance = explained };
        var title = $"{r.Model}: {Describe(r, twoD)}";
        if (group.IsRoot()) LandscapeFigures.WriteAll(result, r.OutDir, title, r.View);
        return result;
    }

    /// <summary>The mode's directions (and the interpolation's endpoint, the trajectory's PCA coordinates), with what describes them in <paramref name="desc"/>.</summary>
    static (Tensor D1, Tensor? D2, Tensor? Endpoint, (double, double) Range, double[]? Tx, double[]? Ty, double[]? Explained) BuildDirections(
        nn.Module<Tensor, Tensor> model, Dataset train, LandscapeRequest r, ParameterSet all, LossFunction loss, IProcessGroup group, Dictionary<string, string> desc)
    {
        Tensor d1;
        Tensor? d2 = null;
        Tensor? endpoint = null;
        double[]? tx = null, ty = null, explained = null;
        (double, double) range = r.Range ?? (r.Mode == LandscapeMode.Interpolate ? (-0.5, 1.5) : (-1, 1));
        switch (r.Mode)
        {
            case LandscapeMode.OneD:
            case LandscapeMode.TwoD:
                d1 = Directions.Random(all, r.Normalization, r.IncludeBiasBn, r.Seed);
                if (r.Mode == LandscapeMode.TwoD) d2 = Directions.Random(all, r.Normalization, r.IncludeBiasBn, r.Seed + 1);
                desc["normalization"] = r.Normalization.ToString().ToLowerInvariant();
                desc["bias_bn"] = r.IncludeBiasBn ? "included" : "zero";
                break;
            case LandscapeMode.Interpolate:
            {
                var wa = Load(model, all, r.From ?? throw new ValleyException("landscape interpolate: --from is required"));
                var statsA = BatchNormStatistics(model);
                var wb = Load(model, all, r.To ?? throw new ValleyException("landscape interpolate: --to is required"));
                CheckSameStatistics(model, statsA, r, r.To);
                all.SetFlat(wa);
                d1 = wb - wa;
                endpoint = wb;
                if (r.Third is not null)
                {
                    d2 = Load(model, all, r.Third) - wa;
                    CheckSameStatistics(model, statsA, r, r.Third);
                }
                all.SetFlat(wa);
                desc["from"] = r.From; desc["to"] = r.To;
                if (r.Third is not null) desc["third"] = r.Third;
                break;
            }
            case LandscapeMode.Trajectory:
            {
                var dir = r.Checkpoints ?? throw new ValleyException("landscape trajectory: --checkpoints DIR is required");
                if (!Directory.Exists(dir)) throw new ValleyException($"--checkpoints {dir}: no such folder");
                var files = CheckpointFiles(dir);
                if (files.Count < 2) throw new ValleyException($"--checkpoints {dir}: needs at least two weight files, found {files.Count}");
                var final = r.Weights is not null ? all.GetFlat() : Load(model, all, files[^1]);
                var cps = files.Select(f => Load(model, all, f)).ToList();
                all.SetFlat(final);
                var pca = Directions.Pca(cps, final);
                d1 = pca.Direction1; d2 = pca.Direction2;
                tx = pca.X; ty = pca.Y; explained = pca.ExplainedVariance;
                double reach = 1.25 * Math.Max(tx.Concat(ty).Max(Math.Abs), 1e-6);
                range = r.Range ?? (-reach, reach);
                desc["checkpoints"] = $"{files.Count} in {dir}";
                desc["explained_variance"] = $"{explained[0]:P1}, {explained[1]:P1}";
                break;
            }
            default:
            {
                // Data-parallel over the ranks' shares of the data; the sums, and so the eigenvectors, are the same on every rank.
                using var shard = group.Size > 1 ? train.Shard(group) : null;
                using var obj = new Objective(model, loss, shard ?? train, new ObjectiveOptions { BatchSize = r.BatchSize, Group = group });
                var (e1, e2, values) = Directions.HessianEigenvectors(obj, r.Seed);
                d1 = e1; d2 = e2;
                desc["eigenvalues"] = $"{values[0]:G6}, {values[1]:G6}";
                break;
            }
        }
        return (d1, d2, endpoint, range, tx, ty, explained);
    }

    static string Describe(LandscapeRequest r, bool twoD) => r.Mode switch
    {
        LandscapeMode.Interpolate => twoD ? "plane through three models" : "interpolation between two models",
        LandscapeMode.Trajectory => "training trajectory (PCA)",
        LandscapeMode.Eigen => "top-2 Hessian eigenvectors",
        _ => $"{(twoD ? "2D" : "1D")} random, {r.Normalization.ToString().ToLowerInvariant()}-normalized",
    };

    /// <summary>The model's floating-point buffers (BatchNorm running statistics), flattened; empty when it has none.</summary>
    static Tensor BatchNormStatistics(nn.Module model)
    {
        var buffers = model.named_buffers().Select(b => b.buffer).Where(b => b.is_floating_point()).Select(b => b.detach().reshape(-1).to(ScalarType.Float64)).ToArray();
        return buffers.Length == 0 ? zeros(0, ScalarType.Float64) : cat(buffers);
    }

    /// <summary>
    /// The interpolation moves the weights only, and the model keeps the running statistics of the last file loaded: with
    /// models whose statistics differ, the α = 0 end would be evaluated with the other model's statistics. Refused unless
    /// the statistics are recomputed at every point.
    /// </summary>
    static void CheckSameStatistics(nn.Module model, Tensor first, LandscapeRequest r, string other)
    {
        if (r.RecomputeBatchNorm) return;
        using var stats = BatchNormStatistics(model);
        if (stats.shape[0] == first.shape[0] && (stats.shape[0] == 0 || stats.allclose(first, rtol: 0, atol: 0))) return;
        throw new ValleyException($"landscape interpolate: {r.From} and {other} hold different BatchNorm running statistics, and interpolation moves the weights only; " +
                                  "pass --recompute-bn to recompute the statistics at every point");
    }

    static Tensor Load(nn.Module model, ParameterSet all, string path)
    {
        using var keep = all.Snapshot();
        Models.Weights.Load(model, path);
        var w = all.GetFlat();
        keep.Restore();
        return w;
    }

    /// <summary>
    /// What the grid's numbers are computed from, by content: the model's weights and buffers, the data (and test data), the
    /// files of the interpolation end points and checkpoints, every setting that changes a number, the thread count (which
    /// changes rounding) and Valley's version. The plot settings and the folder are not inputs.
    /// </summary>
    public static RunInputs Inputs(LandscapeRequest r, nn.Module model, Dataset train, Dataset? test)
    {
        string? Checkpoints()
        {
            if (r.Checkpoints is null) return null;
            if (!Directory.Exists(r.Checkpoints)) return "missing";
            var lines = CheckpointFiles(r.Checkpoints).Select(f => $"{Path.GetFileName(f)} {RunInputs.FileDigest(f)}");
            return "sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.Join("\n", lines))));
        }
        return new RunInputs()
            .With("valley", typeof(RunInputs).Assembly.GetName().Version)
            .With("threads", get_num_threads())
            .With("model state", RunInputs.Digest(model))
            .With("data", RunInputs.Digest(train))
            .With("test data", test is null ? "none" : RunInputs.Digest(test))
            .With("loss", Losses.NameOf(r.Loss ?? Losses.For(train.Task)) ?? "the caller's")
            .With("--from", r.From is null ? null : RunInputs.FileDigest(r.From))
            .With("--to", r.To is null ? null : RunInputs.FileDigest(r.To))
            .With("--third", r.Third is null ? null : RunInputs.FileDigest(r.Third))
            .With("--checkpoints", Checkpoints())
            .With("mode", r.Mode).With("--model", new Valley.Models.ModelSource(r.Model).Digest)
            .With("--range", r.Range is { } g ? FormattableString.Invariant($"{g.From:R}:{g.To:R}") : null)
            .With("--points", r.Points is { } q ? $"{q.X}x{q.Y}" : null)
            .With("--normalization", r.Normalization).With("--include-bias-bn", r.IncludeBiasBn).With("--seed", r.Seed)
            .With("--recompute-bn", r.RecomputeBatchNorm).With("--batch-size", r.BatchSize);
    }

    /// <summary>The weight files of a checkpoint folder, in the order of their names.</summary>
    static List<string> CheckpointFiles(string dir) =>
        Directory.EnumerateFiles(dir).Where(f => f.EndsWith(".dat") || f.EndsWith(".pt") || f.EndsWith(".safetensors")).Order(StringComparer.Ordinal).ToList();

    /// <summary>
    /// A rerun into the same folder must be a run of identical inputs (then finished points are reused); a folder that holds a
    /// run of other inputs, or points of a run whose inputs are unknown, is refused: a grid can take hours.
    /// </summary>
    static void CheckSameRun(LandscapeRequest r, RunInputs inputs)
    {
        var path = Path.Combine(r.OutDir, "run.json");
        if (File.Exists(path))
        {
            RunInputs? earlier = null;
            try { earlier = JsonSerializer.Deserialize<RunInputs>(File.ReadAllText(path), AtomicFile.Json); }
            catch (JsonException) { /* written by another version: unknown inputs */ }
            if (inputs.SameAs(earlier)) return;
            throw new ValleyException($"--out {r.OutDir}: holds a landscape run of other inputs ({inputs.DifferencesFrom(earlier)}); choose another --out or remove it");
        }
        if (File.Exists(Path.Combine(r.OutDir, "points.csv")))
            throw new ValleyException($"--out {r.OutDir}: holds landscape points of a run whose inputs are unknown (no run.json); choose another --out or remove it");
        AtomicFile.WriteJson(path, inputs);
    }
}
