using System.Diagnostics;
using System.Text.Json;
using TorchSharp;
using TorchSharp.PyBridge;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Issue 3's benchmark: Valley's spectrum estimators side by side with a PyTorch reference of PyHessian's algorithms
/// (bench/pyhessian_reference.py on Debian's python3-torch), same trained model, same 2,048 Fashion-MNIST examples, same threads.
/// </summary>
public static class SpectrumBench
{
    public static void Run(int threads, string outDir)
    {
        Directory.CreateDirectory(outDir);
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        model.eval();
        Export(model, data, outDir);
        var py = RunPython(outDir, threads);

        Objective Fresh(long batch = 2048) => new(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch });
        T Median<T>(int reps, Func<T> f, Func<T, double> seconds)
        {
            var all = Enumerable.Range(0, reps).Select(_ => f()).ToList();
            return all.OrderBy(seconds).ElementAt(reps / 2);
        }
        (Eigenpairs, double) Eig(int k, int reps) => Median(reps, () =>
        {
            using var obj = Fresh();
            var sw = Stopwatch.StartNew();
            var r = Lanczos.Compute(new HessianOperator(obj), new LanczosOptions { K = k, Tolerance = 1e-3 });
            return (r, sw.Elapsed.TotalSeconds);
        }, x => x.Item2);
        (SpectralDensity, double) Slq(int runs, int steps, bool block, long batch, int reps) => Median(reps, () =>
        {
            using var obj = Fresh(batch);
            var sw = Stopwatch.StartNew();
            var r = StochasticLanczosQuadrature.Estimate(new HessianOperator(obj), new SpectralDensityOptions { Runs = runs, Steps = steps, BlockProducts = block });
            return (r, sw.Elapsed.TotalSeconds);
        }, x => x.Item2);
        (TraceEstimate, double) Trace(bool plusPlus) { using var obj = Fresh(); var sw = Stopwatch.StartNew();
            var op = new HessianOperator(obj);
            var r = plusPlus ? HutchPlusPlus.Estimate(op, new HutchPlusPlusOptions { SketchSize = 20, RelativeStandardError = 0.01, MaxProducts = 5000 })
                             : Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = 0.01, MaxProducts = 5000 });
            return (r, sw.Elapsed.TotalSeconds); }

        var top1 = Eig(1, 3);
        var top5 = Eig(5, 1);
        var slq1 = Slq(1, 100, true, 2048, 3);
        var blockMulti = Slq(10, 80, true, 512, 1);
        var seqMulti = Slq(10, 80, false, 512, 1);
        var blockOne = Slq(10, 80, true, 2048, 1);
        var seqOne = Slq(10, 80, false, 2048, 1);
        var hutch = Trace(false);
        var hpp = Trace(true);

        Console.WriteLine($"mlp:784-128-64-10:tanh (109,386 parameters) after 2 epochs of Adam on 10,000 Fashion-MNIST images; 2,048 examples, {threads} threads");
        Console.WriteLine($"PyTorch reference: torch {py?.GetProperty("torch")}; Valley: LibTorch {__version__}");
        Console.WriteLine();
        Console.WriteLine($"{"task",-34}{"PyTorch/PyHessian",-34}{"Valley",-38}{"speed-up",8}");
        void Row(string task, JsonElement? p, string valley, double vs)
        {
            string ps = p is { } e ? $"{e.GetProperty("seconds").GetDouble():F2} s, {e.GetProperty("products").GetInt32()} Hv" : "n/a";
            string ratio = p is { } e2 ? $"{e2.GetProperty("seconds").GetDouble() / vs:F1}×" : "";
            Console.WriteLine($"{task,-34}{ps,-34}{valley,-38}{ratio,8}");
        }
        JsonElement? P(string name) => py?.GetProperty(name);
        string Res(JsonElement? p) => p is { } e ? string.Join(" ", e.GetProperty("relative_residuals").EnumerateArray().Select(x => $"{x.GetDouble():0.0e+0}")) : "";
        Row("top-1 eigenvalue", P("power_top1"), $"{top1.Item2:F2} s, {top1.Item1.Products} Hv", top1.Item2);
        Row("top-1, both to residual 1e-3", P("power_top1_residual"), $"{top1.Item2:F2} s, {top1.Item1.Products} Hv", top1.Item2);
        Row("top-5 eigenvalues", P("power_top5"), $"{top5.Item2:F2} s, {top5.Item1.Products} Hv", top5.Item2);
        Row("top-5, both to residual 1e-3", P("power_top5_residual"), $"{top5.Item2:F2} s, {top5.Item1.Products} Hv", top5.Item2);
        Row("density 1 run × 100 steps", P("slq_1x100"), $"{slq1.Item2:F2} s, {slq1.Item1.Products} Hv", slq1.Item2);
        Console.WriteLine();
        Console.WriteLine($"top-1: PyTorch λ = {Vals(P("power_top1"))}, relative residual {Res(P("power_top1"))}; Valley λ = {top1.Item1.Values[0]:G6}, relative residual {top1.Item1.RelativeResiduals[0]:0.0e+0}");
        Console.WriteLine($"top-1 to residual 1e-3: PyTorch λ = {Vals(P("power_top1_residual"))}, relative residual {Res(P("power_top1_residual"))}");
        Console.WriteLine($"top-5: PyTorch λ = {Vals(P("power_top5"))}, relative residuals {Res(P("power_top5"))}");
        Console.WriteLine($"top-5 to residual 1e-3: PyTorch λ = {Vals(P("power_top5_residual"))}, relative residuals {Res(P("power_top5_residual"))}");
        Console.WriteLine($"       Valley  λ = {string.Join(" ", top5.Item1.Values.Select(v => v.ToString("G6")))}, relative residuals {string.Join(" ", top5.Item1.RelativeResiduals.Select(v => v.ToString("0.0e+0")))}");
        Console.WriteLine();
        Console.WriteLine($"density 10 runs × 80 steps, batch 512 (4 batches): block products {blockMulti.Item2:F2} s vs one vector at a time {seqMulti.Item2:F2} s: {seqMulti.Item2 / blockMulti.Item2:F2}×");
        Console.WriteLine($"density 10 runs × 80 steps, one batch (cached graph): block products {blockOne.Item2:F2} s vs one vector at a time {seqOne.Item2:F2} s: {seqOne.Item2 / blockOne.Item2:F2}×");
        Console.WriteLine();
        Console.WriteLine($"trace to 1% standard error: Hutchinson {hutch.Item1.Trace:G5} ± {hutch.Item1.StandardError:G2} in {hutch.Item1.Products} Hv, {hutch.Item2:F2} s; " +
                          $"Hutch++ {hpp.Item1.Trace:G5} ± {hpp.Item1.StandardError:G2} in {hpp.Item1.Products} Hv, {hpp.Item2:F2} s");
        if (P("hutchinson") is { } ph)
            Console.WriteLine($"PyHessian Hutchinson (stops on the running mean): {ph.GetProperty("trace").GetDouble():G5} ± {ph.GetProperty("standard_error")} in {ph.GetProperty("products")} Hv");
    }

    static string Vals(JsonElement? p) => p is { } e ? string.Join(" ", e.GetProperty("values").EnumerateArray().Select(x => x.GetDouble().ToString("G6"))) : "";

    internal static void Export(nn.Module model, Dataset data, string dir)
    {
        model.save_py(Path.Combine(dir, "model.pt"));
        File.WriteAllBytes(Path.Combine(dir, "x.f32"), data.X.reshape(data.Count, -1).contiguous().bytes.ToArray());
        File.WriteAllBytes(Path.Combine(dir, "y.i64"), data.Y.contiguous().bytes.ToArray());
        File.WriteAllText(Path.Combine(dir, "meta.json"), JsonSerializer.Serialize(new { examples = data.Count, features = data.Features }));
    }

    /// <param name="oneRound">The script's "round" mode: each task once after an untimed product (the speed benchmark's rounds),
    /// seeded with <paramref name="seed"/>.</param>
    /// <param name="quiet">Print nothing about the BLAS (every round after the first).</param>
    internal static JsonElement? RunPython(string dir, int threads, int batches = 1, bool oneRound = false, bool quiet = false, int seed = 0)
    {
        var script = Path.Combine(AppContext.BaseDirectory, "pyhessian_reference.py");
        if (!File.Exists("/usr/bin/python3") || !File.Exists(script)) { Console.WriteLine("(no /usr/bin/python3 or reference script: PyTorch column skipped)"); return null; }
        var psi = new ProcessStartInfo("/usr/bin/python3", oneRound ? [script, dir, threads.ToString(), batches.ToString(), "round", seed.ToString()] : [script, dir, threads.ToString(), batches.ToString()]) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString();  // OpenBLAS does not follow torch.set_num_threads
        using var p = Process.Start(psi)!;
        // stderr read alongside stdout, so that a full stderr pipe cannot stall the script.
        var stderrTask = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(30)))
        {
            p.Kill(entireProcessTree: true);
            Console.WriteLine("(PyTorch reference timed out after 30 minutes)");
            return null;
        }
        var stderr = stderrTask.Result;
        if (p.ExitCode != 0) { Console.WriteLine($"(PyTorch reference failed: {stderr.Trim().Split('\n').Last()})"); return null; }
        JsonElement result;
        try { result = JsonDocument.Parse(stdout).RootElement; }
        catch (JsonException e) { Console.WriteLine($"(PyTorch reference printed no valid JSON: {e.Message})"); return null; }
        // The reference BLAS (netlib) makes PyTorch ~40× slower on these matrix products: a column measured with it would
        // inflate every ratio, so it is refused rather than printed (install libopenblas0-pthread).
        var blas = result.TryGetProperty("blas", out var b) ? b.EnumerateArray().Select(x => x.GetString() ?? "").ToList() : [];
        if (!quiet) Console.WriteLine($"PyTorch reference BLAS: {(blas.Count == 0 ? "(none found)" : string.Join(", ", blas))}");
        if (!blas.Any(l => l.Contains("openblas", StringComparison.OrdinalIgnoreCase) || l.Contains("mkl", StringComparison.OrdinalIgnoreCase)))
        {
            Console.WriteLine("(PyTorch reference refused: it does not run on OpenBLAS or MKL; install libopenblas0-pthread)");
            return null;
        }
        return result;
    }
}

/// <summary>Brief Adam training on a Fashion-MNIST subset, so that benchmarks measure a trained model, not an initialization.</summary>
public static class QuickTrain
{
    public static void Adam(nn.Module<Tensor, Tensor> model, long examples, int epochs, long seed, double lr = 1e-3, long batch = 128)
    {
        using var split = DataSources.Open(null);
        using var train = split.Train.Subset(examples, seed + 1);
        var opt = optim.Adam(model.parameters(), lr);
        var gen = new Generator((ulong)seed);
        model.train();
        for (int e = 0; e < epochs; e++)
        {
            var perm = randperm(train.Count, generator: gen);
            for (long s = 0; s < train.Count; s += batch)
            {
                using var scope = NewDisposeScope();
                var idx = perm.narrow(0, s, Math.Min(batch, train.Count - s));
                opt.zero_grad();
                var loss = nn.functional.cross_entropy(model.call(train.X.index_select(0, idx)), train.Y.index_select(0, idx));
                loss.backward();
                opt.step();
            }
        }
        model.eval();
    }
}
