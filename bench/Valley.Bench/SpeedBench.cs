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

    internal static (nn.Module<Tensor, Tensor> Model, Dataset Data) TrainedMlp(string spec)
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

    /// <summary>
    /// The issue's table, the floor per estimator, and Hv ÷ gradient. The table comes from alternating rounds, as the issue
    /// measured it: each round runs the PyTorch reference once (every task once, in its own process) and Valley once (every
    /// task once, each on a fresh objective, its graph cache built inside the timing), in turn first, so that both see the
    /// same stretch of the machine's load; a ratio is the median of the rounds' ratios.
    /// </summary>
    public static void Run(int threads, string outDir, int rounds)
    {
        if (rounds < 1) throw new ArgumentOutOfRangeException(nameof(rounds), rounds, "--rounds must be at least 1");
        Directory.CreateDirectory(outDir);
        var (model, data) = TrainedMlp("mlp:784-128-64-10:tanh");
        using var _d = data;
        SpectrumBench.Export(model, data, outDir);
        Objective Fresh() => new(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });

        // One cached double-backward pass over the data (the floor's unit), and the full-data gradient.
        // Valley's default products for this model are the layer stack's R-passes (LinearStack); the double-backward pass
        // through autograd is the issue's unit, timed beside them.
        double hvCached, gradient, hvUncached, dbCached, dbUncached;
        var autograd = new ObjectiveOptions { BatchSize = Batch, HessianProducts = HessianProductMethod.DoubleBackward };
        using (var warm = Fresh())
        using (var plain = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch, CacheGraph = false }))
        using (var dbWarm = new Objective(model, Losses.CrossEntropy, data, autograd))
        using (var dbPlain = new Objective(model, Losses.CrossEntropy, data, autograd with { CacheGraph = false }))
        {
            var v = randn(warm.Size, generator: new Generator(1));
            var t = Runner.Interleaved(21,
                () => { using var s = NewDisposeScope(); warm.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); warm.LossAndGradient(); },
                () => { using var s = NewDisposeScope(); plain.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); dbWarm.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); dbPlain.HessianVectorProduct(v); });
            (hvCached, gradient, hvUncached, dbCached, dbUncached) = (t[0], t[1], t[2], t[3], t[4]);
            Console.WriteLine($"products: {(warm.LayerStack is null ? "double backward" : "layer-stack R-passes")}; cached: {warm.CachedBatches} of {Examples / Batch} batches, {warm.CachedGraphBytes / 1048576.0:F1} MiB; " +
                              $"double backward's cached graphs: {dbWarm.CachedBatches} batches, {dbWarm.CachedGraphBytes / 1048576.0:F1} MiB (measured)");
        }

        (T Result, double Seconds) Timed<T>(Func<Objective, T> f)
        {
            using var obj = Fresh();
            var sw = Stopwatch.StartNew();
            var r = f(obj);
            return (r, sw.Elapsed.TotalSeconds);
        }
        var methods = new[] { TraceMethod.Auto, TraceMethod.XTrace, TraceMethod.HutchPlusPlus, TraceMethod.Hutchinson };
        // Trace at PyHessian's achieved relative standard error (its Hutchinson stops on the running mean): that of the first
        // round (seed 0), which runs the reference first. The reference's later rounds draw other seeds, as PyHessian, which
        // does not seed, would from run to run; Valley's tasks draw with the same seeds (the round's number).
        double target = 0.05;
        // The floor's units are timed again in every round (medians of 5 interleaved products on objectives whose caches are
        // built), so that each task's distance to its floor divides by products timed in the same stretch of the machine's load.
        using var unitHv = Fresh();
        using var unitDb = new Objective(model, Losses.CrossEntropy, data, autograd);
        using var unitV = randn(unitHv.Size, generator: new Generator(1));
        (double Hv, double Db) Units()
        {
            var t = Runner.Interleaved(5,
                () => { using var s = NewDisposeScope(); unitHv.HessianVectorProduct(unitV); },
                () => { using var s = NewDisposeScope(); unitDb.HessianVectorProduct(unitV); });
            return (t[0], t[1]);
        }
        // Each round's tasks draw their start vectors with the round's number as the seed, as the reference's do: both tools'
        // medians then sample their starts' luck (Valley's top-1 takes 6 to 8 products over the seeds 0–23, `lanczos-seeds`;
        // PyHessian's 7 to 10 over 0–4), and no ratio rests on one seed.
        ValleyRound OneValleyRound(int seed) => new(
            Timed(o => Lanczos.Compute(new HessianOperator(o), new LanczosOptions { K = 1, Seed = seed })),
            Timed(o => Lanczos.Compute(new HessianOperator(o), new LanczosOptions { K = 5, Seed = seed })),
            Timed(o => StochasticLanczosQuadrature.Estimate(new HessianOperator(o), new SpectralDensityOptions { Runs = 1, Steps = 100, Seed = seed })),
            methods.Select(m => Timed(o => Trace(new HessianOperator(o), m, target, seed))).ToArray(),
            Units());

        // Untimed, as the reference's first-call round: .NET compiles each estimator's code on first use.
        OneValleyRound(0);
        var pyRounds = new List<JsonElement>();
        var valley = new List<ValleyRound>();
        bool reference = true;
        for (int r = 0; r < rounds; r++)
        {
            bool valleyFirst = r % 2 == 1;
            if (valleyFirst) valley.Add(OneValleyRound(r));
            if (reference)
            {
                if (SpectrumBench.RunPython(outDir, threads, (int)(Examples / Batch), oneRound: true, quiet: r > 0, seed: r) is { } py)
                {
                    pyRounds.Add(py);
                    if (r == 0 && py.GetProperty("hutchinson") is var h && h.GetProperty("standard_error").ValueKind == JsonValueKind.Number)
                        target = h.GetProperty("standard_error").GetDouble() / Math.Abs(h.GetProperty("trace").GetDouble());
                }
                else
                {
                    // Refused or failed: the ratios use the rounds before it (none: the table without the PyTorch column).
                    reference = false;
                    Console.WriteLine($"(the PyTorch reference failed in round {r + 1}: the ratios use the {pyRounds.Count} rounds before it)");
                }
            }
            if (!valleyFirst) valley.Add(OneValleyRound(r));
            Console.Error.WriteLine($"round {r + 1} of {rounds} done");
        }
        double Seconds(JsonElement e, string task) => e.GetProperty(task).GetProperty("seconds").GetDouble();
        JsonElement? P(string name) => pyRounds.Count > 0 && pyRounds[0].TryGetProperty(name, out var v) ? v : null;

        Console.WriteLine($"mlp:784-128-64-10:tanh (109,386 parameters) after 2 epochs of Adam; {Examples} Fashion-MNIST examples in {Examples / Batch} batches of {Batch}; {threads} threads; " +
                          $"{rounds} alternating rounds, each task once per round in each tool (medians over the rounds)");
        Console.WriteLine($"PyTorch reference (PyHessian's dataloader mode): torch {(pyRounds.Count == 0 ? "n/a" : pyRounds[0].GetProperty("torch").ToString())}; Valley: LibTorch {__version__}");
        Console.WriteLine();
        Console.WriteLine($"{"task",-40}{"PyHessian",-22}{"Valley",-22}{"ratio",8}{"rounds' ratios",18}{"floor ×",10}  (floor: against each round's cached Hv, median over the rounds)");
        // A task's distance to its floor: per round against that round's unit, then the median over the rounds.
        double Floor(Func<ValleyRound, double> seconds, Func<ValleyRound, long> products, Func<(double Hv, double Db), double> unit) =>
            Runner.Median(valley.Select(x => seconds(x) / (products(x) * unit(x.Units))).ToList());
        string Count(IEnumerable<long> xs) => xs.Min() == xs.Max() ? $"{xs.Min()}" : $"{xs.Min()}–{xs.Max()}";
        void Row(string task, string pyTask, Func<ValleyRound, (double Seconds, long Products)> pick)
        {
            var v = valley.Select(pick).ToList();
            double vs = Runner.Median(v.Select(x => x.Seconds).ToList());
            long products = v.Min(x => x.Products);
            string ps = "n/a", ratio = "", range = "";
            if (pyRounds.Count > 0)
            {
                var p = pyRounds.Select(e => Seconds(e, pyTask)).ToList();
                var ratios = p.Zip(v, (a, b) => a / b.Seconds).ToList(); // the first pyRounds.Count rounds: those with both tools
                var used = pyRounds.Select(e => e.GetProperty(pyTask).GetProperty("products").GetInt32()).ToList();
                ps = $"{Runner.Median(p):F2} s, {Count(used.Select(x => (long)x))} Hv";
                ratio = $"{Runner.Median(ratios):F1}×";
                range = $"{ratios.Min():F1}–{ratios.Max():F1}×";
            }
            string floor = products > 0 ? $"{Floor(x => pick(x).Seconds, x => pick(x).Products, u => u.Hv):F2}" : "n/a";
            Console.WriteLine($"{task,-40}{ps,-22}{$"{vs:F3} s, {Count(v.Select(x => x.Products))} Hv",-22}{ratio,8}{range,18}{floor,10}");
        }
        Row("top-1 eigenvalue", "power_top1", x => (x.Top1.Seconds, x.Top1.Result.Products));
        Row("top-5 eigenvalues", "power_top5", x => (x.Top5.Seconds, x.Top5.Result.Products));
        Row("density, 1 run × 100 steps", "slq_1x100", x => (x.Density.Seconds, x.Density.Result.Products));
        int defaultIndex = Array.IndexOf(methods, SpectrumAnalysisOptions.DefaultTraceMethod);
        Row($"trace at rel. SE {target:P1} ({valley[0].Traces[defaultIndex].Result.Method})", "hutchinson", x => (x.Traces[defaultIndex].Seconds, x.Traces[defaultIndex].Result.Products));
        Console.WriteLine();
        double exactTrace = valley[0].Traces[0].Result.Trace;
        for (int i = 0; i < methods.Length; i++)
        {
            var t = valley[0].Traces[i].Result;
            double seconds = Runner.Median(valley.Select(x => x.Traces[i].Seconds).ToList());
            Console.WriteLine($"trace to {target:P1}: {t.Method,-10} {t.Trace:G6} ± {t.StandardError:G2} (seed 0) in {Count(valley.Select(x => x.Traces[i].Result.Products)),7} Hv, {seconds:F3} s" +
                              (t.StandardError > 0 ? $"   (estimate − exact) / SE = {(t.Trace - exactTrace) / t.StandardError:+0.00;-0.00}" : "") +
                              // Each estimator's distance to its floor, as for the rows above: against each round's double-backward pass.
                              (valley.All(x => x.Traces[i].Result.Products > 0) ? $"   floor × {Floor(x => x.Traces[i].Seconds, x => x.Traces[i].Result.Products, u => u.Db):F2}" : ""));
        }
        var top1 = valley[0].Top1.Result;
        var top5 = valley[0].Top5.Result;
        var trace = valley[0].Traces[defaultIndex];
        if (P("hutchinson") is { } phTrace && phTrace.GetProperty("standard_error").ValueKind == JsonValueKind.Number)
            Console.WriteLine($"PyHessian's trace: {phTrace.GetProperty("trace").GetDouble():G6} ± {phTrace.GetProperty("standard_error").GetDouble():G2}; the exact trace's time in cached products: {Floor(x => x.Traces[0].Seconds, _ => 1, u => u.Hv):F2}");
        Console.WriteLine($"top-1: Valley λ = {top1.Values[0]:G6} (residual {top1.RelativeResiduals[0]:0.0e+0}); PyHessian λ = {Vals(P("power_top1"))}");
        Console.WriteLine($"top-5: Valley λ = {string.Join(" ", top5.Values.Select(x => x.ToString("G6")))}; PyHessian λ = {Vals(P("power_top5"))}");
        Console.WriteLine();
        Console.WriteLine($"cached Hv over the data ({Examples / Batch} batches): {hvCached * 1000:F2} ms (Valley's default; median of 21 before the rounds); uncached {hvUncached * 1000:F2} ms");
        Console.WriteLine($"cached double-backward pass over the data: {dbCached * 1000:F2} ms; uncached {dbUncached * 1000:F2} ms; full-data gradient {gradient * 1000:F2} ms");
        Console.WriteLine($"floor × against one cached double-backward pass (each round's own, median over the rounds): top-1 {Floor(x => x.Top1.Seconds, x => x.Top1.Result.Products, u => u.Db):F2}, " +
                          $"top-5 {Floor(x => x.Top5.Seconds, x => x.Top5.Result.Products, u => u.Db):F2}, density {Floor(x => x.Density.Seconds, x => x.Density.Result.Products, u => u.Db):F2}, trace " +
                          (valley.All(x => x.Traces[defaultIndex].Result.Products > 0) ? $"{Floor(x => x.Traces[defaultIndex].Seconds, x => x.Traces[defaultIndex].Result.Products, u => u.Db):F2}" : $"n/a (exact, no products; {Floor(x => x.Traces[defaultIndex].Seconds, _ => 1, u => u.Db):F2} passes' time)"));
        Console.WriteLine($"the rounds' units: cached Hv {string.Join(" / ", valley.Select(x => (x.Units.Hv * 1000).ToString("F1")))} ms, cached double-backward pass {string.Join(" / ", valley.Select(x => (x.Units.Db * 1000).ToString("F1")))} ms");
        Console.WriteLine($"cached multi-batch Hv ÷ full-data gradient: {hvCached / gradient:F2} (goal ≤ 1.5; double backward {dbCached / gradient:F2}); uncached Hv ÷ gradient: {hvUncached / gradient:F2} (double backward {dbUncached / gradient:F2})");
    }

    /// <summary>One round of Valley's tasks: each result with its wall time.</summary>
    /// <param name="Units">A cached product and a cached double-backward pass over the data, timed in the same round.</param>
    sealed record ValleyRound((Eigenpairs Result, double Seconds) Top1, (Eigenpairs Result, double Seconds) Top5,
        (SpectralDensity Result, double Seconds) Density, (TraceEstimate Result, double Seconds)[] Traces, (double Hv, double Db) Units);

    static string Vals(JsonElement? p) => p is { } e ? string.Join(" ", e.GetProperty("values").EnumerateArray().Select(x => x.GetDouble().ToString("G6"))) : "";

    static TraceEstimate Trace(HessianOperator op, TraceMethod m, double target, long seed) => m switch
    {
        TraceMethod.Auto => SpectrumAnalysis.Run(op, new SpectrumAnalysisOptions { Top = 0, Bottom = 0, Density = false, TraceMethod = m, TraceRelativeError = target, MaxProducts = 5000, Seed = seed - 2 }).Trace!,
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

    /// <summary>
    /// Products of Lanczos' top-1 and top-5 (defaults otherwise) for the start seeds 0 … seeds − 1 on the speed bench's model:
    /// what a change of the start's draw does to the count on average, rather than for one seed.
    /// </summary>
    public static void LanczosSeeds(int seeds)
    {
        if (seeds < 1) throw new ArgumentOutOfRangeException(nameof(seeds), seeds, "--seeds must be at least 1");
        var (model, data) = TrainedMlp("mlp:784-128-64-10:tanh");
        using var _d = data;
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = Batch });
        var op = new HessianOperator(obj);
        foreach (int k in new[] { 1, 5 })
        {
            var counts = Enumerable.Range(0, seeds).Select(s => Lanczos.Compute(op, new LanczosOptions { K = k, Seed = s }).Products).ToList();
            Console.WriteLine($"top-{k}: products over seeds 0–{seeds - 1}: {string.Join(" ", counts)}; mean {counts.Average():F2}, median of seeds 0–{Math.Min(5, seeds) - 1} {Median(counts.Take(5).Select(x => (double)x)):F0}");
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

/// <summary>
/// Where an estimator's wall time goes beyond its products: each run on a fresh objective, the time inside the operator's
/// products (the first, which builds the cached graphs, apart) against the rest (the estimator's own work).
/// </summary>
public static class FloorProfile
{
    sealed class Timed(ICurvatureOperator inner) : CurvatureOperator
    {
        public readonly List<double> Seconds = [];
        public override long Size => inner.Size;
        public override ScalarType DType => inner.DType;
        public override Device Device => inner.Device;
        protected override Tensor ApplyCore(Tensor v) { var sw = Stopwatch.StartNew(); var r = inner.Apply(v); Seconds.Add(sw.Elapsed.TotalSeconds); return r; }
        protected override Tensor ApplyBlockCore(Tensor V) { var sw = Stopwatch.StartNew(); var r = inner.ApplyBlock(V); Seconds.Add(sw.Elapsed.TotalSeconds); return r; }
    }

    public static void Run(int reps)
    {
        var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        model.eval();
        void One(string name, Func<ICurvatureOperator, long> f)
        {
            for (int r = 0; r < reps; r++)
            {
                using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512 });
                var op = new Timed(new HessianOperator(obj));
                var sw = Stopwatch.StartNew();
                long products = f(op);
                double total = sw.Elapsed.TotalSeconds, inside = op.Seconds.Sum(), first = op.Seconds[0];
                double rest = op.Seconds.Count > 1 ? op.Seconds.Skip(1).Average() : double.NaN;
                Console.WriteLine($"{name,-8} total {total * 1000,7:F1} ms, {products} products in {op.Seconds.Count} calls: first {first * 1000:F1} ms, others {rest * 1000:F2} ms each; outside products {(total - inside) * 1000:F1} ms");
            }
        }
        One("top-1", op => Lanczos.Compute(op, new LanczosOptions { K = 1 }).Products);
        One("top-5", op => Lanczos.Compute(op, new LanczosOptions { K = 5 }).Products);
        One("density", op => StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 1, Steps = 100 }).Products);
        One("trace", op => XTrace.Estimate(op, new XTraceOptions { RelativeStandardError = 0.052, MaxProducts = 5000 }).Products);
    }
}

