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
    public static void Run(int examples, int reps, int threads, int batch = 0)
    {
        if (batch <= 0) batch = examples;
        using var data = Runner.FashionSubset(examples);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch, CacheGraph = false });
        using var cached = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch });
        // Its own objective: the gradient and output graph caches of one objective take turns (filling one empties the other).
        using var cachedOutputs = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch });
        var ggn = new GgnOperator(obj);
        var ggnCached = new GgnOperator(cachedOutputs);
        var ef = new EmpiricalFisherOperator(obj);
        // The same through autograd (double backward for the Hessian, the double-vjp trick for the GGN), cached.
        var autograd = new ObjectiveOptions { BatchSize = batch, HessianProducts = HessianProductMethod.DoubleBackward };
        using var agHessian = new Objective(model, Losses.CrossEntropy, data, autograd);
        using var agOutputs = new Objective(model, Losses.CrossEntropy, data, autograd);
        var agGgn = new GgnOperator(agOutputs);
        var v = randn(obj.Size, generator: new Generator(1));
        var rounds = Runner.InterleavedRounds(reps,
            () => { using var s = NewDisposeScope(); obj.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); cached.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); ggn.Apply(v); },
            () => { using var s = NewDisposeScope(); ef.Apply(v); },
            () => { using var s = NewDisposeScope(); ggnCached.Apply(v); },
            () => { using var s = NewDisposeScope(); agHessian.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); agGgn.Apply(v); });
        var t = rounds.Select(Runner.Median).ToArray();
        Console.WriteLine($"model mlp:784-128-64-10:tanh ({obj.Size} parameters), {examples} Fashion-MNIST examples in batches of {batch}, {threads} threads, median of {reps}");
        Console.WriteLine($"Hessian and GGN products by default: {cached.ProductMethodDescription}");
        Console.WriteLine($"Hessian-vector product:                       {t[0] * 1000,8:F2} ms");
        Console.WriteLine($"Hessian-vector product, cached:               {t[1] * 1000,8:F2} ms");
        Console.WriteLine($"GGN product:                                  {t[2] * 1000,8:F2} ms  (GGN / Hv {t[2] / t[0]:F2}, / cached Hv {t[2] / t[1]:F2}; median of the rounds' ratios {Runner.MedianRatio(rounds[2], rounds[0]):F2}, {Runner.MedianRatio(rounds[2], rounds[1]):F2}; target <= 1)");
        Console.WriteLine($"GGN product, cached:                          {t[4] * 1000,8:F2} ms  (/ cached Hv {t[4] / t[1]:F2}; median of the rounds' ratios {Runner.MedianRatio(rounds[4], rounds[1]):F2}; target <= 1)");
        Console.WriteLine($"empirical-Fisher product:                     {t[3] * 1000,8:F2} ms");
        Console.WriteLine($"through autograd, cached: Hv {t[5] * 1000:F2} ms, GGN {t[6] * 1000:F2} ms (GGN / Hv: median of the rounds' ratios {Runner.MedianRatio(rounds[6], rounds[5]):F2}); " +
                          $"default ÷ autograd: Hv {Runner.MedianRatio(rounds[1], rounds[5]):F2}, GGN {Runner.MedianRatio(rounds[4], rounds[6]):F2}");

        // Medians of interleaved repetitions, each from scratch on a fresh objective: K-FAC's factors and eigenvalues, and
        // Lanczos (its graph cache built inside the timing, as a user's run does).
        double[] kfacTop = [], kfacExactTop = [];
        Eigenpairs lanczos = null!;
        var tk = Runner.InterleavedRounds(Math.Max(3, reps / 2),
            () => { using var fresh = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch }); using var k = new KfacOperator(fresh); kfacTop = k.TopEigenvalues(5).Values; },
            () => { using var fresh = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch }); using var k = new KfacOperator(fresh, new KfacOptions { Expectation = KfacExpectation.Exact }); kfacExactTop = k.TopEigenvalues(5).Values; },
            () =>
            {
                using var fresh = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = batch });
                lanczos = Lanczos.Compute(new HessianOperator(fresh), new LanczosOptions { K = 5, Seed = 1 });
            });
        double kfacSeconds = Runner.Median(tk[0]), kfacExactSeconds = Runner.Median(tk[1]), lanczosSeconds = Runner.Median(tk[2]);
        Console.WriteLine($"K-FAC top-5 (default: one sampled label per example; factors + eigenvalues): {kfacSeconds,8:F3} s  [{string.Join(" ", kfacTop.Select(x => x.ToString("G4")))}]");
        Console.WriteLine($"K-FAC top-5, exact expectation:               {kfacExactSeconds,8:F3} s  [{string.Join(" ", kfacExactTop.Select(x => x.ToString("G4")))}]");
        Console.WriteLine($"Hessian top-5 by Lanczos ({lanczos.Products} products):   {lanczosSeconds,8:F3} s  [{string.Join(" ", lanczos.Values.Select(x => x.ToString("G4")))}]");
        Console.WriteLine($"ratio K-FAC / Lanczos:                        {kfacSeconds / lanczosSeconds,8:P1} default (sampled), {kfacExactSeconds / lanczosSeconds:P1} exact expectation; " +
                          $"median of the rounds' ratios {Runner.MedianRatio(tk[0], tk[2]):P1}, {Runner.MedianRatio(tk[1], tk[2]):P1}  (target < 5 %)");
    }
}

