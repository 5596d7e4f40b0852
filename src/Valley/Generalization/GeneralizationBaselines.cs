using TorchSharp;
using TorchSharp.Modules;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Generalization;

/// <summary>
/// Baselines any claim about sharpness must beat (Jiang et al. 2020, <i>Fantastic generalization measures and where to find
/// them</i>, Appendix C): norms of the weights, distance from initialization, products of layer norms, the path norm, the
/// output margin and the number of optimization steps. All are oriented so that larger = more complex (see
/// <see cref="BaselineResult.Values"/>).
/// </summary>
public static class GeneralizationBaselines
{
    /// <summary>
    /// Computes every baseline for <paramref name="model"/>; the margin uses <paramref name="data"/> (typically the training
    /// set). The layers of the norm products are the parameters with two or more dimensions (Linear weights as out×in, Conv
    /// weights reshaped to out×(in·k_h·k_w), as Jiang et al. do; biases and normalization scales, which are vectors, do not
    /// count). The model is evaluated in eval mode and left in the mode it had.
    /// </summary>
    public static BaselineResult Compute(nn.Module<Tensor, Tensor> model, Dataset data, BaselineOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new BaselineOptions();
        Check.AtLeast(o.BatchSize, 1, nameof(o.BatchSize));
        if (!(o.MarginPercentile >= 0 && o.MarginPercentile <= 100)) throw Check.OutOfRange(nameof(o.MarginPercentile), o.MarginPercentile, "must be in [0, 100]");
        var notes = new Dictionary<string, string>();
        var named = model.named_parameters().ToList();
        if (named.Count == 0) throw new ValleyException("baselines: the model has no parameters");

        double sq = 0;
        var layers = new List<string>();
        double logSpec = 0, logFro = 0;
        using (no_grad())
        {
            foreach (var (name, p) in named)
            {
                using var scope = NewDisposeScope();
                var w = p.detach().to(ScalarType.Float64, CPU);
                sq += w.square().sum().item<double>();
                if (p.dim() < 2) continue;
                var m = w.reshape(p.shape[0], -1);
                layers.Add($"{name} {m.shape[0]}×{m.shape[1]}");
                logSpec += Math.Log(linalg.svdvals(m).max().item<double>());
                logFro += Math.Log(m.square().sum().sqrt().item<double>());
            }
        }
        double? spec = null, fro = null;
        if (layers.Count == 0)
        {
            notes[BaselineResult.SpectralName] = notes[BaselineResult.FrobeniusName] = "no parameter with two or more dimensions (no Linear or Conv weight)";
        }
        else
        {
            spec = Math.Exp(logSpec);
            fro = Math.Exp(logFro);
            if (!double.IsFinite(spec.Value) || spec == 0) { notes[BaselineResult.SpectralName] = $"the product overflows or vanishes in float64 (log = {logSpec:G6})"; spec = null; }
            if (!double.IsFinite(fro.Value) || fro == 0) { notes[BaselineResult.FrobeniusName] = $"the product overflows or vanishes in float64 (log = {logFro:G6})"; fro = null; }
        }

        double? distance = null;
        if (o.Initialization is null) notes[BaselineResult.DistanceName] = "initial weights unknown";
        else distance = Distance(named, o.Initialization, notes);

        double? path = PathNorm(model, out var why);
        if (path is null) notes[BaselineResult.PathNormName] = why!;

        double? margin = null;
        if (data.Task != TaskKind.Classification) notes[BaselineResult.NegativeMarginName] = "the margin needs class labels (the data are a regression task)";
        else if (data.Count == 0) notes[BaselineResult.NegativeMarginName] = "no examples";
        else margin = Percentile(Margins(model, data, o.BatchSize, ct), o.MarginPercentile);

        if (o.Steps is null) notes[BaselineResult.StepsName] = "the number of optimization steps is unknown (not trained by Valley, and not given)";
        return new BaselineResult
        {
            ParameterNorm = Math.Sqrt(sq), DistanceFromInitialization = distance, SpectralNormProduct = spec, FrobeniusNormProduct = fro,
            PathNorm = path, Margin = margin, MarginPercentile = o.MarginPercentile, Steps = o.Steps, Layers = layers, Notes = notes,
        };
    }

