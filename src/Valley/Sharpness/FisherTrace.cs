using TorchSharp;
using Valley.Curvature;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Trace of the empirical Fisher information, tr F̂ = (1/n) Σ_i ‖∇ℓ_i‖² over the objective's parameters and training data, from
/// per-example gradients (Jiang et al. 2020 list it among the Fisher-based measures; Kunstner et al. 2019 on its relation to the
/// Fisher). For an <see cref="Mlp"/> over all its parameters it is batched: one forward and one backward pass per batch give
/// every example's gradient norm exactly, since for a linear layer ‖∂ℓ_i/∂W‖² = ‖δ_i‖²‖a_i‖² and ‖∂ℓ_i/∂b‖² = ‖δ_i‖²
/// (Goodfellow 2015). Other models: one backward pass per example. The value comes with the standard error of the mean over
/// the examples.
/// </summary>
public static class FisherTrace
{
    /// <summary>tr F̂ at the objective's current weights, in the objective's mode (eval unless it asks for train mode).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The objective is in train mode and its model has BatchNorm layers (per-example gradients are not defined).</exception>
    public static SharpnessResult Compute(Objective objective, CancellationToken ct = default)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        PerExampleCurvature.RequireIndependentExamples(objective, "fisher-trace");
        using var mode = new ModeScope(objective.Model, objective.Options.TrainMode);
        bool batched = objective.Model is Mlp mlp && objective.Parameters.Size == mlp.parameters().Sum(p => p.numel());
        var squaredNorms = batched ? BatchedMlp(objective, (Mlp)objective.Model, ct) : PerExample(objective, ct);
        var (mean, se) = Statistics.MeanAndStandardError(objective.Group.AllGather(squaredNorms.ToArray()));
        return new SharpnessResult
        {
            Measure = "fisher-trace", Parameters = new() { ["examples"] = objective.Examples }, Value = mean, StandardError = se,
            GradientEvaluations = objective.Examples, Seconds = sw.Elapsed.TotalSeconds, Details = batched ? new() { ["batched"] = 1 } : [],
        };
    }

    /// <summary>‖∇ℓ_i‖² of this rank's examples, one backward pass each.</summary>
    static List<double> PerExample(Objective objective, CancellationToken ct)
    {
        var ps = objective.Parameters.Tensors.Cast<Tensor>().ToList();
        var squaredNorms = new List<double>();
        for (long i = 0; i < objective.Data.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var (x, y) = objective.ToModel(objective.Data.X.narrow(0, i, 1), objective.Data.Y.narrow(0, i, 1), objective.Data.Task);
            var l = objective.Loss(objective.Model.call(x), y);
            var g = autograd.grad([l], ps, allow_unused: true);
            squaredNorms.Add(g.Where(t => t.Handle != IntPtr.Zero).Sum(t => t.pow(2).sum().ToDouble()));
        }
        return squaredNorms;
    }

    /// <summary>‖∇ℓ_i‖² of this rank's examples from each linear layer's inputs a_i and output gradients δ_i, one pass per batch.</summary>
    static List<double> BatchedMlp(Objective objective, Mlp mlp, CancellationToken ct)
    {
        var squaredNorms = new List<double>();
        foreach (var (x, y, size) in objective.Data.Batches(objective.Options.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var (xx, yy) = objective.ToModel(x, y, objective.Data.Task);
            var (f, taps) = mlp.ForwardWithLinearActivations(xx);
            // Σ_i ℓ_i: its gradient with respect to z_k holds every example's δ_ik in row i.
            var total = objective.Loss(f, yy) * size;
            var deltas = autograd.grad([total], taps.Select(t => t.Output).ToList());
            var perExample = zeros(size, dtype: ScalarType.Float64, device: xx.device);
            for (int k = 0; k < taps.Count; k++)
            {
                var d2 = deltas[k].to(ScalarType.Float64).pow(2).sum(1);
                var a2 = taps[k].Input.detach().to(ScalarType.Float64).pow(2).sum(1);
                perExample += d2 * (mlp.Bias ? a2 + 1 : a2);
            }
            squaredNorms.AddRange(perExample.cpu().data<double>().ToArray());
        }
        return squaredNorms;
    }
}