/// <summary>The estimators' own work on an operator whose products cost almost nothing (a diagonal of the MLP's size).</summary>
public static class EstimatorOverhead
{
    sealed class Diagonal(Tensor d) : CurvatureOperator
    {
        public override long Size => d.shape[0];
        public override ScalarType DType => d.dtype;
        public override Device Device => d.device;
        protected override Tensor ApplyCore(Tensor v) => d * v;
        protected override Tensor ApplyBlockCore(Tensor V) => d.unsqueeze(1) * V;
    }

    [System.Runtime.InteropServices.DllImport("libc")]
    static extern int mallopt(int param, int value);

    public static void Run(bool tune = false)
    {
        if (tune) Console.WriteLine($"mallopt: mmap threshold {mallopt(-3, 32 << 20)}, trim threshold {mallopt(-1, 256 << 20)}, top pad {mallopt(-2, 16 << 20)}");
        long n = 109_386;
        var d = exp(-arange(n, dtype: ScalarType.Float32) / 50) * 7 + randn(n, generator: new Generator(3)) * 1e-3f;
        var op = new Diagonal(d);
        bool trim = Environment.GetEnvironmentVariable("VALLEY_BENCH_TRIM") == "1";
        var t = Runner.Interleaved(9,
            () => { if (trim) GraphCache.ResidentBytes(trim: true); }, // VALLEY_BENCH_TRIM=1: malloc_trim between the rounds, as session 11 measured
            () => GraphCache.ResidentBytes(trim: false),
            () => { using var s = NewDisposeScope(); zeros([32, n], dtype: ScalarType.Float64); },
            () => { using var s = NewDisposeScope(); Lanczos.Compute(op, new LanczosOptions { K = 1 }); },
            () => { using var s = NewDisposeScope(); Lanczos.Compute(op, new LanczosOptions { K = 5 }); },
            () => { using var s = NewDisposeScope(); StochasticLanczosQuadrature.Estimate(op, new SpectralDensityOptions { Runs = 1, Steps = 100 }); });
        Console.WriteLine((trim ? $"RSS with malloc_trim {t[0] * 1000:F2} ms, " : "no malloc_trim between rounds; RSS ") + $"without {t[1] * 1000:F3} ms; zeros [32, n] float64 {t[2] * 1000:F2} ms");
        Console.WriteLine($"on a diagonal operator: top-1 {t[3] * 1000:F1} ms, top-5 {t[4] * 1000:F1} ms, density 1×100 {t[5] * 1000:F1} ms");
        using (var s = NewDisposeScope())
        {
            var r1 = Lanczos.Compute(op, new LanczosOptions { K = 1 });
            var r5 = Lanczos.Compute(op, new LanczosOptions { K = 5 });
            Console.WriteLine($"products: top-1 {r1.Products}, top-5 {r5.Products}");
        }
    }
}

