using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Valley.Training;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>Issue 4's benchmark: SAM step time over SGD step time, and SGD vs SAM trained to similar loss on Fashion-MNIST.</summary>
public static class TrainBench
{
    public static void StepTime(int reps)
    {
        using var split = DataSources.Open(null);
        using var data = split.Train.Subset(128, 0);
        var spec = ModelSpec.Parse("mlp:784-128-64-10");
        var a = spec.Build(data, 0);
        var b = spec.Build(data, 0);
        var sgd = optim.SGD(a.parameters(), 0.01, momentum: 0.9);
        var sam = new SharpnessAwareMinimization(b, optim.SGD(b.parameters(), 0.01, momentum: 0.9), SamOptions.ForSam());
        a.train(); b.train();
        var t = Runner.Interleaved(reps,
            () => { using var s = NewDisposeScope(); sgd.zero_grad(); var l = nn.functional.cross_entropy(a.call(data.X), data.Y); l.backward(); sgd.step(); l.ToDouble(); }, // both read the loss, as a training loop does
            () => { using var s = NewDisposeScope(); sam.step([new MicroBatch(() => { var l = nn.functional.cross_entropy(b.call(data.X), data.Y); l.backward(); return l; }, 128)]); });
        Console.WriteLine($"mlp:784-128-64-10, batch 128, {get_num_threads()} threads, median of {reps}: SGD step {t[0] * 1000:F3} ms, SAM step {t[1] * 1000:F3} ms, ratio {t[1] / t[0]:F2} (target <= 2.1)");
    }

    public static void SgdVsSam(string outDir, double stopAt, int maxEpochs)
    {
        using var split = DataSources.Open(null);
        foreach (var (name, opt) in new[] { ("sgd", Optimizer.Sgd), ("sam", Optimizer.Sam) })
        {
            var model = ModelSpec.Parse("mlp:784-128-64-10").Build(split.Train, 0);
            var o = new TrainOptions { Optimizer = opt, LearningRate = 0.01, Momentum = 0.9, BatchSize = 128, Epochs = maxEpochs, StopAtLoss = stopAt, Seed = 0 };
            var dir = Path.Combine(outDir, name);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            var log = new Trainer(model, split.Train, o) { Test = split.Test, OutputFolder = dir, ModelName = "mlp:784-128-64-10" }.Run();
            using var sub = split.Train.Subset(2048, 0);
            using var obj = new Objective(model, Losses.CrossEntropy, sub, new ObjectiveOptions { BatchSize = 2048 });
            var lam = Lanczos.Compute(new HessianOperator(obj), new LanczosOptions { K = 1, Tolerance = 1e-4 });
            var last = log.Epochs[^1];
            Console.WriteLine($"{name}: {log.CompletedEpochs} epochs ({log.StopReason}); train loss {last.TrainLoss:F4}, train acc {100 * last.TrainAccuracy:F2}%, " +
                              $"test loss {last.TestLoss:F4}, test acc {100 * last.TestAccuracy:F2}%, λmax (2,048 examples) {lam.Values[0]:F3} (residual {lam.RelativeResiduals[0]:0.0e+0}), {last.Seconds:F0} s");
        }
    }
}

/// <summary>Issue 5's benchmark: every sharpness measure with default parameters on a briefly trained mlp:784-128-64-10:tanh, 2,048 examples.</summary>
public static class SharpnessBench
{
    public static void Run()
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        var init = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        using var objective = new Objective(model, Losses.CrossEntropy, data);
        var results = Valley.Sharpness.SharpnessSuite.Run(objective, new Valley.Sharpness.SharpnessSuiteOptions { Initialization = init });
        Console.WriteLine($"mlp:784-128-64-10:tanh after 2 epochs of Adam; 2,048 Fashion-MNIST examples; {get_num_threads()} threads; default parameters");
        Console.WriteLine($"| measure | parameters | value | loss evaluations | gradient evaluations | seconds |");
        Console.WriteLine($"|---|---|---|---|---|---|");
        foreach (var r in results)
            Console.WriteLine($"| {r.Measure} | {string.Join(", ", r.Parameters.Select(kv => $"{kv.Key} {kv.Value:G3}"))} | {r.Value:G5}{(r.StandardError is { } se && double.IsFinite(se) ? $" ± {se:G2}" : "")} | {r.LossEvaluations} | {r.GradientEvaluations} | {r.Seconds:F2} |");
    }
}

/// <summary>Issue 6's benchmark: a 51×51 filter-normalized grid vs the same number of bare forward passes over the same data.</summary>
public static class LandscapeBench
{
    public static void Run(int points)
    {
        using var data = Runner.FashionSubset(10_000);
        var model = ModelSpec.Parse("mlp:784-128-64-10").Build(data, seed: 0);
        model.eval();
        var ps = new ParameterSet(model.named_parameters().Select(p => (p.name, p.parameter)));
        var d1 = Valley.Landscape.Directions.Random(ps, Valley.Landscape.DirectionNormalization.Filter, false, 1);
        var d2 = Valley.Landscape.Directions.Random(ps, Valley.Landscape.DirectionNormalization.Filter, false, 2);
        var spec = new Valley.Landscape.GridSpec(Valley.Landscape.GridSpec.Range(-1, 1, points), Valley.Landscape.GridSpec.Range(-1, 1, points));
        var ev = new Valley.Landscape.LandscapeEvaluator(model, Losses.CrossEntropy, data, null, new Valley.Landscape.LandscapeOptions { BatchSize = 10_000 });
        // Warm up both, then time them back to back (each is long enough to average out noise).
        using (no_grad()) { using var s = NewDisposeScope(); model.call(data.X); }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using (no_grad())
            for (int i = 0; i < spec.Count; i++) { using var s = NewDisposeScope(); model.call(data.X); }
        double bare = sw.Elapsed.TotalSeconds;
        sw.Restart();
        var grid = ev.Run(d1, d2, spec);
        double gridTime = sw.Elapsed.TotalSeconds;
        Console.WriteLine($"{points}×{points} grid, mlp:784-128-64-10, 10,000 Fashion-MNIST examples, one batch, {get_num_threads()} threads:");
        Console.WriteLine($"  grid (set weights, forward, loss, accuracy per point): {gridTime:F1} s ({1000 * gridTime / spec.Count:F2} ms/point)");
        Console.WriteLine($"  {spec.Count} bare forward passes:                       {bare:F1} s ({1000 * bare / spec.Count:F2} ms/pass)");
        Console.WriteLine($"  ratio {gridTime / bare:F3} (target <= 1.2); {grid.Points.Count} points");
    }
}

