using System.Diagnostics;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

public static class Runner
{
    public static int Main(string[] args)
    {
        TorchRuntime.EnableHugePageAllocations();
        TorchRuntime.EnsureLoaded();
        var name = args.FirstOrDefault() ?? "help";
        int threads = IntArg(args, "--threads", 2);
        set_num_threads(threads);
        switch (name)
        {
            case "hvp": HvpBench.Run(IntArg(args, "--examples", 2048), IntArg(args, "--reps", 15), threads, IntArg(args, "--batch-size", 2048)); return 0;
            case "spectrum": SpectrumBench.Run(threads, StrArg(args, "--out", "artifacts/bench/spectrum")); return 0;
            case "sam-step": TrainBench.StepTime(IntArg(args, "--reps", 201)); return 0;
            case "sgd-vs-sam": TrainBench.SgdVsSam(StrArg(args, "--out", "artifacts/bench/sgd-vs-sam"), double.Parse(StrArg(args, "--stop-at-loss", "0.25"), System.Globalization.CultureInfo.InvariantCulture), IntArg(args, "--max-epochs", 40)); return 0;
            case "sharpness": SharpnessBench.Run(); return 0;
            case "soak-cached": SoakBench.Cached(IntArg(args, "--products", 10_000)); return 0;
            case "soak": SoakBench.Run(IntArg(args, "--products", 10_000), IntArg(args, "--points", 101)); return 0;
            case "landscape": LandscapeBench.Run(IntArg(args, "--points", 51)); return 0;
            case "hvp-profile": HvpProfile.Run(); return 0;
            case "mm-profile": MatmulProfile.Run(); return 0;
            case "stack-profile": StackProfile.Run(IntArg(args, "--reps", 21)); return 0;
            case "mpi-hvp": MpiBench.Drive(IntArg(args, "--examples", 8192), IntArg(args, "--products", 20), IntArg(args, "--rounds", 5)); return 0;
            case "mpi-hvp-worker": MpiBench.Worker(IntArg(args, "--examples", 8192), IntArg(args, "--products", 20), IntArg(args, "--rank-threads", 0)); return 0;
            case "archive-hvp": ArchiveBench.Run(IntArg(args, "--examples", 2048), IntArg(args, "--reps", 31), threads); return 0;
            case "kfac-profile": KfacProfile.Run(IntArg(args, "--reps", 7)); return 0;
            case "eigh-profile": EighProfile.Run(); return 0;
            case "operators": OperatorBench.Run(IntArg(args, "--examples", 2048), IntArg(args, "--reps", 15), threads, IntArg(args, "--batch", 0)); return 0;
            case "floor-profile": FloorProfile.Run(IntArg(args, "--reps", 3)); return 0;
            case "fault-probe": FaultProbe.Run(); return 0;
            case "lanczos-blocks": LanczosBlocks.Run(IntArg(args, "--seeds", 8), IntArg(args, "--reps", 11)); return 0;
            case "lanczos-seeds": SpeedBench.LanczosSeeds(IntArg(args, "--seeds", 24)); return 0;
            case "estimator-overhead": EstimatorOverhead.Run(args.Contains("--mallopt")); return 0;
            case "step-ops": StepOps.Run(); return 0;
            case "rpass-ops": RpassOps.Run(); return 0;
            case "mallinfo": MallinfoProbe.Run(); return 0;
            case "projection-ops": ProjectionOps.Run(); return 0;
            case "cached-by-batch": CachedByBatch.Run(IntArg(args, "--reps", 9)); return 0;
            case "speed": SpeedBench.Run(threads, StrArg(args, "--out", "artifacts/bench/speed"), IntArg(args, "--rounds", 5)); return 0;
            case "xtrace-ops": XTraceOps.Run(); return 0;
            case "density-reorth": DensityReorthogonalizationBench.Run(IntArg(args, "--reps", 5)); return 0;
            case "xtrace-coverage": XTraceCoverage.Run(IntArg(args, "--seeds", 400)); return 0;
            case "trace-products": SpeedBench.TraceProducts(StrArg(args, "--model", "mlp:784-128-64-10"), IntArg(args, "--seeds", 5)); return 0;
            case "estimator-products": SpeedBench.EstimatorProducts(StrArg(args, "--model", "mlp:784-128-64-10")); return 0;
            case "hvp-memory": HvpBench.Memory(IntArg(args, "--examples", 2048), IntArg(args, "--products", 1000)); return 0;
            default:
                Console.WriteLine("benchmarks: speed [--threads 2 --rounds 5 --out DIR] (issue 17's table vs PyHessian, 4 batches of 512, in alternating rounds), trace-products [--model SPEC --seeds 5], xtrace-ops (XTrace's sketch operations), density-reorth [--reps 5] (SLQ: semiorthogonal vs full reorthogonalization), xtrace-coverage [--seeds 400] (calibration of XTrace's error), estimator-products [--model SPEC], lanczos-seeds [--seeds 24] (products of top-1 and top-5 over start seeds), lanczos-blocks [--seeds 8 --reps 11] (block product cost by width; top-5's products by block size, with and without the multiplicity probe), rpass-ops (a cached R-pass product op by op), fault-probe (first touch of a fresh Krylov basis), operators [--examples 2048 --reps 15] (GGN/EF product vs Hv, K-FAC top-5 vs Lanczos), soak [--products 10000 --points 101], landscape [--points 51], sharpness, sam-step [--reps 201], sgd-vs-sam [--stop-at-loss 0.25 --max-epochs 40], spectrum [--threads 2 --out DIR], hvp [--examples 2048 --reps 15 --threads 2], hvp-memory [--examples 2048 --products 1000], archive-hvp [--examples 2048 --reps 31 --threads 2], mpi-hvp [--examples 8192 --products 20 --rounds 5] (needs MPICH)");
                return name == "help" ? 0 : 1;
        }
    }

