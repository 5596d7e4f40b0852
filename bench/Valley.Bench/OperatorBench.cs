using System.Diagnostics;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Issue 18's performance figures: one GGN product against one Hessian-vector product (with and without the cached
/// single-batch graph), and K-FAC's top-5 eigenvalues (factors included) against the Hessian's top-5 by Lanczos, on
/// mlp:784-128-64-10:tanh with 2,048 Fashion-MNIST examples.
/// </summary>
public static class OperatorBench
{
    public static void Run(int examples, int reps, int threads)
    {
        using var data = Runner.FashionSubset(examples);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = examples, CacheGraph = false });
        using var cached = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = examples });
        var ggn = new GgnOperator(obj);
        var ef = new EmpiricalFisherOperator(obj);
        var v = randn(obj.Size, generator: new Generator(1));
        var t = Runner.Interleaved(reps,
            () => { using var s = NewDisposeScope(); obj.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); cached.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); ggn.Apply(v); },
            () => { using var s = NewDisposeScope(); ef.Apply(v); });
        Console.WriteLine($"model mlp:784-128-64-10:tanh ({obj.Size} parameters), {examples} Fashion-MNIST examples in one batch, {threads} threads, median of {reps}");
        Console.WriteLine($"Hessian-vector product:                       {t[0] * 1000,8:F2} ms");
        Console.WriteLine($"Hessian-vector product, cached graph:         {t[1] * 1000,8:F2} ms");
        Console.WriteLine($"GGN product:                                  {t[2] * 1000,8:F2} ms  (GGN / Hv {t[2] / t[0]:F2}, / cached Hv {t[2] / t[1]:F2}; target <= 1)");
        Console.WriteLine($"empirical-Fisher product:                     {t[3] * 1000,8:F2} ms");

        var sw = Stopwatch.StartNew();
        double[] kfacTop;
        using (var kfac = new KfacOperator(cached)) kfacTop = kfac.TopEigenvalues(5).Values;
        double kfacSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();
        using (var kfacMc = new KfacOperator(cached, new KfacOptions { Expectation = KfacExpectation.MonteCarlo, Samples = 1 })) kfacMc.TopEigenvalues(5);
        double kfacMcSeconds = sw.Elapsed.TotalSeconds;
        sw.Restart();
        var lanczos = Lanczos.Compute(new HessianOperator(cached), new LanczosOptions { K = 5, Seed = 1 });
        double lanczosSeconds = sw.Elapsed.TotalSeconds;
        Console.WriteLine($"K-FAC top-5 (factors + eigenvalues):          {kfacSeconds,8:F3} s  [{string.Join(" ", kfacTop.Select(x => x.ToString("G4")))}]");
        Console.WriteLine($"Hessian top-5 by Lanczos ({lanczos.Products} products):   {lanczosSeconds,8:F3} s  [{string.Join(" ", lanczos.Values.Select(x => x.ToString("G4")))}]");
        Console.WriteLine($"K-FAC top-5, one sampled label per example:   {kfacMcSeconds,8:F3} s");
        Console.WriteLine($"ratio K-FAC / Lanczos:                        {kfacSeconds / lanczosSeconds,8:P1} exact expectation, {kfacMcSeconds / lanczosSeconds:P1} sampled  (target < 5 %)");
    }
}