public static class StepOps
{
    public static void Run()
    {
        long n = 109_386;
        var basis = randn([20, n], dtype: ScalarType.Float64);
        var w = randn([1, n], dtype: ScalarType.Float64);
        var wf = randn([n, 1]);
        var t = Runner.Interleaved(15,
            () => { using var s = NewDisposeScope(); linalg.qr(w.t()); },
            () => { using var s = NewDisposeScope(); var x = w - basis.matmul(w.t()).t().matmul(basis); },
            () => { using var s = NewDisposeScope(); w.norm(-1); },
            () => { using var s = NewDisposeScope(); wf.to(ScalarType.Float64); },
            () => { using var s = NewDisposeScope(); isfinite(w).all().ToBoolean(); },
            () => { using var s = NewDisposeScope(); (w / w.norm()).contiguous(); });
        var q1 = randn([1, n], dtype: ScalarType.Float64); var w1 = randn([1, n], dtype: ScalarType.Float64);
        var a11 = randn([1, 1], dtype: ScalarType.Float64);
        var td = Runner.Interleaved(25,
            () => { using var s = NewDisposeScope(); q1.matmul(w1.t()); },
            () => { using var s = NewDisposeScope(); (q1 * w1).sum(); },
            () => { using var s = NewDisposeScope(); q1[0].dot(w1[0]); },
            () => { using var s = NewDisposeScope(); var x = w1 - a11.matmul(q1); },
            () => { using var s = NewDisposeScope(); var x = w1 - a11 * q1; },
            () => { using var s = NewDisposeScope(); var x = w1.clone(); });
        Console.WriteLine($"[1,n]@[n,1] {td[0] * 1000:F3} ms; (q*w).sum {td[1] * 1000:F3}; dot {td[2] * 1000:F3}; w - a@q {td[3] * 1000:F3}; w - a*q {td[4] * 1000:F3}; clone {td[5] * 1000:F3}");
        Console.WriteLine($"qr [n,1] {t[0] * 1000:F2} ms; projection against 20 rows {t[1] * 1000:F2}; norm {t[2] * 1000:F3}; to float64 {t[3] * 1000:F3}; isfinite.all {t[4] * 1000:F3}; normalize {t[5] * 1000:F3}");
    }
}