/// <summary>Where K-FAC's time goes: the factors (one pass over the data) and the eigenvalues, against one forward pass.</summary>
public static class KfacProfile
{
    public static void Run(int reps)
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 2048 });
        KfacOperator? op = null;
        var t = Runner.Interleaved(reps,
            () => { using var s = NewDisposeScope(); using var _ = no_grad(); model.call(data.X.reshape(2048, -1)); },
            () => { op?.Dispose(); op = new KfacOperator(obj, new KfacOptions { Expectation = KfacExpectation.Exact }); },
            () => { op!.TopEigenvalues(5); },
            () => { using var k = new KfacOperator(obj); }, // the default: one sampled label per example
            () => { using var s = NewDisposeScope(); obj.LossAndGradient(); });
        var A0 = op!.InputFactor(0);
        var A1 = A0.clone();
        var t2 = Runner.Interleaved(3,
            () => { using var s = NewDisposeScope(); linalg.eigvalsh(A0); },
            () => { using var s = NewDisposeScope(); linalg.eigvalsh(A1 + eye(A1.shape[0], dtype: A1.dtype) * 1e-3); },
            () => { op.Eigenvalues(); });
        Console.WriteLine($"eigvalsh of A (layer 0, {A0.shape[0]}) {t2[0] * 1000:F1} ms, of A + 1e-3 I {t2[1] * 1000:F1} ms; Eigenvalues() {t2[2] * 1000:F1} ms; A's smallest eigenvalues {string.Join(" ", linalg.eigvalsh(A0).narrow(0, 0, 3).data<double>().ToArray().Select(x => x.ToString("G3")))}");
        var fast = op.TopEigenvalues(5).Values;
        var dense = op.Eigenvalues().Take(5).ToArray();
        Console.WriteLine($"top-5 from the factors' Krylov spaces vs dense eigensolver: max relative difference {fast.Zip(dense, (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max():0.0e+0}");
        Console.WriteLine($"forward {t[0] * 1000:F1} ms; gradient {t[4] * 1000:F1} ms; K-FAC factors (exact) {t[1] * 1000:F1} ms, (1 sample) {t[3] * 1000:F1} ms; top-5 from the factors {t[2] * 1000:F1} ms");
        op?.Dispose();
    }
}

public static class EighProfile
{
    public static void Run()
    {
        var x = randn(2048, 785, dtype: ScalarType.Float64);
        var A = x.t().matmul(x);
        var A32 = A.to(ScalarType.Float32);
        var t = Runner.Interleaved(5,
            () => { using var s = NewDisposeScope(); linalg.eigvalsh(A); },
            () => { using var s = NewDisposeScope(); linalg.eigvalsh(A32); },
            () => { using var s = NewDisposeScope(); linalg.eigh(A); },
            () => { using var s = NewDisposeScope(); x.t().matmul(x); },
            () => { using var s = NewDisposeScope(); var y = x.to(ScalarType.Float32); y.t().matmul(y); });
        Console.WriteLine($"eigvalsh 785 float64 {t[0] * 1000:F1} ms, float32 {t[1] * 1000:F1} ms, eigh float64 {t[2] * 1000:F1} ms; XᵀX float64 {t[3] * 1000:F1} ms, float32 {t[4] * 1000:F1} ms");
    }
}
