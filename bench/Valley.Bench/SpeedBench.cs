using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Issue 17's benchmarks: the table against PyHessian's algorithms in its dataloader mode (4 batches of 512), the distance
/// of each estimator to its floor (products × one cached double-backward pass over the data), the cached multi-batch
/// product against a full-data gradient, and the products each trace estimator needs for 1% and 5% relative error.
/// </summary>
public static class SpeedBench
{
    const long Examples = 2048, Batch = 512;

    static (nn.Module<Tensor, Tensor> Model, Dataset Data) TrainedMlp(string spec)
    {
        var data = Runner.FashionSubset(Examples);
        var model = ModelSpec.Parse(spec).Build(data, seed: 0);
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        model.eval();
        return (model, data);
    }

    static double Median(IEnumerable<double> xs)
    {
        var s = xs.OrderBy(x => x).ToList();
        return s[s.Count / 2];
    }

    /// <summary>The issue's table, the floor per estimator, and Hv ÷ gradient; each Valley task on a fresh objective (its graph cache built inside the timing).</summary>
    public static void Run(int threads, string outDir, int reps)
    {
        Directory.CreateDirectory(outDir);
        var (model, data) = TrainedMlp("mlp:784-128-64-10:tanh");
        using var _d = data;
        SpectrumBench.Export(model, data, outDir);
        var py = SpectrumBench.RunPython(outDir, threads, (int)(Examples / Batch));
        JsonElement? P(string name) => py is { } e && e.TryGetProperty(name, out var v) ? v : null;
        Objective Fresh() => new(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });

        // One cached double-backward pass over the data (the floor's unit), and the full-data gradient.
        double hvCached, gradient, hvUncached;
        using (var warm = Fresh())
        using (var plain = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch, CacheGraph = false }))
        {
            var v = randn(warm.Size, generator: new Generator(1));
            var t = Runner.Interleaved(21,
                () => { using var s = NewDisposeScope(); warm.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); warm.LossAndGradient(); },
                () => { using var s = NewDisposeScope(); plain.HessianVectorProduct(v); });
            (hvCached, gradient, hvUncached) = (t[0], t[1], t[2]);
            Console.WriteLine($"cached graphs: {warm.CachedBatches} of {Examples / Batch} batches, {warm.CachedGraphBytes / 1048576.0:F1} MiB (measured: growth of resident memory while the first batch's graph was built)");
        }

        (T Result, double Seconds) Timed<T>(Func<Objective, T> f)
        {
            var runs = Enumerable.Range(0, reps).Select(_ =>
            {
                using var obj = Fresh();
                var sw = Stopwatch.StartNew();
                var r = f(obj);
                return (r, sw.Elapsed.TotalSeconds);
            }).ToList();
            return runs.OrderBy(x => x.Item2).ElementAt(runs.Count / 2);
        }
        var top1 = Timed(o => Lanczos.Compute(new HessianOperator(o), new LanczosOptions { K = 1 }));
        var top5 = Timed(o => Lanczos.Compute(new HessianOperator(o), new LanczosOptions { K = 5 }));
        var slq = Timed(o => StochasticLanczosQuadrature.Estimate(new HessianOperator(o), new SpectralDensityOptions { Runs = 1, Steps = 100 }));
        // Trace at PyHessian's achieved relative standard error (its Hutchinson stops on the running mean).
        double target = P("hutchinson") is { } ph && ph.GetProperty("standard_error").ValueKind == JsonValueKind.Number
            ? ph.GetProperty("standard_error").GetDouble() / Math.Abs(ph.GetProperty("trace").GetDouble()) : 0.05;
        var traces = new[] { TraceMethod.XTrace, TraceMethod.HutchPlusPlus, TraceMethod.Hutchinson }.Select(m => (m, Timed(o => Trace(new HessianOperator(o), m, target, 0)))).ToList();
        var trace = traces.First(t => t.m == SpectrumAnalysisOptions.DefaultTraceMethod).Item2;

        Console.WriteLine($"mlp:784-128-64-10:tanh (109,386 parameters) after 2 epochs of Adam; {Examples} Fashion-MNIST examples in {Examples / Batch} batches of {Batch}; {threads} threads; median of {reps} (Valley), PyTorch {P("power_top1")?.GetProperty("seconds").ToString() ?? "n/a"}");
        Console.WriteLine($"PyTorch reference (PyHessian's dataloader mode): torch {py?.GetProperty("torch")}; Valley: LibTorch {__version__}");
        Console.WriteLine();
        Console.WriteLine($"{"task",-44}{"PyHessian",-22}{"Valley",-26}{"ratio",8}{"floor ×",10}");
        void Row(string task, JsonElement? p, double seconds, long products)
        {
            string ps = p is { } e ? $"{e.GetProperty("seconds").GetDouble():F2} s, {e.GetProperty("products").GetInt32()} Hv" : "n/a";
            string ratio = p is { } e2 ? $"{e2.GetProperty("seconds").GetDouble() / seconds:F1}×" : "";
            Console.WriteLine($"{task,-44}{ps,-22}{$"{seconds:F2} s, {products} Hv",-26}{ratio,8}{seconds / (products * hvCached),10:F2}");
        }
        Row("top-1 eigenvalue", P("power_top1"), top1.Seconds, top1.Result.Products);
        Row("top-5 eigenvalues", P("power_top5"), top5.Seconds, top5.Result.Products);
        Row("density, 1 run × 100 steps", P("slq_1x100"), slq.Seconds, slq.Result.Products);
        Row($"trace at rel. SE {target:P1} ({trace.Result.Method})", P("hutchinson"), trace.Seconds, trace.Result.Products);
        Console.WriteLine();
        foreach (var (m, t) in traces)
            Console.WriteLine($"trace to {target:P1}: {t.Result.Method,-10} {t.Result.Trace:G5} ± {t.Result.StandardError:G2} in {t.Result.Products,4} Hv, {t.Seconds:F2} s");
        Console.WriteLine($"top-1: Valley λ = {top1.Result.Values[0]:G6} (residual {top1.Result.RelativeResiduals[0]:0.0e+0}); PyHessian λ = {Vals(P("power_top1"))}");
        Console.WriteLine($"top-5: Valley λ = {string.Join(" ", top5.Result.Values.Select(x => x.ToString("G6")))}; PyHessian λ = {Vals(P("power_top5"))}");
        Console.WriteLine();
        Console.WriteLine($"one cached double-backward pass over the data (Hv, {Examples / Batch} cached batches): {hvCached * 1000:F2} ms; uncached Hv {hvUncached * 1000:F2} ms; full-data gradient {gradient * 1000:F2} ms");
        Console.WriteLine($"cached multi-batch Hv ÷ full-data gradient: {hvCached / gradient:F2} (goal ≤ 1.5); uncached Hv ÷ gradient: {hvUncached / gradient:F2}");
    }

    static string Vals(JsonElement? p) => p is { } e ? string.Join(" ", e.GetProperty("values").EnumerateArray().Select(x => x.GetDouble().ToString("G6"))) : "";

    static TraceEstimate Trace(ICurvatureOperator op, TraceMethod m, double target, long seed) => m switch
    {
        TraceMethod.XTrace => XTrace.Estimate(op, new XTraceOptions { RelativeStandardError = target, MaxProducts = 5000, Seed = seed }),
        TraceMethod.HutchPlusPlus => HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { RelativeStandardError = target, MaxProducts = 5000, Seed = seed }),
        _ => Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = target, MaxProducts = 5000, Seed = seed }),
    };

    /// <summary>
    /// Products each trace estimator needs to reach 1% and 5% relative standard error on the study's model (mlp:784-128-64-10,
    /// 2 epochs of Adam), over seeds: machine-independent counts, which choose the default trace method.
    /// </summary>
    public static void TraceProducts(string spec, int seeds)
    {
        var (model, data) = TrainedMlp(spec);
        using var _d = data;
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });
        var op = new HessianOperator(obj);
        Console.WriteLine($"{spec} ({obj.Size:N0} parameters) after 2 epochs of Adam; {Examples} Fashion-MNIST examples; {seeds} seeds per cell; products to reach the relative standard error (median [min–max]), and |estimate − consensus| / SE");
        var all = new List<(TraceMethod M, double Target, TraceEstimate R)>();
        // Cheapest first, each run printed as it ends (Hutchinson to 1% takes hundreds of products per seed).
        foreach (var (m, target) in new[] { (TraceMethod.XTrace, 0.05), (TraceMethod.HutchPlusPlus, 0.05), (TraceMethod.XTrace, 0.01), (TraceMethod.HutchPlusPlus, 0.01),
                                            (TraceMethod.Hutchinson, 0.05), (TraceMethod.Hutchinson, 0.01) })
            for (int s = 0; s < seeds; s++)
            {
                var r = Trace(op, m, target, s);
                all.Add((m, target, r));
                Console.WriteLine($"    {target:P0} {r.Method,-11} seed {s}: {r.Trace:G6} ± {r.StandardError:G3} in {r.Products} products");
            }
        // The consensus: the inverse-variance-weighted mean of every 1% estimate.
        var precise = all.Where(x => x.Target == 0.01 && x.R.StandardError > 0).ToList();
        double consensus = precise.Sum(x => x.R.Trace / (x.R.StandardError * x.R.StandardError)) / precise.Sum(x => 1 / (x.R.StandardError * x.R.StandardError));
        Console.WriteLine($"consensus trace (inverse-variance mean of the 1% runs): {consensus:G6}");
        foreach (var g in all.GroupBy(x => (x.Target, x.M)))
        {
            var products = g.Select(x => (double)x.R.Products).ToList();
            var z = g.Select(x => Math.Abs(x.R.Trace - consensus) / x.R.StandardError).ToList();
            Console.WriteLine($"  {g.Key.Target,5:P0} {g.First().R.Method,-11} products {Median(products),6:F0} [{products.Min():F0}–{products.Max():F0}]   " +
                              $"converged {g.Count(x => x.R.Converged)}/{g.Count()}   within 2 SE of the consensus {z.Count(v => v <= 2)}/{g.Count()}");
        }
    }

    /// <summary>Products of the spectrum estimators with their defaults (machine-independent), for before/after comparisons.</summary>
    public static void EstimatorProducts(string spec)
    {
        var (model, data) = TrainedMlp(spec);
        using var _d = data;
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });
        var op = new HessianOperator(obj);
        foreach (int k in new[] { 1, 5 })
            foreach (int b in new[] { 1, 2, 5 })
            {
                var r = Lanczos.Compute(op, new LanczosOptions { K = k, BlockSize = b });
                Console.WriteLine($"top-{k}, block {b}: {r.Products} products, converged {r.Converged}, λ = {string.Join(" ", r.Values.Select(x => x.ToString("G6")))}");
            }
    }
}