public static class MallinfoProbe
{
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    struct Mallinfo2 { public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost; }
    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mallinfo2")] static extern Mallinfo2 Get();
    static long InUse() { var m = Get(); return (long)(m.uordblks + m.hblkhd); }

    public static void Run()
    {
        var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        model.eval();
        var ps = model.parameters().Select(p => (Tensor)p).ToList();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 100; i++) InUse();
        Console.WriteLine($"mallinfo2: {sw.Elapsed.TotalMilliseconds / 100:F3} ms per call");
        for (int rep = 0; rep < 4; rep++)
        {
            var x = data.X.narrow(0, 512 * rep, 512); var y = data.Y.narrow(0, 512 * rep, 512);
            long r0 = GraphCache.ResidentBytes(trim: true), m0 = InUse();
            var l = nn.functional.cross_entropy(model.call(x), y);
            var g = autograd.grad([l], ps, retain_graph: true, create_graph: true);
            long r1 = GraphCache.ResidentBytes(trim: true), m1 = InUse();
            Console.WriteLine($"batch {rep}: RSS growth (trimmed) {(r1 - r0) / 1048576.0:F2} MiB, mallinfo2 in-use growth {(m1 - m0) / 1048576.0:F2} MiB");
            l.Dispose(); foreach (var t in g) t.Dispose();
        }
    }
}

