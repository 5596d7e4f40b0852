using Valley.Curvature;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>Options of <see cref="RelativeFlatness"/>.</summary>
public sealed record RelativeFlatnessOptions
{
    /// <summary>The weight matrix by name (e.g. "4.weight"); null: the last weight matrix among the objective's parameters.</summary>
    public string? Layer { get; init; }
}

/// <summary>
/// Relative flatness (Petzka et al. 2021, Definition 3 with Eq. 5's trace form) of one layer with weight matrix W (rows w_s = neuron
/// s's incoming weights): κ = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_{s,s'}), H the Hessian of the training loss with respect to W, computed
/// exactly from Hessian-vector products with unit vectors, with the objective's options (dtype, train mode, ranks).
/// </summary>
public static class RelativeFlatness
{
    /// <summary>κ of the chosen layer at the objective's current weights.</summary>
    public static SharpnessResult Compute(Objective objective, RelativeFlatnessOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new RelativeFlatnessOptions();
        var matrices = objective.Parameters.Names.Where((_, i) => objective.Parameters.Tensors[i].dim() == 2).ToList();
        if (matrices.Count == 0) throw SharpnessMeasure.MissingParameters(objective, "relative flatness needs a weight matrix (rank-2 parameter)");
        var name = o.Layer ?? matrices[^1];
        if (!matrices.Contains(name))
            throw Check.OutOfRange(nameof(o.Layer), name, $"must name a weight matrix among the objective's parameters ({string.Join(", ", matrices)})");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var layer = new Objective(objective.Model, objective.Loss, objective.Data, objective.Options with { ParameterFilter = n => n == name });
        var H = ExactHessian.Compute(new HessianOperator(layer) { Cancellation = ct });
        using var W = layer.Parameters.Tensors[0].detach().to(ScalarType.Float64).cpu();
        int k = (int)W.shape[0], d = (int)W.shape[1];
        using var gramTensor = W.matmul(W.t());
        var gram = gramTensor.data<double>().ToArray();
        double kappa = 0;
        for (int s = 0; s < k; s++)
            for (int t = 0; t < k; t++)
            {
                double tr = 0;
                for (int j = 0; j < d; j++) tr += H.Values[s * d + j, t * d + j];
                kappa += gram[s * k + t] * tr;
            }
        return new SharpnessResult
        {
            Measure = "relative-flatness", Parameters = new() { ["neurons"] = k, ["inputs"] = d }, Value = kappa,
            Details = new() { ["layer_hessian_trace"] = H.Trace() }, GradientEvaluations = k * d, Seconds = sw.Elapsed.TotalSeconds,
        };
    }
}
