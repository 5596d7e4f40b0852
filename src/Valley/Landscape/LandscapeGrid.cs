using System.Globalization;
using System.Text;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Distributed;
using Valley.Training;
using static TorchSharp.torch;

namespace Valley.Landscape;

/// <summary>The coordinates of a 1D (<see cref="Ys"/> null) or 2D grid: w(α, β) = w₀ + α d₁ + β d₂.</summary>
public sealed record GridSpec(double[] Xs, double[]? Ys)
{
    /// <summary>Whether the grid has a second axis.</summary>
    public bool Is2D => Ys is not null;
    /// <summary>Number of points.</summary>
    public int Count => Xs.Length * (Ys?.Length ?? 1);

    /// <summary>
    /// Memory a grid point takes while a grid is evaluated and written (its record, its line in points.csv and grid.json, the
    /// plots' matrices and the HTML surface): about a kilobyte, generously.
    /// </summary>
    public const int BytesPerPoint = 1024;

    /// <summary>Refuses a grid of nx × ny points that this machine cannot hold (before anything is allocated).</summary>
    public static void EnsureFits(long nx, long ny, string what)
    {
        double points = (double)nx * ny;
        MachineLimits.EnsureMemory(points * BytesPerPoint, $"{what}: a grid of {points:G4} points");
    }

    /// <summary>n evenly spaced values from a to b inclusive.</summary>
    public static double[] Range(double a, double b, int n)
    {
        if (n < 1) throw new ValleyException($"--points: must be at least 1, got {n}");
        if (!(b >= a)) throw new ValleyException($"--range: the end {b} is below the start {a}");
        if (!double.IsFinite(b - a)) throw new ValleyException($"--range {a}:{b}: the ends and their distance must be finite numbers");
        return n == 1 ? [a] : Enumerable.Range(0, n).Select(i => a + (b - a) * i / (n - 1)).ToArray();
    }
}

/// <summary>Loss and accuracy at one grid point.</summary>
public sealed record GridPoint(int I, int J, double X, double Y, double TrainLoss, double? TrainAccuracy, double? TestLoss, double? TestAccuracy);

/// <summary>A finished (or partial) grid with what it was computed from.</summary>
public sealed record GridResult
{
    /// <summary>A label of what the grid shows (e.g. "1d", "interpolate").</summary>
    public required string Kind { get; init; }
    /// <summary>The grid's coordinates.</summary>
    public required GridSpec Spec { get; init; }
    /// <summary>Every point, row by row (j, then i).</summary>
    public required List<GridPoint> Points { get; init; }
    /// <summary>How the grid was made (model, data, normalization...), for reports.</summary>
    public Dictionary<string, string> Description { get; init; } = [];
    /// <summary>Trajectory mode: the checkpoints' first coordinates.</summary>
    public double[]? TrajectoryX { get; init; }
    /// <summary>Trajectory mode: the checkpoints' second coordinates.</summary>
    public double[]? TrajectoryY { get; init; }
    /// <summary>Trajectory mode: the share of the trajectory's variance the two PCA directions explain.</summary>
    public double[]? ExplainedVariance { get; init; }
    /// <summary>Wall time of the evaluation.</summary>
    public double Seconds { get; init; }
    /// <summary>Points taken over from an earlier, interrupted run.</summary>
    public int Resumed { get; init; }

    /// <summary>Values as a [ys, xs] matrix (1D: one row) for a quantity selector.</summary>
    public double[,] Matrix(Func<GridPoint, double> value)
    {
        int ny = Spec.Ys?.Length ?? 1;
        var m = new double[ny, Spec.Xs.Length];
        foreach (var p in Points) m[p.J, p.I] = value(p);
        return m;
    }
}

/// <summary>Options of <see cref="LandscapeEvaluator"/>.</summary>
public sealed record LandscapeOptions
{
    /// <summary>Examples per forward pass (the values do not depend on it).</summary>
    public long BatchSize { get; init; } = 10_000;
    /// <summary>Recompute BatchNorm running statistics at every point (one pass over the training data in train mode).</summary>
    public bool RecomputeBatchNorm { get; init; }
    /// <summary>
    /// Ranks that share the grid: each holds the model and all the data and evaluates every Size-th pending point; rank 0
    /// gathers the points after each round and appends them to the points file. Null: this process alone.
    /// </summary>
    public IProcessGroup? Group { get; init; }
    /// <summary>
    /// The parameters the directions move (their flat order is the directions' order). Null: the model's trainable
    /// parameters, as <see cref="ParameterSet.From"/> selects them; frozen ones stay where they are.
    /// </summary>
    public ParameterSet? Parameters { get; init; }
}