    public static string StrArg(string[] args, string name, string def)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : def;
    }

    public static int IntArg(string[] args, string name, int def)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1]) : def;
    }

    /// <summary>Fashion-MNIST training subset (Debian's dataset-fashion-mnist), the benchmarks' standard data.</summary>
    public static Dataset FashionSubset(long n, long seed = 0)
    {
        using var split = DataSources.Open(null);
        return split.Train.Subset(n, seed);
    }

    /// <summary>Median seconds of each action, repetitions interleaved (A B A B ...) so that machine noise hits both alike.</summary>
    public static double[] Interleaved(int reps, params Action[] actions) => InterleavedRounds(reps, actions).Select(Median).ToArray();

    /// <summary>Seconds of each action in every round (rounds interleaved A B A B ...), after one warm-up round.</summary>
    public static List<double>[] InterleavedRounds(int reps, params Action[] actions)
    {
        foreach (var a in actions) a(); // warm-up
        var times = actions.Select(_ => new List<double>()).ToArray();
        for (int r = 0; r < reps; r++)
            for (int i = 0; i < actions.Length; i++)
            {
                var sw = Stopwatch.StartNew();
                actions[i]();
                times[i].Add(sw.Elapsed.TotalSeconds);
            }
        return times;
    }

    /// <summary>The median of the ratios a[r] / b[r] of the same rounds: a burst of load slows both of a round alike, so it cancels.</summary>
    public static double MedianRatio(List<double> a, List<double> b) => Median(a.Zip(b, (x, y) => x / y).ToList());

    /// <summary>The median (upper median for an even count).</summary>
    public static double Median(List<double> t) => t.OrderBy(x => x).ElementAt(t.Count / 2);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    /// <summary>Resident set size after a full compacting GC and (on Linux) malloc_trim, so that only live memory counts.</summary>
    public static long ResidentBytes()
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        if (OperatingSystem.IsLinux()) MallocTrim(0);
        using var p = Process.GetCurrentProcess();
        return p.WorkingSet64;
    }
}

public static class HvpBench
{
    public static void Run(int examples, int reps, int threads, int batch)
    {
        using var data = Runner.FashionSubset(examples);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch, CacheGraph = false });
        using var cached = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch });
        var v = randn(obj.Size, generator: new Generator(1));
        var t = Runner.Interleaved(reps,
            () => { using var s = NewDisposeScope(); obj.LossAndGradient(); },
            () => { using var s = NewDisposeScope(); obj.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); cached.HessianVectorProduct(v); });
        Console.WriteLine($"model mlp:784-128-64-10:tanh ({obj.Size} parameters), {examples} Fashion-MNIST examples, batch size {batch}, {threads} threads, median of {reps}");
        Console.WriteLine($"full-data gradient:              {t[0] * 1000,8:F2} ms");
        Console.WriteLine($"full-data Hessian-vector product: {t[1] * 1000,8:F2} ms");
        Console.WriteLine($"ratio Hv / gradient:              {t[1] / t[0],8:F2}   (target <= 2.5)");
        Console.WriteLine($"repeated Hv at the same weights with the cached graphs ({cached.CachedBatches} of {(examples + batch - 1) / batch} batches): {t[2] * 1000:F2} ms ({t[2] / t[0]:F2}× a gradient)");
    }

    public static void Memory(int examples, int products)
    {
        using var data = Runner.FashionSubset(examples);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 512 });
        var op = new HessianOperator(obj);
        var v = randn(obj.Size, generator: new Generator(1));
        long after10 = 0;
        var marks = new SortedDictionary<int, long>();
        for (int i = 1; i <= products; i++)
        {
            using (NewDisposeScope()) op.Apply(v);
            if (i == 10 || i == 100 || i % 500 == 0 || i == products)
            {
                GC.Collect();
                marks[i] = Runner.ResidentBytes();
                if (i == 10) after10 = marks[i];
            }
        }
        Console.WriteLine($"resident memory (MiB) after N Hessian-vector products, mlp:784-128-64-10:tanh, {examples} examples, batch 512:");
        foreach (var (i, bytes) in marks) Console.WriteLine($"  {i,6}: {bytes / 1048576.0,8:F1}");
        long end = marks[products];
        Console.WriteLine($"growth from 10 to {products}: {100.0 * (end - after10) / after10:F2}%; from 100 to {products}: {100.0 * (end - marks[100]) / marks[100]:F2}% (target < 5%)");
    }
}
