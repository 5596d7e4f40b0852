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
            () => { using var s = NewDisposeScope(); sam.Step([(() => nn.functional.cross_entropy(b.call(data.X), data.Y), 128)]); });
        Console.WriteLine($"mlp:784-128-64-10, batch 128, {get_num_threads()} threads, median of {reps}: SGD step {t[0] * 1000:F3} ms, SAM step {t[1] * 1000:F3} ms, ratio {t[1] / t[0]:F2} (target <= 2.1)");
    }

    public static void SgdVsSam(string outDir, double stopAt, int maxEpochs)
    {
        using var split = DataSources.Open(null);
        foreach (var (name, opt) in new[] { ("sgd", "sgd"), ("sam", "sam") })
        {
            var model = ModelSpec.Parse("mlp:784-128-64-10").Build(split.Train, 0);
            var o = new TrainOptions { Optimizer = opt, LearningRate = 0.01, Momentum = 0.9, BatchSize = 128, Epochs = maxEpochs, StopAtLoss = stopAt, Seed = 0 };
            var dir = Path.Combine(outDir, name);
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
            var log = new Trainer(model, "mlp:784-128-64-10", split.Train, split.Test, o, dir).Run(false);
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
        var init = cat(model.parameters().Select(p => p.detach().reshape(-1).clone()).ToArray());
        QuickTrain.Adam(model, 10_000, epochs: 2, seed: 0);
        var results = Valley.Sharpness.SharpnessSuite.Run(model, Losses.CrossEntropy, data, init, new Valley.Sharpness.SharpnessSuiteOptions());
        Console.WriteLine($"mlp:784-128-64-10:tanh after 2 epochs of Adam; 2,048 Fashion-MNIST examples; {get_num_threads()} threads; default parameters");
        Console.WriteLine($"| measure | parameters | value | loss evaluations | gradient evaluations | seconds |");
        Console.WriteLine($"|---|---|---|---|---|---|");
        foreach (var r in results)
            Console.WriteLine($"| {r.Measure} | {string.Join(", ", r.Parameters.Select(kv => $"{kv.Key} {kv.Value:G3}"))} | {r.Value:G5}{(r.StandardError is { } se && double.IsFinite(se) ? $" ± {se:G2}" : "")} | {r.LossEvaluations} | {r.GradientEvaluations} | {r.Seconds:F2} |");
    }
}