public static class ProjectionOps
{
    public static void Run()
    {
        long n = 109_386;
        var basis = randn([1, 100, n]);
        var Vs = basis.narrow(1, 0, 51);
        var x = randn([1, n], dtype: ScalarType.Float64);
        var b64 = randn([51, n], dtype: ScalarType.Float64);
        var V2 = Vs[0];
        var t = Runner.Interleaved(15,
            () => { using var s = NewDisposeScope(); var y = x - Vs.bmm(x.unsqueeze(2).to(ScalarType.Float32)).transpose(1, 2).bmm(Vs).squeeze(1).to(ScalarType.Float64); },
            () => { using var s = NewDisposeScope(); var xf = x[0].to(ScalarType.Float32); var c = V2.mv(xf); var y = x - V2.t().mv(c).to(ScalarType.Float64); },
            () => { using var s = NewDisposeScope(); var xf = x[0].to(ScalarType.Float32); var c = V2.mv(xf); },
            () => { using var s = NewDisposeScope(); var c = b64.mv(x[0]); var y = x - b64.t().mv(c); },
            () => { using var s = NewDisposeScope(); var c = b64.mv(x[0]); var y = torch.addmv(x[0], b64.t(), c, beta: 1, alpha: -1); },
            () => { using var s = NewDisposeScope(); var xf = x.to(ScalarType.Float32); var c = xf.matmul(V2.t()); var y = x - c.matmul(V2).to(ScalarType.Float64); },
            () => { using var s = NewDisposeScope(); var c = x.matmul(b64.t()); var y = x - c.matmul(b64); },
            () => { using var s = NewDisposeScope(); var xf = x.to(ScalarType.Float32); var c = xf.matmul(V2.t()); });
        Console.WriteLine($"j=50 float32 bmm pass {t[0] * 1000:F2} ms; mv pass {t[1] * 1000:F2}; one mv {t[2] * 1000:F2}; float64 mv pass {t[3] * 1000:F2}; float64 addmv {t[4] * 1000:F2}; threads {get_num_threads()}");
        Console.WriteLine($"float32 matmul pass {t[5] * 1000:F2}; float64 matmul pass {t[6] * 1000:F2}; float32 x·Vᵀ only {t[7] * 1000:F2}");
        var xf32 = x[0].to(ScalarType.Float32);
        var halves = new[] { V2.narrow(1, 0, n / 2), V2.narrow(1, n / 2, n - n / 2) };
        var xh = new[] { xf32.narrow(0, 0, n / 2), xf32.narrow(0, n / 2, n - n / 2) };
        set_num_threads(1);
        var t1 = Runner.Interleaved(15,
            () => { using var s = NewDisposeScope(); V2.mv(xf32); },
            () => { var r = new Tensor[2]; Parallel.For(0, 2, i => { r[i] = halves[i].mv(xh[i]); }); (r[0] + r[1]).Dispose(); r[0].Dispose(); r[1].Dispose(); });
        set_num_threads(2);
        var t2 = Runner.Interleaved(15, () => { using var s = NewDisposeScope(); V2.mv(xf32); });
        Console.WriteLine($"one float32 mv: 1 thread {t1[0] * 1000:F2} ms, 2 threads {t2[0] * 1000:F2} ms, two halves on two .NET threads {t1[1] * 1000:F2} ms");
    }
}

