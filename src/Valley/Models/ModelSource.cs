using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>Where a model comes from: a built-in architecture spec, optional weights, and the initialization seed.</summary>
public sealed record ModelSource(string Spec, string? WeightsPath = null, long Seed = 0)
{
    /// <summary>Build the architecture for this data and load the weights (checked against the architecture).</summary>
    public nn.Module<Tensor, Tensor> Build(Dataset data)
    {
        var spec = ModelSpec.Parse(Spec);
        var model = spec.Build(data, Seed);
        if (WeightsPath is not null) Weights.Load(model, WeightsPath);
        return model;
    }
}
