using TorchSharp;
using Valley.Curvature;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

/// <summary>
/// Hessian-vector products through a TorchScript archive of mlp:784-128-64-10:tanh (made by
/// scripts/fixtures/make_model_fixtures.py) against the built-in spec holding the archive's weights, side by side.
/// </summary>
public static class ArchiveBench
{
    public static void Run(int examples, int reps, int threads)
    {
        using var data = Runner.FashionSubset(examples);
        var path = Path.Combine(AppContext.BaseDirectory, "Assets", "mlp_784_128_64_10_tanh.pt");
        using var archive = TorchScriptModel.Load(path);
        archive.CheckInput(data.ExampleShape, data.NumClasses);
        using var spec = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 1);
        using (no_grad())
            foreach (var ((name, a), (_, b)) in archive.named_parameters().Zip(spec.named_parameters()))
            {
                if (!a.shape.SequenceEqual(b.shape)) throw new InvalidOperationException($"{name}: shapes differ");
                b.copy_(a);
            }
        using var objA = new Objective(archive, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = examples, CacheGraph = false });
        using var objS = new Objective(spec, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = examples, CacheGraph = false });
        var v = randn(objA.Size, generator: new Generator(1));
        using (NewDisposeScope())
        {
            double diff = (objA.HessianVectorProduct(v) - objS.HessianVectorProduct(v)).norm().ToDouble() / objS.HessianVectorProduct(v).norm().ToDouble();
            Console.WriteLine($"relative difference of the two products: {diff:E2}");
        }
        var t = Runner.Interleaved(reps,
            () => { using var s = NewDisposeScope(); objS.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); objA.HessianVectorProduct(v); },
            () => { using var s = NewDisposeScope(); objS.LossAndGradient(); },
            () => { using var s = NewDisposeScope(); objA.LossAndGradient(); });
        Console.WriteLine($"mlp:784-128-64-10:tanh ({objA.Size} parameters), {examples} Fashion-MNIST examples in one batch, {threads} threads, median of {reps} alternating rounds");
        Console.WriteLine($"Hessian-vector product, built-in spec:      {t[0] * 1000,8:F2} ms");
        Console.WriteLine($"Hessian-vector product, TorchScript archive: {t[1] * 1000,8:F2} ms");
        Console.WriteLine($"ratio archive / spec:                        {t[1] / t[0],8:F3}   (goal <= 1.15)");
        Console.WriteLine($"gradient, built-in spec / archive:           {t[2] * 1000,8:F2} / {t[3] * 1000:F2} ms (ratio {t[3] / t[2]:F3})");
    }
}