/// <summary>A cached product by batch size: the same 2,048 examples in 1, 2, 4 and 8 batches, interleaved.</summary>
public static class CachedByBatch
{
    public static void Run(int reps)
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        var sizes = new long[] { 2048, 1024, 512, 256 };
        var objs = sizes.Select(b => new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = b })).ToArray();
        var ggns = objs.Select(o => new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = o.Options.BatchSize })).ToArray();
        var v = randn(objs[0].Size, generator: new Generator(1));
        var actions = objs.Select(o => (Action)(() => { using var s = NewDisposeScope(); o.HessianVectorProduct(v); }))
            .Concat(ggns.Select(o => (Action)(() => { using var s = NewDisposeScope(); new GgnOperator(o).Apply(v); }))).ToArray();
        var t = Runner.Interleaved(reps, actions);
        for (int i = 0; i < sizes.Length; i++)
            Console.WriteLine($"batch {sizes[i],5}: cached Hv {t[i] * 1000:F2} ms, cached GGN {t[sizes.Length + i] * 1000:F2} ms (GGN / Hv {t[sizes.Length + i] / t[i]:F2})");
        foreach (var o in objs.Concat(ggns)) o.Dispose();
    }
}

/// <summary>
/// What XTrace's growth costs besides its products, on n = 109,386 (the speed bench's model): drawing 10 Gaussian test
/// vectors in float64 and in float32, the QR of a new block, Cholesky QR instead, a Gram-Schmidt pass against 30 rows, QΩᵀ.
/// </summary>
public static class XTraceOps
{
    public static void Run()
    {
        long n = 109_386;
        var gen = new Generator(1);
        var y = randn([10, n], dtype: ScalarType.Float64);
        var q = linalg.qr(randn([n, 30], dtype: ScalarType.Float64)).Q.t().contiguous();
        var t = Runner.Interleaved(9,
            () => { using var s = NewDisposeScope(); randn([10, n], dtype: ScalarType.Float64, generator: new Generator(5)); },
            () => { using var s = NewDisposeScope(); randn([10, n], dtype: ScalarType.Float32, generator: new Generator(5)); },
            () => { using var s = NewDisposeScope(); linalg.qr(y.t()); },
            () => { using var s = NewDisposeScope(); var g = y.matmul(y.t()); var l = linalg.cholesky(g); linalg.solve_triangular(l, y, upper: false); },
            () => { using var s = NewDisposeScope(); var c = q.matmul(y.t()); var r = y - c.t().matmul(q); },
            () => { using var s = NewDisposeScope(); q.matmul(y.t()).cpu(); });
        Console.WriteLine($"randn [10,n] f64 {t[0] * 1e3:F2} ms, f32 {t[1] * 1e3:F2}; qr [n,10] {t[2] * 1e3:F2}; cholesky-QR {t[3] * 1e3:F2}; GS pass vs 30 rows {t[4] * 1e3:F2}; Q·Yᵀ {t[5] * 1e3:F2}");
    }
}

