using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Valley.Training;

/// <summary>
/// Options of <see cref="SharpnessAwareMinimization"/>. Defaults: SAM (Foret et al. 2021) ρ = 0.05;
/// ASAM (Kwon et al. 2021) uses ρ = 0.5 and η = 0.01 (<see cref="ForAsam"/>).
/// </summary>
public sealed record SamOptions
{
    public double Rho { get; init; } = 0.05;
    /// <summary>ASAM: scale the ascent by T_w = |w| + η on weight tensors (rank ≥ 2); biases and BatchNorm parameters use T = 1.</summary>
    public bool Adaptive { get; init; }
    public double Eta { get; init; } = 0.01;

    public static SamOptions ForSam(double rho = 0.05) => new() { Rho = rho };
    public static SamOptions ForAsam(double rho = 0.5, double eta = 0.01) => new() { Rho = rho, Adaptive = true, Eta = eta };
}

/// <summary>
/// Sharpness-aware minimization around any TorchSharp optimizer (the base optimizer, which also owns weight decay).
/// One step: gradient g at w; ε̂ = ρ g/(‖g‖₂ + 1e-12) with the norm over all parameters (ASAM: ε̂ = ρ T_w² g / ‖T_w g‖);
/// gradient at w + ε̂ with BatchNorm running statistics frozen (momentum 0, counters restored); w restored exactly from
/// copies; base step with the perturbed gradient. With several micro-batches (m-sharpness, Foret et al. §4), each gets its
/// own ε̂ and the perturbed gradients are averaged, weighted by micro-batch size.
/// </summary>
public sealed class SharpnessAwareMinimization
{
    readonly nn.Module _model;
    readonly optim.Optimizer _base;
    readonly Parameter[] _params;
    readonly NormBase[] _norms;
    public SamOptions Options { get; }

    public SharpnessAwareMinimization(nn.Module model, optim.Optimizer baseOptimizer, SamOptions options)
    {
        if (!(options.Rho >= 0) || !double.IsFinite(options.Rho)) throw new ValleyException($"--rho: must be a non-negative finite number, got {options.Rho}");
        if (options.Adaptive && (!(options.Eta >= 0) || !double.IsFinite(options.Eta))) throw new ValleyException($"--eta: must be a non-negative finite number, got {options.Eta}");
        _model = model;
        _base = baseOptimizer;
        Options = options;
        _params = model.parameters().Where(p => p.requires_grad).ToArray();
        _norms = model.modules().OfType<NormBase>().ToArray();
    }

    Tensor[]? _copies;

    /// <summary>One SAM step over micro-batches given as (loss closure, size); returns the size-weighted mean loss at w.</summary>
    public double Step(IReadOnlyList<(Func<Tensor> Loss, long Size)> microBatches)
    {
        if (microBatches.Count == 0) throw new ValleyException("SAM step without data");
        long total = microBatches.Sum(m => m.Size);
        bool single = microBatches.Count == 1;
        // Persistent buffers: the exact copies of w, and (with micro-batches) the accumulated perturbed gradient.
        _copies ??= _params.Select(p => empty_like(p).DetachFromDisposeScope()).ToArray();
        var acc = single ? null : _params.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
        double loss = 0;
        try
        {
            foreach (var (closure, size) in microBatches)
            {
                using var scope = NewDisposeScope();
                double weight = (double)size / total;
                _base.zero_grad();
                var l = closure();
                l.backward();
                loss += l.ToDouble() * weight;
                var grads = _params.Select(p => p.grad ?? zeros_like(p)).ToArray();
                if (Options.Rho > 0)
                {
                    using (no_grad())
                    {
                        if (Options.Adaptive)
                        {
                            var eps = Ascent(grads);
                            for (int i = 0; i < _params.Length; i++) { _copies[i].copy_(_params[i]); _params[i].add_(eps[i]); }
                        }
                        else
                        {
                            // Plain SAM: w += ρ g/‖g‖ without materializing ε̂.
                            double factor = Options.Rho / (stack(grads.Select(g => g.norm()).ToArray()).norm().ToDouble() + 1e-12);
                            for (int i = 0; i < _params.Length; i++) { _copies[i].copy_(_params[i]); _params[i].add_(grads[i], alpha: factor); }
                        }
                    }
                    var frozen = FreezeNorms();
                    try
                    {
                        _base.zero_grad();
                        closure().backward();
                    }
                    finally
                    {
                        UnfreezeNorms(frozen);
                        using (no_grad())
                            for (int i = 0; i < _params.Length; i++) _params[i].copy_(_copies[i]);
                    }
                }
                if (acc is not null)
                    for (int i = 0; i < acc.Length; i++)
                        if (_params[i].grad is { } g) acc[i].add_(g, alpha: weight);
            }
            if (acc is not null)
                using (no_grad())
                    for (int i = 0; i < _params.Length; i++)
                    {
                        using var g = _params[i].grad;
                        if (g is null) _params[i].grad = acc[i].clone();
                        else g.copy_(acc[i]);
                    }
            _base.step();
        }
        finally
        {
            if (acc is not null) foreach (var a in acc) a.Dispose();
        }
        return loss;
    }

    /// <summary>The ascent step ε̂ (Foret et al. eq. 2; Kwon et al. eq. 8 for ASAM).</summary>
    internal Tensor[] Ascent(Tensor[] grads)
    {
        using var _ = no_grad();
        var scaled = new Tensor[grads.Length];
        var scale = new Tensor?[grads.Length];
        for (int i = 0; i < grads.Length; i++)
        {
            scale[i] = Options.Adaptive && _params[i].dim() >= 2 ? _params[i].abs().add_(Options.Eta) : null;
            scaled[i] = scale[i] is { } t ? t * grads[i] : grads[i];
        }
        // One synchronization for the norm over all parameters.
        double norm = stack(scaled.Select(t => t.norm()).ToArray()).norm().ToDouble();
        double factor = Options.Rho / (norm + 1e-12);
        return grads.Select((g, i) => scale[i] is { } t ? scaled[i].mul(t).mul_(factor) : g.mul(factor)).ToArray();
    }

    (double? Momentum, Tensor? Count)[] FreezeNorms()
    {
        var saved = new (double?, Tensor?)[_norms.Length];
        for (int i = 0; i < _norms.Length; i++)
        {
            saved[i] = (_norms[i].momentum, _norms[i].num_batches_tracked?.clone());
            _norms[i].momentum = 0.0;
        }
        return saved;
    }

    void UnfreezeNorms((double? Momentum, Tensor? Count)[] saved)
    {
        using var _ = no_grad();
        for (int i = 0; i < _norms.Length; i++)
        {
            _norms[i].momentum = saved[i].Momentum;
            if (saved[i].Count is { } c) _norms[i].num_batches_tracked!.copy_(c);
        }
    }
}
