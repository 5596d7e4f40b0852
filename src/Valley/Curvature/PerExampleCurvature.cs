using TorchSharp.Modules;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// What the operators built from per-example quantities (the empirical Fisher's per-example gradients, the Monte-Carlo
/// Fisher's and K-FAC's labels sampled per example and their per-example output gradients) need of the model: that example
/// i's outputs depend on x_i alone. BatchNorm in train mode normalizes by the batch's mean and variance, so every output
/// depends on the whole batch: ∇ℓ_i is then no example's own gradient, and the Fisher's factorization over examples fails.
/// The Hessian and the GGN are still defined there (the GGN as J_Bᵀ H_B J_B of the batch's coupled outputs), and are not refused.
/// </summary>
internal static class PerExampleCurvature
{
    /// <summary>The model's BatchNorm layers (built-in modules, and a TorchScript archive's, found by their running statistics).</summary>
    public static IReadOnlyList<string> BatchNormLayers(nn.Module model)
    {
        var names = new List<string>();
        foreach (var (name, module) in model.named_modules().Prepend(("", model)))
        {
            if (module is BatchNorm1d or BatchNorm2d or BatchNorm3d) names.Add(name.Length == 0 ? "(model)" : name);
            else if (module is TorchScriptModel ts) names.AddRange(ts.BatchNorms().Select(b => b.Name));
        }
        return names.Distinct().ToList();
    }

    /// <summary>
    /// Refuses <paramref name="what"/> over an objective in train mode whose model has BatchNorm layers, before anything is
    /// computed: the option named is <see cref="ObjectiveOptions.TrainMode"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Train mode with BatchNorm.</exception>
    public static void RequireIndependentExamples(Objective objective, string what)
    {
        if (DependentExamples(objective, what, "use eval mode, or the Hessian or the GGN") is { } problem) throw problem;
    }

    /// <summary>The refusal <see cref="RequireIndependentExamples"/> would throw, or null when the examples are independent.</summary>
    public static ArgumentOutOfRangeException? DependentExamples(Objective objective, string what, string instead)
    {
        if (!objective.Options.TrainMode) return null;
        var layers = BatchNormLayers(objective.Model);
        if (layers.Count == 0) return null;
        return Check.OutOfRange(nameof(ObjectiveOptions.TrainMode), null,
            $"must be off for {what}: in train mode BatchNorm ({string.Join(", ", layers.Take(3))}{(layers.Count > 3 ? ", …" : "")}) normalizes by the batch's statistics, " +
            $"which couple the examples, so per-example gradients and labels are not defined ({instead})");
    }
}
