using static TorchSharp.torch;

namespace Valley.Generalization;

/// <summary>What <see cref="GeneralizationBaselines.Compute"/> needs beyond the model and the data.</summary>
public sealed record BaselineOptions
{
    /// <summary>
    /// The model's weights at initialization (same architecture), for the distance from initialization; null: unknown
    /// (the baseline is reported undefined). Only read.
    /// </summary>
    public nn.Module? Initialization { get; init; }
    /// <summary>Optimization steps taken to reach the model (known from a training log); null: unknown, reported undefined.</summary>
    public long? Steps { get; init; }
    /// <summary>Percentile of the per-example output margins (Jiang et al. 2020 use the 10th).</summary>
    public double MarginPercentile { get; init; } = 10;
    /// <summary>Examples per forward pass when computing the margins.</summary>
    public long BatchSize { get; init; } = 1024;
}
