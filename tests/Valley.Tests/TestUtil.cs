using TorchSharp;
using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Tests;

/// <summary>Helpers shared by tests: LibTorch set up once, temp folders, small modules with known Hessians.</summary>
public static class TestUtil
{
    static TestUtil()
    {
        TorchRuntime.EnableHugePageAllocations(); // as the valley tool runs
        TorchRuntime.EnsureLoaded();
        set_num_threads(Math.Min(2, Environment.ProcessorCount));
    }

    public static void Init() { }

    /// <summary>A fresh folder under this test run's root.</summary>
    public static string TempDir(string name)
    {
        var d = Path.Combine(RunRoot, name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    // One root per test process, removed when the process exits. Tests write thousands of folders (38 GB had piled up
    // under /tmp over a few weeks of runs, and a full disk then failed CI's build), so nothing may outlive its run; the
    // roots of runs that were killed are removed by the next run once their process is gone.
    static readonly string RunRoot = CreateRunRoot();

    static string CreateRunRoot()
    {
        // scripts/test.sh names a folder of its own, which it removes when the run ends: the test host may be ended without
        // its exit handlers running.
        var parent = Environment.GetEnvironmentVariable("VALLEY_TEST_ROOT") is { Length: > 0 } given ? given : Path.Combine(Path.GetTempPath(), "valley-tests");
        Directory.CreateDirectory(parent);
        foreach (var stale in Directory.EnumerateDirectories(parent))
            if (IsStale(Path.GetFileName(stale), Directory.GetLastWriteTimeUtc(stale))) TryDelete(stale);
        var root = Path.Combine(parent, $"run-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}");
        Directory.CreateDirectory(root);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => TryDelete(root);
        return root;
    }

    /// <summary>A run root whose process no longer exists, or a folder of the older layout (one folder per test) not
    /// touched for a day.</summary>
    internal static bool IsStale(string name, DateTime lastWriteUtc)
    {
        var parts = name.Split('-');
        if (parts.Length == 3 && parts[0] == "run" && int.TryParse(parts[1], out var pid))
            return pid != Environment.ProcessId && !Valley.IO.AtomicFile.Alive(pid);
        return DateTime.UtcNow - lastWriteUtc > TimeSpan.FromDays(1);
    }

    static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>A folder with train.csv holding a seeded Gaussian mixture (features a, b, c, ... and a label column).</summary>
    public static string CsvFolder(string name, long n, int dim, int classes, long seed)
    {
        var dir = TempDir(name);
        using var d = Valley.Data.Synthetic.GaussianMixture(n, dim, classes, seed);
        var x = d.X.data<float>().ToArray();
        var y = d.Y.data<long>().ToArray();
        var header = string.Join(",", Enumerable.Range(0, dim).Select(i => ((char)('a' + i)).ToString())) + ",label";
        File.WriteAllLines(Path.Combine(dir, "train.csv"), new[] { header }.Concat(Enumerable.Range(0, (int)n).Select(i =>
            string.Join(",", x.Skip(dim * i).Take(dim).Select(v => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture))) + "," + y[i])));
        return dir;
    }

    public static double[,] ToArray2D(Tensor t)
    {
        var c = t.to(ScalarType.Float64).cpu().contiguous();
        int n = (int)c.shape[0], m = (int)c.shape[1];
        var data = c.data<double>().ToArray();
        var a = new double[n, m];
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) a[i, j] = data[i * m + j];
        return a;
    }

    public static double MaxAbsDiff(double[,] a, double[,] b)
    {
        double m = 0;
        for (int i = 0; i < a.GetLength(0); i++) for (int j = 0; j < a.GetLength(1); j++) m = Math.Max(m, Math.Abs(a[i, j] - b[i, j]));
        return m;
    }

    public static double MaxAbs(double[,] a)
    {
        double m = 0;
        foreach (var v in a) m = Math.Max(m, Math.Abs(v));
        return m;
    }
}

/// <summary>f(x; w) = ½ wᵀAw + bᵀw for every example (the input is ignored): the loss is a known quadratic.</summary>
public sealed class QuadraticModule : nn.Module<Tensor, Tensor>
{
    readonly TorchSharp.Modules.Parameter w;
    readonly Tensor A, b;

    public QuadraticModule(Tensor a, Tensor bvec, Tensor w0) : base("Quadratic")
    {
        A = a.clone();
        b = bvec.clone();
        w = new TorchSharp.Modules.Parameter(w0.clone());
        register_parameter("w", w);
    }

    public override Tensor forward(Tensor x)
    {
        var q = 0.5 * w.dot(A.matmul(w)) + b.dot(w);
        return q.expand(x.shape[0]);
    }

    /// <summary>Loss = mean of the model output.</summary>
    public static readonly LossFunction MeanOutput = (o, _) => o.mean();
}
