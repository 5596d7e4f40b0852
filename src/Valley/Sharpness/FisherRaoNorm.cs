using Valley.Curvature;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// Fisher-Rao norm (Liang et al. 2019, Definition 2 and Lemma 2.1) of a bias-free ReLU MLP with L+1 layers:
/// ‖θ‖²_fr = (L+1)² E[⟨∂ℓ/∂f, f(x)⟩²] over the objective's training data (true labels), with the standard error of the mean
/// over the examples. Other architectures, and objectives restricted to some parameters, are refused: the identity
/// ⟨θ, ∇_θ f⟩ = (L+1) f behind it needs positive homogeneity in all the parameters.
/// </summary>
public static class FisherRaoNorm
{
    /// <summary>‖θ‖²_fr at the objective's current weights, in the objective's mode (eval unless it asks for train mode).</summary>
    public static SharpnessResult Compute(Objective objective, CancellationToken ct = default)
    {
        if (!Applies(objective))
            throw new ValleyException("the Fisher-Rao norm is defined here for bias-free ReLU MLPs over all their parameters (e.g. mlp:784-128-64-10:nobias); this model or parameter selection is not one");
        var mlp = (Mlp)objective.Model;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int layers = mlp.Widths.Count - 1;
        var values = new List<double>();
        using (new ModeScope(mlp, objective.Options.TrainMode))
            foreach (var (x, y, _) in objective.Data.Batches(objective.Options.BatchSize))
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var (xx, yy) = objective.ToModel(x, y, objective.Data.Task);
                var f = mlp.call(xx).detach().requires_grad_(true);
                // Per-example ∂ℓ_i/∂f_i: gradient of the summed per-example losses (the mean loss times the batch size).
                var l = objective.Loss(f, yy) * x.shape[0];
                var df = autograd.grad([l], [f])[0];
                var inner = (df * f).sum(1);
                values.AddRange(inner.pow(2).to(ScalarType.Float64).cpu().data<double>().ToArray());
            }
        var (mean, se) = Statistics.MeanAndStandardError(objective.Group.AllGather(values.ToArray()));
        double k = layers * (double)layers;
        return new SharpnessResult
        {
            Measure = "fisher-rao-norm", Parameters = new() { ["layers"] = layers }, Value = k * mean, StandardError = k * se, Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>Whether the objective is a bias-free ReLU MLP over all its parameters.</summary>
    internal static bool Applies(Objective objective) =>
        objective.Model is Mlp { Bias: false, Activation: "relu" } mlp && objective.Parameters.Size == mlp.parameters().Sum(p => p.numel());
}