/// <summary>
/// How well XTrace's reported standard error covers the true trace on XTraceTests' dense spectra (n = 200), over many more
/// seeds than the test: the fraction of estimates within 2 reported errors (95% for a calibrated normal error) and the mean
/// of z² = ((estimate − trace) / error)² (1 when the error is calibrated), for the fixed-budget form (s = 20) and the
/// adaptive form at 2%.
/// </summary>
public static class XTraceCoverage
{
    public static void Run(int seeds)
    {
        const int N = 200;
        var spectra = new (string, double[])[]
        {
            ("flat", Enumerable.Range(0, N).Select(i => 1.0 + (i % 10) * 0.1).ToArray()),
            ("decaying", Enumerable.Range(0, N).Select(i => 100.0 * Math.Pow(i + 1, -1.5)).ToArray()),
            ("indefinite", Enumerable.Range(0, N).Select(i => (i % 3 == 0 ? -1.0 : 1.0) * (1 + 10.0 * Math.Exp(-i / 20.0))).ToArray()),
        };
        foreach (var (name, spectrum) in spectra)
        {
            using var op = DenseOperator.WithSpectrum(spectrum, seed: 2);
            double trace = spectrum.Sum();
            foreach (var options in new[] { new XTraceOptions { RelativeStandardError = null, MaxProducts = 40 }, new XTraceOptions { RelativeStandardError = 0.02 } })
            {
                int covered = 0;
                double z2 = 0;
                for (int seed = 0; seed < seeds; seed++)
                {
                    using var scope = NewDisposeScope();
                    var r = XTrace.Estimate(op, options with { Seed = seed });
                    double z = (r.Trace - trace) / r.StandardError;
                    z2 += z * z;
                    if (Math.Abs(z) <= 2) covered++;
                }
                Console.WriteLine($"{name,-10} {(options.RelativeStandardError is { } t ? $"to {t:P0}" : "s = 20"),-7}: {covered}/{seeds} within 2 reported errors ({100.0 * covered / seeds:F1}%), mean z² {z2 / seeds:F2}");
            }
        }
    }
}

/// <summary>
/// SLQ with a semiorthogonal basis (the default) against full reorthogonalization on the speed bench's Hessian (tanh MLP,
/// 2,048 examples in 4 batches of 512): subtraction passes skipped, the bases' orthogonality at the end, how far the nodes
/// and weights move, and the time of each (interleaved rounds on fresh objectives), for 1 run × 100 steps (PyHessian's) and
/// the default 10 × 80.
/// </summary>
public static class DensityReorthogonalizationBench
{
    public static void Run(int reps)
    {
        var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        model.eval();
        foreach (var (runs, steps) in new[] { (1, 100), (10, 80) })
        {
            var semi = new SpectralDensityOptions { Runs = runs, Steps = steps };
            var full = semi with { Reorthogonalization = DensityReorthogonalization.Full };
            StochasticLanczosQuadrature.LockstepRuns Lockstep(SpectralDensityOptions o)
            {
                using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512 });
                var op = new HessianOperator(obj);
                var starts = SpectrumMath.Rademacher(runs, op.Size, new Generator(0), ScalarType.Float64) / Math.Sqrt(op.Size);
                return StochasticLanczosQuadrature.LanczosLockstep(op, new ProductBudget(op, runs * steps, "bench"), starts, steps, o, null, default, measureOrthogonality: true);
            }
            var ls = Lockstep(semi);
            var lf = Lockstep(full);
            double top = 0, dn = 0, dw = 0;
            for (int r = 0; r < runs; r++)
            {
                var (sn, sw) = StochasticLanczosQuadrature.GaussQuadrature(ls.Tridiagonals[r].Alpha, ls.Tridiagonals[r].Beta);
                var (fn, fw) = StochasticLanczosQuadrature.GaussQuadrature(lf.Tridiagonals[r].Alpha, lf.Tridiagonals[r].Beta);
                top = Math.Max(top, fn.Max(Math.Abs));
                dn = Math.Max(dn, sn.Zip(fn, (a, b) => Math.Abs(a - b)).Max());
                dw = Math.Max(dw, sw.Zip(fw, (a, b) => Math.Abs(a - b)).Max());
            }
            Console.WriteLine($"{runs} run(s) × {steps} steps: semiorthogonal skipped {ls.SkippedSubtractions} of {steps - 1} subtraction passes; bases off by {ls.OrthogonalityDefect:0.0e+0} " +
                              $"(full: {lf.OrthogonalityDefect:0.0e+0}); nodes moved by at most {dn / top:0.0e+0}·λmax, weights by {dw:0.0e+0}");
            Action Time(SpectralDensityOptions o) => () =>
            {
                using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512 });
                using var s = NewDisposeScope();
                StochasticLanczosQuadrature.Estimate(new HessianOperator(obj), o);
            };
            var t = Runner.InterleavedRounds(reps, Time(semi), Time(full));
            Console.WriteLine($"    semiorthogonal {Runner.Median(t[0]):F3} s, full {Runner.Median(t[1]):F3} s, semiorthogonal ÷ full {Runner.MedianRatio(t[0], t[1]):F3} (median of {reps} rounds)");
        }
    }
}

