using TorchSharp;
using TorchSharp.Modules;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Training;

/// <summary>
/// Stochastic weight averaging (Izmailov et al. 2018): a running mean of weight snapshots, w̄ ← w̄ + (w − w̄)/(n + 1);
/// after copying w̄ into the model, BatchNorm statistics are recomputed with one pass over the training data.
/// </summary>
public sealed class WeightAverage : IDisposable
{
    readonly Tensor[] _mean;
    /// <summary>Snapshots averaged so far.</summary>
    public int Count { get; private set; }

    /// <summary>An empty average over the parameters of <paramref name="model"/>.</summary>
    public WeightAverage(nn.Module model) =>
        _mean = model.parameters().Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();

    /// <summary>Adds the model's current parameters to the average.</summary>
    public void Update(nn.Module model)
    {
        using var _ = no_grad();
        var ps = model.parameters().ToArray();
        Count++;
        for (int i = 0; i < ps.Length; i++) _mean[i].add_(ps[i] - _mean[i], alpha: 1.0 / Count);
    }

    /// <summary>Copy the average into the model's parameters.</summary>
    public void CopyTo(nn.Module model)
    {
        if (Count == 0) throw new ValleyException("weight averaging: no snapshot was averaged (does the averaging start after the last epoch?)");
        using var _ = no_grad();
        var ps = model.parameters().ToArray();
        for (int i = 0; i < ps.Length; i++) ps[i].copy_(_mean[i]);
    }

    /// <summary>The average, one tensor per parameter in the model's order.</summary>
    public IReadOnlyList<Tensor> Mean => _mean;

    /// <summary>Writes the count and the average (for resuming).</summary>
    public void Save(string path)
    {
        using var fs = File.Create(path);
        using var w = new BinaryWriter(fs);
        w.Write(Count);
        foreach (var t in _mean) t.Save(w);
    }

    /// <summary>Reads what <see cref="Save"/> wrote.</summary>
    public void Load(string path)
    {
        using var fs = File.OpenRead(path);
        using var r = new BinaryReader(fs);
        Count = r.ReadInt32();
        foreach (var t in _mean) t.Load(r);
    }

    /// <summary>Frees the average.</summary>
    public void Dispose() { foreach (var t in _mean) t.Dispose(); }

    /// <summary>
    /// Recompute BatchNorm running statistics as the exact average over the data (momentum null = cumulative average),
    /// in training mode without gradients, as SWA requires. No-op for models without BatchNorm.
    /// </summary>
    public static void RecomputeBatchNorm(nn.Module<Tensor, Tensor> model, Dataset data, long batchSize)
    {
        if (model is Models.TorchScriptModel archive) { archive.RecomputeBatchNorm(data, batchSize); return; }
        var norms = model.modules().OfType<NormBase>().ToArray();
        if (norms.Length == 0) return;
        var momenta = norms.Select(n => n.momentum).ToArray();
        foreach (var n in norms) { n.reset_running_stats(); n.momentum = null; }
        using (new Models.ModeScope(model, train: true))
        using (no_grad())
            foreach (var (x, _, _) in data.Batches(batchSize))
            {
                using var scope = NewDisposeScope();
                var p0 = model.parameters().First();
                model.call(x.to(p0.dtype, p0.device));
            }
        for (int i = 0; i < norms.Length; i++) norms[i].momentum = momenta[i];
    }
}