/// <summary>
/// Evaluates loss and accuracy over a grid w(α, β) = w₀ + α d₁ + β d₂ in eval mode without gradients. Weights are set in
/// place from the exact origin at every point (no accumulation, no per-point allocation) and restored bit-identically at
/// the end. Finished points are handed out as they come and can be passed back in to resume; the evaluator itself
/// writes no files. With a <see cref="LandscapeOptions.Group"/>, the pending points are dealt out to the ranks round by round.
/// </summary>
public sealed class LandscapeEvaluator
{
    readonly nn.Module<Tensor, Tensor> _model;
    readonly LossFunction _loss;
    readonly Dataset _train;
    readonly Dataset? _test;
    readonly LandscapeOptions _o;

    /// <summary>An evaluator of a model's loss (and accuracy) on training data and, optionally, test data.</summary>
    public LandscapeEvaluator(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset train, Dataset? test, LandscapeOptions? options = null)
    {
        _model = model;
        _loss = loss;
        _train = train;
        _test = test;
        _o = options ?? new LandscapeOptions();
    }

    /// <summary>
    /// Evaluates the grid. Points already in <paramref name="finished"/> (an earlier, interrupted run of the same grid; every
    /// rank must pass the same) are kept; the others are evaluated and handed to <paramref name="pointsDone"/> as they finish
    /// (each round's points, in order, on every rank), so that a caller can write them down and resume after a kill.
    /// </summary>
    /// <param name="d1">First direction, a flat vector over <see cref="LandscapeOptions.Parameters"/>.</param>
    /// <param name="d2">Second direction for a 2D grid; null for 1D.</param>
    /// <param name="endpoint">
    /// For model-to-model interpolation: the second model's weights w_b. Points are then set as (1 − α) w₀ + α w_b, so that both
    /// endpoints are exactly the two models (w₀ + α(w_b − w₀) is not exactly w_b at α = 1).
    /// </param>
    /// <param name="kind">A label for the result (e.g. "interpolate"); default "1d" or "2d".</param>
    public GridResult Run(Tensor d1, Tensor? d2, GridSpec spec, IReadOnlyDictionary<(int I, int J), GridPoint>? finished = null,
        Action<IReadOnlyList<GridPoint>>? pointsDone = null, IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default,
        Tensor? endpoint = null, string? kind = null)
    {
        if (spec.Is2D != (d2 is not null)) throw new ArgumentException("a 2D grid needs two directions, a 1D grid one", nameof(d2));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var all = _o.Parameters ?? ParameterSet.From(_model);
        if (d1.shape[0] != all.Size || (d2 is not null && d2.shape[0] != all.Size))
            throw new ArgumentException($"the directions have {d1.shape[0]} entries, the parameters they move {all.Size}", nameof(d1));
        EnsureFiniteWeights(all, d1, d2, endpoint, spec);
        var group = _o.Group ?? SingleProcess.Instance;
        var done = finished is null ? new Dictionary<(int, int), GridPoint>() : new Dictionary<(int, int), GridPoint>(finished.Where(kv => kv.Key.I < spec.Xs.Length && kv.Key.J < (spec.Ys?.Length ?? 1)));
        int resumed = done.Count;
        using var obj = new Objective(_model, _loss, _train, new ObjectiveOptions { BatchSize = _o.BatchSize, CacheGraph = false, AllowNonFiniteLoss = true });
        using var snapshot = all.Snapshot();
        using var bn = _o.RecomputeBatchNorm ? new BatchNormState(_model) : null;
        var origin = all.Tensors.Select(t => t.detach().clone()).ToArray();
        var dir1 = all.Unflatten(d1.to(all.DType, all.Device).contiguous());
        var dir2 = d2 is null ? null : all.Unflatten(d2.to(all.DType, all.Device).contiguous());
        var end = endpoint is null ? null : all.Unflatten(endpoint.to(all.DType, all.Device).contiguous());
        try
        {
            int ny = spec.Ys?.Length ?? 1;
            var pending = new List<(int I, int J)>();
            for (int j = 0; j < ny; j++)
                for (int i = 0; i < spec.Xs.Length; i++)
                    if (!done.ContainsKey((i, j))) pending.Add((i, j));
            progress?.Report((done.Count, spec.Count));
            // Round r: rank q evaluates pending point r·Size + q; then every rank learns every point of the round.
            for (int start = 0; start < pending.Count; start += group.Size)
            {
                ct.ThrowIfCancellationRequested();
                int mine = start + group.Rank;
                GridPoint? p = mine < pending.Count ? Evaluate(pending[mine].I, pending[mine].J) : null;
                GridPoint?[] raw = group.Size == 1 ? [p] : ShareRound(group, p, spec);
                var round = raw.OfType<GridPoint>().ToList();
                foreach (var q in round) done[(q.I, q.J)] = q;
                pointsDone?.Invoke(round);
                progress?.Report((done.Count, spec.Count));
            }
        }
        finally
        {
            snapshot.Restore();
            bn?.Restore(_model);
            foreach (var t in origin) t.Dispose();
        }

        GridPoint Evaluate(int i, int j)
        {
            double x = spec.Xs[i], y = spec.Ys?[j] ?? 0;
            using (no_grad())
                for (int t = 0; t < origin.Length; t++)
                {
                    all.Tensors[t].copy_(origin[t]);
                    if (end is not null && dir2 is null) all.Tensors[t].mul_(1 - x).add_(end[t], alpha: x);
                    else all.Tensors[t].add_(dir1[t], alpha: x);
                    if (dir2 is not null) all.Tensors[t].add_(dir2[t], alpha: y);
                }
            bn?.Recompute(_model, _train, _o.BatchSize);
            var tr = obj.Evaluate(ct);
            var te = _test is null ? null : obj.Evaluate(_test, ct);
            return new GridPoint(i, j, x, y, tr.Loss, tr.Accuracy, te?.Loss, te?.Accuracy);
        }
        return new GridResult
        {
            Kind = kind ?? (spec.Is2D ? "2d" : "1d"), Spec = spec, Points = done.Values.OrderBy(p => p.J).ThenBy(p => p.I).ToList(), Seconds = sw.Elapsed.TotalSeconds, Resumed = resumed,
        };
    }