/// <summary>
/// The cost of first touching fresh memory: a [32, n] float64 buffer (n = 109,386, as a Krylov basis) allocated, then 24 rows
/// copied in one by one, then copied again, six times over. With LibTorch's huge pages (THP_MEM_ALLOC_ENABLE=1) each 2 MB page
/// costs its fault on first touch; run with the variable set to 0 to compare.
/// </summary>
public static class FaultProbe
{
    public static void Run()
    {
        long n = 109_386;
        var row = randn([1, n], dtype: ScalarType.Float64);
        for (int rep = 0; rep < 6; rep++)
        {
            using var s = NewDisposeScope();
            var sw = Stopwatch.StartNew();
            var buf = empty([32, n], dtype: ScalarType.Float64);
            double alloc = sw.Elapsed.TotalMilliseconds; sw.Restart();
            var times = new List<double>();
            for (int j = 0; j < 24; j++) { sw.Restart(); buf.narrow(0, j, 1).copy_(row); times.Add(sw.Elapsed.TotalMilliseconds); }
            sw.Restart();
            for (int j = 0; j < 24; j++) buf.narrow(0, j, 1).copy_(row);
            double again = sw.Elapsed.TotalMilliseconds;
            Console.WriteLine($"alloc {alloc:F2} ms; first copies {times.Sum():F1} ms ({string.Join(" ", times.Take(8).Select(t => t.ToString("F2")))} ...); second copies {again:F2} ms");
        }
    }
}

/// <summary>
/// What block Lanczos and the multiplicity probe cost on the speed bench's model (`lanczos-blocks`): the reference
/// eigenvalues from float64 products at tolerance 1e-6; the time of one cached block product of 1–6 vectors (interleaved
/// medians, as multiples of a single product); and the products top-5 needs over seeds with block sizes 1, 2, 3, with and
/// without the probe (counts are machine-independent).
/// </summary>
public static class LanczosBlocks
{
    public static void Run(int seeds, int reps)
    {
        if (seeds < 1) throw new ArgumentOutOfRangeException(nameof(seeds), seeds, "--seeds must be at least 1");
        if (reps < 1) throw new ArgumentOutOfRangeException(nameof(reps), reps, "--reps must be at least 1");
        var (model, data) = SpeedBench.TrainedMlp("mlp:784-128-64-10:tanh");
        using var _d = data;
        // First: a float64 objective converts the model for its lifetime, which replaces the parameter tensors another
        // objective on the same model would hold.
        double[] reference;
        using (var obj64 = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512, DType = ScalarType.Float64 }))
        {
            var r64 = Lanczos.Compute(new HessianOperator(obj64), new LanczosOptions { K = 5, Tolerance = 1e-6 });
            reference = r64.Values;
            Console.WriteLine($"reference (float64 products, tolerance 1e-6): λ {string.Join(" ", r64.Values.Select(x => x.ToString("G9")))} in {r64.Products} products, converged: {r64.Converged}");
        }
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512 });
        var op = new HessianOperator(obj);
        var vs = new[] { 1, 2, 3, 4, 5, 6 }.Select(b => randn([op.Size, b], generator: new Generator((ulong)b))).ToArray();
        op.ApplyBlock(vs[0]).Dispose();
        var t = Runner.Interleaved(reps, vs.Select(V => (Action)(() => { using var s = NewDisposeScope(); op.ApplyBlock(V); })).ToArray());
        foreach (var V in vs) V.Dispose();
        for (int i = 0; i < t.Length; i++) Console.WriteLine($"block {i + 1}: {t[i] * 1e3:F2} ms = {t[i] / t[0]:F2} singles ({t[i] / t[0] / (i + 1):F2} per vector)");
        foreach (var (name, o) in new[] {
            ("block 1 with the probe (default)", new LanczosOptions { K = 5 }),
            ("block 1 without the probe", new LanczosOptions { K = 5, CheckMultiplicity = false }),
            ("block 2 with the probe", new LanczosOptions { K = 5, BlockSize = 2 }),
            ("block 2 without the probe", new LanczosOptions { K = 5, BlockSize = 2, CheckMultiplicity = false }),
            ("block 3 without the probe", new LanczosOptions { K = 5, BlockSize = 3, CheckMultiplicity = false }) })
        {
            var rs = Enumerable.Range(0, seeds).Select(s => Lanczos.Compute(op, o with { Seed = s })).ToList();
            // The largest relative distance of any seed's eigenvalue from the float64 reference.
            double gap = rs.SelectMany(r => r.Values.Zip(reference, (v, e) => Math.Abs(v - e) / Math.Abs(e))).Max();
            Console.WriteLine($"top-5, {name}: products over seeds {string.Join(" ", rs.Select(r => r.Products))} mean {rs.Average(r => r.Products):F2}; " +
                              $"all converged: {rs.All(r => r.Converged)}; largest relative distance from the reference {gap:0.0e+0}");
        }
    }
}
