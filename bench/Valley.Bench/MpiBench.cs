using System.Diagnostics;
using System.Globalization;
using Valley.Curvature;
using Valley.Distributed;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Data-parallel Hessian-vector products over 8,192 Fashion-MNIST examples with 1 and 2 MPI ranks on the same cores
/// The driver starts the workers under mpiexec.mpich, alternating the configurations, and reports median seconds per
/// product, the speedup (ideal 2.0) and the share of a product spent in the collective.
/// </summary>
public static class MpiBench
{
    public static void Drive(int examples, int products, int rounds)
    {
        var self = typeof(MpiBench).Assembly.Location;
        // (ranks, threads per rank): strong scaling at one thread per rank (ideal 2.0), and two ranks against one rank that
        // uses both cores through LibTorch's own threads.
        var configs = new[] { (Ranks: 1, Threads: 1), (Ranks: 2, Threads: 1), (Ranks: 1, Threads: 2) };
        var results = configs.ToDictionary(c => c, _ => new List<double[]>());
        var pairs = new List<double>();
        for (int r = 0; r < rounds; r++)
            foreach (var c in configs)
            {
                var psi = new ProcessStartInfo("mpiexec.mpich", ["-n", c.Ranks.ToString(), "dotnet", self, "mpi-hvp-worker", "--examples", examples.ToString(),
                    "--products", products.ToString(), "--rank-threads", c.Threads.ToString()]) { RedirectStandardOutput = true };
                using var p = Process.Start(psi)!;
                var line = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
                p.WaitForExit();
                if (p.ExitCode != 0) throw new InvalidOperationException($"worker with {c.Ranks} ranks failed ({p.ExitCode})");
                results[c].Add(line.Split(' ').Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray());
                Console.WriteLine($"round {r + 1}, {c.Ranks} rank(s) × {c.Threads} thread(s): {line}");
                if (c.Ranks == 2)
                {
                    // The machine's ceiling for two ranks: two independent processes, each with half the examples and no MPI,
                    // side by side; the slower one counts.
                    var procs = Enumerable.Range(0, 2).Select(_ => Process.Start(new ProcessStartInfo("dotnet", [self, "mpi-hvp-worker", "--examples", (examples / 2).ToString(),
                        "--products", products.ToString(), "--rank-threads", "1"]) { RedirectStandardOutput = true })!).ToList();
                    var times = procs.Select(p2 => double.Parse(p2.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last().Split(' ')[0], CultureInfo.InvariantCulture)).ToList();
                    foreach (var p2 in procs) { p2.WaitForExit(); p2.Dispose(); }
                    pairs.Add(times.Max());
                    Console.WriteLine($"round {r + 1}, 2 independent processes × 1 thread, {examples / 2} examples each: {string.Join(" ", times.Select(t => t.ToString("R", CultureInfo.InvariantCulture)))}");
                }
            }
        double Median((int, int) c, int k) { var v = results[c].Select(x => x[k]).OrderBy(x => x).ToList(); return v[v.Count / 2]; }
        double t11 = Median(configs[0], 0), t21 = Median(configs[1], 0), t12 = Median(configs[2], 0), comm = Median(configs[1], 1);
        Console.WriteLine($"Hessian-vector products, mlp:784-128-64-10:tanh, {examples} Fashion-MNIST examples, batch 1024, float32, medians of {rounds} runs × {products} products");
        Console.WriteLine($"1 rank  × 1 thread:  {t11 * 1000,8:F1} ms per product");
        Console.WriteLine($"2 ranks × 1 thread:  {t21 * 1000,8:F1} ms per product   speedup {t11 / t21:F2} over 1 rank × 1 thread (ideal 2.0)");
        Console.WriteLine($"1 rank  × 2 threads: {t12 * 1000,8:F1} ms per product   (2 ranks × 1 thread is {t12 / t21:F2}× faster on the same 2 cores)");
        double alone = Median(configs[1], 3);
        double pair = pairs.OrderBy(x => x).ElementAt(pairs.Count / 2);
        Console.WriteLine($"2 independent processes × 1 thread with {examples / 2} examples each, side by side, no MPI: {pair * 1000,8:F1} ms per product " +
                          $"(this machine's ceiling for 2 ranks: speedup {t11 / pair:F2}; 2 ranks reach {100 * pair / t21:F0}% of it)");
        Console.WriteLine($"communication per product (reduce + broadcast of {Median(configs[1], 2):F0} float64 values): {comm * 1000:F2} ms = {100 * comm / t21:F1}% of a product, " +
                          $"of which the collective itself (ranks lined up) {alone * 1000:F2} ms = {100 * alone / t21:F1}% and the rest waiting for the slower rank");
    }

    /// <summary>One rank's part: prints "seconds-per-product communication-seconds-per-product parameters" on rank 0.</summary>
    public static void Worker(int examples, int products, int threads)
    {
        using var group = MpiProcessGroup.FromEnvironment() as MpiProcessGroup;
        IProcessGroup g = (IProcessGroup?)group ?? SingleProcess.Instance;
        set_num_threads(threads > 0 ? threads : Math.Max(1, Environment.ProcessorCount / g.Size));
        using var all = Runner.FashionSubset(examples);
        using var shard = g.Size > 1 ? all.Shard(g) : null;
        var data = shard ?? all;
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 1024, CacheGraph = false, Group = g });
        using var v = randn(obj.Size, generator: new Generator(1));
        using (NewDisposeScope()) obj.HessianVectorProduct(v); // warm-up
        g.Barrier();
        double comm0 = g.CommunicationSeconds;
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < products; i++)
            using (NewDisposeScope()) obj.HessianVectorProduct(v);
        double seconds = sw.Elapsed.TotalSeconds / products, comm = (g.CommunicationSeconds - comm0) / products;
        // The collective alone, ranks lined up by a barrier before each: what the reduction costs without waiting.
        var buffer = new double[obj.Size];
        double alone = 0;
        for (int i = 0; i < products; i++)
        {
            g.Barrier();
            var t = Stopwatch.StartNew();
            g.Sum(buffer);
            alone += t.Elapsed.TotalSeconds;
        }
        if (g.IsRoot()) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{seconds:R} {comm:R} {obj.Size} {alone / products:R}"));
    }
}