    static double? Distance(List<(string Name, Parameter P)> named, nn.Module init, Dictionary<string, string> notes)
    {
        var initial = init.named_parameters().ToDictionary(t => t.name, t => t.parameter);
        double sq = 0;
        using var _ = no_grad();
        foreach (var (name, p) in named)
        {
            if (!initial.TryGetValue(name, out var q)) { notes[BaselineResult.DistanceName] = $"the initial weights lack parameter '{name}'"; return null; }
            if (!q.shape.SequenceEqual(p.shape))
            {
                notes[BaselineResult.DistanceName] = $"parameter '{name}' has shape [{string.Join(", ", p.shape)}], its initial value [{string.Join(", ", q.shape)}]";
                return null;
            }
            using var scope = NewDisposeScope();
            sq += (p.detach().to(ScalarType.Float64, CPU) - q.detach().to(ScalarType.Float64, CPU)).square().sum().item<double>();
        }
        if (initial.Count != named.Count) { notes[BaselineResult.DistanceName] = $"the initial weights have {initial.Count} parameters, the model {named.Count}"; return null; }
        return Math.Sqrt(sq);
    }

    /// <summary>
    /// The layers of a Linear+ReLU chain in order (an <see cref="Mlp"/> or a <see cref="Sequential"/>, nested Sequentials
    /// flattened; Flatten and Identity pass through), or null with the reason it is not one.
    /// </summary>
    static List<nn.Module>? Chain(nn.Module model, out string? why)
    {
        why = null;
        if (model is not (Mlp or Sequential))
        {
            why = $"defined for chains of Linear layers and ReLUs (an mlp or a Sequential); this model is a {model.GetType().Name}";
            return null;
        }
        var chain = new List<nn.Module>();
        void Walk(nn.Module m)
        {
            foreach (var (_, c) in m.named_children())
                if (c is Sequential) Walk(c); else chain.Add(c);
        }
        Walk(model);
        foreach (var (c, i) in chain.Select((c, i) => (c, i)))
            if (c is not (Linear or ReLU or Flatten or Identity))
            {
                why = $"defined for ReLU networks of Linear layers (Neyshabur et al. 2015); layer {i} is {c.GetType().Name}";
                return null;
            }
        if (!chain.Any(c => c is Linear)) { why = "the model has no Linear layer"; return null; }
        return chain;
    }

    /// <summary>sqrt(Σ_k f_{w²}(1)_k): one forward pass of the squared-weight network (biases squared too) on an all-ones input.</summary>
    static double? PathNorm(nn.Module model, out string? why)
    {
        var chain = Chain(model, out why);
        if (chain is null) return null;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var first = (Linear)chain.First(c => c is Linear);
        var h = ones(1, first.in_features, ScalarType.Float64);
        foreach (var c in chain)
        {
            if (c is not Linear l) continue; // ReLU is the identity on the non-negative values of the squared network
            var w = l.weight!.detach().to(ScalarType.Float64, CPU);
            if (w.shape[1] != h.shape[1]) { why = $"layer widths do not chain ({h.shape[1]} into {w.shape[1]})"; return null; }
            h = h.matmul(w.square().t());
            if (l.bias is { } b) h = h + b.detach().to(ScalarType.Float64, CPU).square();
        }
        return Math.Sqrt(h.sum().item<double>());
    }

    /// <summary>Per-example margins z_y − max_{j≠y} z_j of the model's outputs on the data.</summary>
    internal static double[] Margins(nn.Module<Tensor, Tensor> model, Dataset data, long batchSize, CancellationToken ct = default)
    {
        var margins = new List<double>((int)Math.Min(data.Count, int.MaxValue));
        var p = model.parameters().First();
        using var mode = new ModeScope(model, train: false);
        using var _ = no_grad();
        foreach (var (x, y, _) in data.Batches(batchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var z = model.call(x.to(p.dtype, p.device)).to(ScalarType.Float64, CPU);
            if (z.dim() != 2 || z.shape[1] < 2)
                throw new ValleyException($"baselines: the margin needs [N, classes ≥ 2] outputs, the model gives [{string.Join(", ", z.shape)}]");
            var label = y.to(ScalarType.Int64, CPU).unsqueeze(1);
            var correct = z.gather(1, label).squeeze(1);
            var other = z.scatter(1, label, full_like(label, double.NegativeInfinity, ScalarType.Float64)).max(1).values;
            margins.AddRange((correct - other).data<double>().ToArray());
        }
        return margins.ToArray();
    }

    /// <summary>The q-th percentile (0–100) with linear interpolation between order statistics (NumPy's default).</summary>
    internal static double Percentile(IReadOnlyList<double> values, double q)
    {
        var a = values.OrderBy(v => v).ToArray();
        double pos = (a.Length - 1) * q / 100;
        int lo = (int)Math.Floor(pos);
        int hi = Math.Min(lo + 1, a.Length - 1);
        return a[lo] + (pos - lo) * (a[hi] - a[lo]);
    }
}
