using System.Diagnostics;
using System.Globalization;
using Valley.Curvature;
using Valley.Distributed;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Data-parallel Hessian-vector products over 8,192 Fashion-MNIST examples with 1 and 2 MPI ranks on the same cores
/// (1 rank × 2 threads vs 2 ranks × 1 thread). The driver starts the workers under mpiexec.mpich, alternating 1 and 2 ranks,
/// and reports median seconds per product, the speedup (ideal 2.0) and the share of a product spent in the collective.
/// </summary>
public static class MpiBench
{
    public static void Drive(int examples, int products, int rounds)
    {
        var self = typeof(MpiBench).Assembly.Location;
        var results = new Dictionary<int, List<double[]>> { [1] = [], [2] = [] };
        for (int r = 0; r < rounds; r++)
            foreach (int ranks in new[] { 1, 2 })
            {
                var psi = new ProcessStartInfo("mpiexec.mpich", ["-n", ranks.ToString(), "dotnet", self, "mpi-hvp-worker", "--examples", examples.ToString(), "--products", products.ToString()])
                    { RedirectStandardOutput = true };
                using var p = Process.Start(psi)!;
                var line = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
                p.WaitForExit();
                if (p.ExitCode != 0) throw new InvalidOperationException($"worker with {ranks} ranks failed ({p.ExitCode})");
                results[ranks].Add(line.Split(' ').Select(s => double.Parse(s, CultureInfo.InvariantCulture)).ToArray());
                Console.WriteLine($"round {r + 1}, {ranks} rank(s): {line}");
            }
        double Median(int ranks, int k) { var v = results[ranks].Select(x => x[k]).OrderBy(x => x).ToList(); return v[v.Count / 2]; }
        double t1 = Median(1, 0), t2 = Median(2, 0), comm = Median(2, 1);
        Console.WriteLine($"Hessian-vector products, mlp:784-128-64-10:tanh, {examples} Fashion-MNIST examples, batch 1024, float32, medians of {rounds} runs × {products} products");
        Console.WriteLine($"1 rank  × 2 threads: {t1 * 1000,8:F1} ms per product");
        Console.WriteLine($"2 ranks × 1 thread:  {t2 * 1000,8:F1} ms per product   speedup {t1 / t2:F2} (ideal 2.0)");
        Console.WriteLine($"communication (reduce + broadcast of {Median(2, 2):F0} float64 values): {comm * 1000:F2} ms per product = {100 * comm / t2:F1}% of a product");
    }

    /// <summary>One rank's part: prints "seconds-per-product communication-seconds-per-product parameters" on rank 0.</summary>
    public static void Worker(int examples, int products)
    {
        using var group = MpiProcessGroup.FromEnvironment() as MpiProcessGroup;
        IProcessGroup g = (IProcessGroup?)group ?? SingleProcess.Instance;
        set_num_threads(Math.Max(1, Environment.ProcessorCount / g.Size));
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
        if (g.IsRoot()) Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{seconds:R} {comm:R} {obj.Size}"));
    }
}
