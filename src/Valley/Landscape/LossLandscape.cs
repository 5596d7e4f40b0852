using Valley.Curvature;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Landscape;

/// <summary>
/// Options of a random slice of the loss (Li et al. 2018): the published defaults are 51 points per axis on [−1, 1],
/// filter-normalized Gaussian directions, biases and BatchNorm parameters not perturbed.
/// </summary>
public sealed record SliceOptions
{
    /// <summary>Points per axis.</summary>
    public int Points { get; init; } = 51;
    /// <summary>The first coordinate of each axis.</summary>
    public double From { get; init; } = -1;
    /// <summary>The last coordinate of each axis.</summary>
    public double To { get; init; } = 1;
    /// <summary>How the random directions are scaled to the weights.</summary>
    public DirectionNormalization Normalization { get; init; } = DirectionNormalization.Filter;
    /// <summary>Perturb biases and BatchNorm parameters too (Li et al. leave them at zero).</summary>
    public bool IncludeBiasBn { get; init; }
    /// <summary>Seed of the first direction (the second uses Seed + 1).</summary>
    public long Seed { get; init; }
    /// <summary>A test set to evaluate at every point as well; null: training data only.</summary>
    public Dataset? Test { get; init; }
    /// <summary>Examples per forward pass (the values do not depend on it).</summary>
    public long BatchSize { get; init; } = 10_000;
    /// <summary>Recompute BatchNorm running statistics at every point.</summary>
    public bool RecomputeBatchNorm { get; init; }
}

/// <summary>
/// Random slices of a model's loss in one call: directions over the model's trainable parameters (frozen ones stay where
/// they are), evaluated in eval mode without gradients; the weights are bit-identical afterwards.
/// </summary>
public static class LossLandscape
{
    /// <summary>The loss along w + α d, d a random normalized direction, at <see cref="SliceOptions.Points"/> values of α.</summary>
    public static GridResult Slice1D(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, SliceOptions? options = null,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default) =>
        Slice(model, loss, data, options ?? new SliceOptions(), twoD: false, progress, ct);

    /// <summary>The loss over w + α d₁ + β d₂, two random normalized directions, on a square grid.</summary>
    public static GridResult Slice2D(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, SliceOptions? options = null,
        IProgress<(int Done, int Total)>? progress = null, CancellationToken ct = default) =>
        Slice(model, loss, data, options ?? new SliceOptions(), twoD: true, progress, ct);

    static GridResult Slice(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, SliceOptions o, bool twoD,
        IProgress<(int Done, int Total)>? progress, CancellationToken ct)
    {
        Check.AtLeast(o.Points, 1, nameof(o.Points));
        GridSpec.EnsureFits(o.Points, twoD ? o.Points : 1, nameof(o.Points));
        var ps = ParameterSet.From(model);
        using var scope = NewDisposeScope();
        var d1 = Directions.Random(ps, o.Normalization, o.IncludeBiasBn, o.Seed);
        var d2 = twoD ? Directions.Random(ps, o.Normalization, o.IncludeBiasBn, o.Seed + 1) : null;
        var axis = GridSpec.Range(o.From, o.To, o.Points);
        var evaluator = new LandscapeEvaluator(model, loss, data, o.Test,
            new LandscapeOptions { BatchSize = o.BatchSize, RecomputeBatchNorm = o.RecomputeBatchNorm, Parameters = ps });
        return evaluator.Run(d1, d2, new GridSpec(axis, twoD ? axis : null), progress: progress, ct: ct);
    }
}