    /// <summary>
    /// Refuses a grid whose weights would overflow the parameters' dtype somewhere (e.g. --range -1e308:1e308): the largest
    /// |w| over the grid is at most ‖w₀‖∞·max|1 − α| + max|α|·‖w_b‖∞ for an interpolation, ‖w₀‖∞ + max|α|·‖d₁‖∞ + max|β|·‖d₂‖∞
    /// otherwise. Losses at finite weights far from the minimum may still overflow; those are recorded as they are.
    /// </summary>
    static void EnsureFiniteWeights(ParameterSet all, Tensor d1, Tensor? d2, Tensor? endpoint, GridSpec spec)
    {
        static double Inf(Tensor t) => t.abs().max().to(ScalarType.Float64).ToDouble();
        using var scope = NewDisposeScope();
        double w0 = Inf(all.GetFlat());
        double ax = spec.Xs.Max(Math.Abs), ay = spec.Ys?.Max(Math.Abs) ?? 0;
        double bound = endpoint is not null && d2 is null
            ? w0 * spec.Xs.Max(x => Math.Abs(1 - x)) + ax * Inf(endpoint)
            : w0 + ax * Inf(d1) + (d2 is null ? 0 : ay * Inf(d2));
        double limit = all.DType == ScalarType.Float64 ? double.MaxValue : all.DType == ScalarType.Float32 ? float.MaxValue : 65504;
        if (!(bound <= limit))
            throw new ValleyException($"--range {spec.Xs[0]:G4}:{spec.Xs[^1]:G4}: the weights at the grid's edge overflow {all.DType.ToString().ToLowerInvariant()} " +
                                      $"(|w| up to {bound:G3}); choose a smaller range");
    }

    /// <summary>Every rank's point of one round (null where a rank had none), in rank order, on every rank.</summary>
    static GridPoint?[] ShareRound(IProcessGroup group, GridPoint? p, GridSpec spec)
    {
        static double N(double? v) => v ?? double.NaN;
        static double? V(double v) => double.IsNaN(v) ? null : v;
        var mine = p is null ? new double[] { -1, -1, 0, 0, 0, 0 } : [p.I, p.J, p.TrainLoss, N(p.TrainAccuracy), N(p.TestLoss), N(p.TestAccuracy)];
        var all = group.AllGather(mine);
        var result = new GridPoint?[group.Size];
        for (int r = 0; r < group.Size; r++)
        {
            var c = all.AsSpan(6 * r, 6);
            if (c[0] < 0) continue;
            int i = (int)c[0], j = (int)c[1];
            result[r] = new GridPoint(i, j, spec.Xs[i], spec.Ys?[j] ?? 0, c[2], V(c[3]), V(c[4]), V(c[5]));
        }
        return result;
    }

    /// <summary>BatchNorm running statistics saved before a grid with per-point recomputation, and restored after it.</summary>
    sealed class BatchNormState : IDisposable
    {
        readonly Dictionary<string, Tensor> _saved;
        public BatchNormState(nn.Module m) =>
            _saved = m.named_buffers().ToDictionary(b => b.name, b => b.buffer.clone().DetachFromDisposeScope());
        public void Recompute(nn.Module<Tensor, Tensor> m, Dataset data, long batch) => WeightAverage.RecomputeBatchNorm(m, data, batch);
        public void Restore(nn.Module m)
        {
            using var _ = no_grad();
            foreach (var (name, b) in m.named_buffers()) b.copy_(_saved[name]);
        }
        public void Dispose() { foreach (var t in _saved.Values) t.Dispose(); }
    }
}