/// <summary>Issue 8's soak benchmark: resident memory over 10,000 Hessian-vector products and over a 101×101 landscape grid.</summary>
public static class SoakBench
{
    /// <summary>
    /// Resident memory over many products of an operator on the multi-batch cache (4 batches of 512, all kept), for both
    /// product methods: the default R-passes (one kept chunk of 2,048 rows for this model) and autograd's double backward
    /// (four kept graph-carrying gradients; the GGN's four kept output graphs).
    /// </summary>
    public static void Cached(int products)
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        foreach (var method in new[] { HessianProductMethod.Auto, HessianProductMethod.DoubleBackward })
        foreach (var kind in new[] { "hessian", "ggn" })
        {
            using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512, HessianProducts = method });
            ICurvatureOperator op = kind == "ggn" ? new GgnOperator(obj) : new HessianOperator(obj);
            var v = randn(obj.Size, generator: new Generator(1));
            var marks = new SortedDictionary<int, long>();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            for (int i = 1; i <= products; i++)
            {
                using (NewDisposeScope()) op.Apply(v);
                if (i == 100 || i % 1000 == 0) marks[i] = Runner.ResidentBytes();
            }
            // The layer stack's chunks serve both operators from the graph cache; autograd's GGN keeps output graphs.
            int cached = kind == "ggn" && obj.LayerStack is null ? obj.CachedOutputBatches : obj.CachedBatches;
            Console.WriteLine($"{products} cached {kind} products (mlp:784-128-64-10:tanh, 2,048 examples, batch size 512, {obj.ProductMethodDescription}, {cached} batches or chunks cached, {sw.Elapsed.TotalSeconds:F0} s): resident MiB " +
                              string.Join(", ", marks.Select(kv => $"{kv.Key}: {kv.Value / 1048576.0:F0}")) +
                              $"; growth after warm-up (100 → {products}): {100.0 * (marks[products] - marks[100]) / marks[100]:F1}%");
        }
    }

    public static void Run(int products, int points)
    {
        using (var data = Runner.FashionSubset(2048))
        {
            var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
            using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 2048, CacheGraph = false });
            var op = new HessianOperator(obj);
            var v = randn(obj.Size, generator: new Generator(1));
            var marks = new SortedDictionary<int, long>();
            for (int i = 1; i <= products; i++)
            {
                using (NewDisposeScope()) op.Apply(v);
                if (i == 100 || i % 1000 == 0) marks[i] = Runner.ResidentBytes();
            }
            Console.WriteLine($"{products} Hessian-vector products (mlp:784-128-64-10:tanh, 2,048 examples, one batch, graph rebuilt for every product): resident MiB " +
                              string.Join(", ", marks.Select(kv => $"{kv.Key}: {kv.Value / 1048576.0:F0}")) +
                              $"; growth after warm-up (100 → {products}): {100.0 * (marks[products] - marks[100]) / marks[100]:F1}%");
        }
        // The multi-batch graph caches (Hessian and GGN): 4 batches of 512, every graph kept.
        Cached(products);
        using (var data = Runner.FashionSubset(10_000))
        {
            var model = ModelSpec.Parse("mlp:784-128-64-10").Build(data, seed: 0);
            var ps = new ParameterSet(model.named_parameters().Select(p => (p.name, p.parameter)));
            var d1 = Valley.Landscape.Directions.Random(ps, Valley.Landscape.DirectionNormalization.Filter, false, 1);
            var d2 = Valley.Landscape.Directions.Random(ps, Valley.Landscape.DirectionNormalization.Filter, false, 2);
            var spec = new Valley.Landscape.GridSpec(Valley.Landscape.GridSpec.Range(-1, 1, points), Valley.Landscape.GridSpec.Range(-1, 1, points));
            var marks = new SortedDictionary<int, long>();
            var ev = new Valley.Landscape.LandscapeEvaluator(model, Losses.CrossEntropy, data, null);
            ev.Run(d1, d2, spec, progress: new Valley.Curvature.Spectrum.SyncProgress<(int Done, int Total)>(p =>
            {
                if (p.Done == 200 || p.Done % 2000 == 0 || p.Done == p.Total) marks[p.Done] = Runner.ResidentBytes();
            }));
            Console.WriteLine($"{points}×{points} grid (mlp:784-128-64-10, 10,000 examples): resident MiB " +
                              string.Join(", ", marks.Select(kv => $"{kv.Key}: {kv.Value / 1048576.0:F0}")) +
                              $"; growth after warm-up (200 → {spec.Count}): {100.0 * (marks[spec.Count] - marks[200]) / marks[200]:F1}%");
        }
    }
}
