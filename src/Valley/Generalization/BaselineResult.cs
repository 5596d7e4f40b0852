namespace Valley.Generalization;

/// <summary>
/// The complexity baselines of one model (Jiang et al. 2020, §C of <i>Fantastic generalization measures</i>). A null value is
/// undefined for this model; <see cref="Notes"/> says why. Every norm is computed in float64.
/// </summary>
public sealed record BaselineResult
{
    /// <summary>‖w‖₂ over every parameter (weights and biases). Jiang et al.'s "param norm" is its square (same ranking).</summary>
    public double ParameterNorm { get; init; }
    /// <summary>‖w − w₀‖₂ over every parameter; null when the initial weights were not given or do not match.</summary>
    public double? DistanceFromInitialization { get; init; }
    /// <summary>Π‖W_l‖₂ over the layers (see <see cref="Layers"/>); Jiang et al.'s "prod of spec" is its square.</summary>
    public double? SpectralNormProduct { get; init; }
    /// <summary>Π‖W_l‖_F over the same layers; Jiang et al.'s "prod of fro" is its square.</summary>
    public double? FrobeniusNormProduct { get; init; }
    /// <summary>
    /// Path norm (Neyshabur et al. 2015): sqrt(Σ over input-output paths of Π w²), biases included as paths that start at a
    /// constant-one unit; equals sqrt(Σ_k f_{w²}(1)_k) (Jiang et al. 2020's "path-norm" is the value under the root). Null for a
    /// model that is not a chain of Linear layers and ReLUs.
    /// </summary>
    public double? PathNorm { get; init; }
    /// <summary>
    /// The <see cref="BaselineOptions.MarginPercentile"/>-th percentile over the data of the output margin (correct-class logit minus
    /// the largest other logit; linear interpolation between order statistics). Null for regression data.
    /// </summary>
    public double? Margin { get; init; }
    /// <summary>The percentile the <see cref="Margin"/> is taken at.</summary>
    public double MarginPercentile { get; init; } = 10;
    /// <summary>Optimization steps (given from outside); null when unknown.</summary>
    public long? Steps { get; init; }
    /// <summary>The weight matrices the products run over, by parameter name, with their matrix shapes (e.g. "0.weight 128×784").</summary>
    public List<string> Layers { get; init; } = [];
    /// <summary>Baseline name (as in <see cref="Values"/>) → why it is undefined for this model.</summary>
    public Dictionary<string, string> Notes { get; init; } = [];

    /// <summary>Name of <see cref="ParameterNorm"/> in <see cref="Values"/>.</summary>
    public const string ParameterNormName = "param_norm";
    /// <summary>Name of <see cref="DistanceFromInitialization"/> in <see cref="Values"/>.</summary>
    public const string DistanceName = "dist_from_init";
    /// <summary>Name of <see cref="SpectralNormProduct"/> in <see cref="Values"/>.</summary>
    public const string SpectralName = "prod_spectral";
    /// <summary>Name of <see cref="FrobeniusNormProduct"/> in <see cref="Values"/>.</summary>
    public const string FrobeniusName = "prod_frobenius";
    /// <summary>Name of <see cref="PathNorm"/> in <see cref="Values"/>.</summary>
    public const string PathNormName = "path_norm";
    /// <summary>Name of the negated margin in <see cref="Values"/> (at the default 10th percentile; neg_margin_pQ at another).</summary>
    public const string NegativeMarginName = "neg_margin_p10";
    /// <summary>Name of <see cref="Steps"/> in <see cref="Values"/>.</summary>
    public const string StepsName = "steps";

    /// <summary>
    /// The defined baselines, oriented as Jiang et al. orient complexity measures: larger = more complex = predicted larger
    /// generalization gap. The margin enters negated (<c>neg_margin_p10</c> = −margin: a smaller margin predicts a larger gap;
    /// the negation rather than Jiang et al.'s 1/γ² because the margin can be zero or negative). Undefined ones are left out.
    /// </summary>
    public Dictionary<string, double> Values()
    {
        var v = new Dictionary<string, double> { [ParameterNormName] = ParameterNorm };
        if (DistanceFromInitialization is { } d) v[DistanceName] = d;
        if (SpectralNormProduct is { } s) v[SpectralName] = s;
        if (FrobeniusNormProduct is { } f) v[FrobeniusName] = f;
        if (PathNorm is { } p) v[PathNormName] = p;
        if (Margin is { } m) v[$"neg_margin_p{MarginPercentile.ToString("0.##", System.Globalization.CultureInfo.InvariantCulture)}"] = -m;
        if (Steps is { } st) v[StepsName] = st;
        return v;
    }
}
