using System.Text.Json;
using Valley;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Distributed;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.MpiHarness;

/// <summary>What the harness computes; the tests compare a run under mpiexec with one in their own process.</summary>
public sealed record HarnessResult(int Ranks, long Examples, double Loss, double[] Gradient, double[] HessianVector, double LambdaMax, double Trace, double TraceError,
    double Communication);

/// <summary>
/// A small data-parallel computation through the library (no CLI): a seeded MLP on a seeded Gaussian mixture, sharded over
/// the ranks; loss, gradient, one Hessian-vector product, λmax (Lanczos) and a Hutchinson trace with a fixed number of probes.
/// Usage: Valley.MpiHarness OUT.json [fail-midway]. Rank 0 writes OUT.json.
/// </summary>
public static class Harness
{
    public static HarnessResult Compute(IProcessGroup group, bool failMidway = false)
    {
        TorchRuntime.EnsureLoaded();
        set_num_threads(1);
        using var all = Synthetic.GaussianMixture(600, 20, 4, seed: 3);
        using var shard = group.Size > 1 ? all.Shard(group) : null;
        var data = shard ?? all;
        var model = ModelSpec.Parse("mlp:20-16-4:tanh").Build(data, 5);
        using var objective = new Objective(model, Losses.For(data.Task), data, new ObjectiveOptions { BatchSize = 128, DType = ScalarType.Float64, Group = group });
        var (loss, grad) = objective.LossAndGradient();
        using var _g = grad;
        using var v = randn(objective.Size, dtype: ScalarType.Float64, generator: new Generator(11));
        using var hv = objective.HessianVectorProduct(v);
        if (failMidway && group.Rank == 1)
            throw new ValleyException("rank 1 fails on purpose after its first Hessian-vector product");
        var op = new HessianOperator(objective);
        var top = Lanczos.Compute(op, new LanczosOptions { K = 1, Tolerance = 1e-8, MaxProducts = 200, Seed = 1 });
        var trace = Hutchinson.Estimate(op, new HutchinsonOptions { RelativeStandardError = 1e-12, MaxProducts = 40, Seed = 2 });
        return new HarnessResult(group.Size, objective.Examples, loss, grad.data<double>().ToArray(), hv.data<double>().ToArray(), top.Values[0], trace.Trace, trace.StandardError,
            group.CommunicationSeconds);
    }

    public static int Main(string[] args)
    {
        var group = MpiProcessGroup.FromEnvironment();
        try
        {
            var result = Compute(group, args.Length > 1 && args[1] == "fail-midway");
            if (group.IsRoot()) File.WriteAllText(args[0], JsonSerializer.Serialize(result));
            return 0;
        }
        catch (ValleyException e)
        {
            // As the valley command does: a rank that fails alone says why and ends the job, instead of leaving the others waiting.
            Console.Error.WriteLine($"error: rank {group.Rank} of {group.Size}: {e.Message}");
            group.Abort(1);
            return 1;
        }
        finally { (group as IDisposable)?.Dispose(); }
    }
}
