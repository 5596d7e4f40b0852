using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Valley.Training;

/// <summary>
/// Options of <see cref="SharpnessAwareMinimization"/>. Defaults are the published ones: SAM (Foret et al. 2021) ρ = 0.05;
/// ASAM (Kwon et al. 2021) ρ = 0.5 and η = 0.01 (<see cref="ForAsam"/>).
/// </summary>
public sealed record SamOptions
{
    /// <summary>The radius ρ of the neighbourhood whose worst case SAM minimizes (0 = the base optimizer's step). Default 0.05.</summary>
    public double Rho { get; init; } = 0.05;

    /// <summary>ASAM: scale the ascent by T_w = |w| + η on weight tensors (rank ≥ 2); biases and BatchNorm parameters use T = 1.</summary>
    public bool Adaptive { get; init; }

    /// <summary>ASAM's η in T_w = |w| + η (Kwon et al. 2021 eq. 8). Default 0.01.</summary>
    public double Eta { get; init; } = 0.01;

    /// <summary>SAM with radius <paramref name="rho"/>.</summary>
    public static SamOptions ForSam(double rho = 0.05) => new() { Rho = rho };

    /// <summary>ASAM with radius <paramref name="rho"/> and <paramref name="eta"/>.</summary>
    public static SamOptions ForAsam(double rho = 0.5, double eta = 0.01) => new() { Rho = rho, Adaptive = true, Eta = eta };
}

/// <summary>One micro-batch of an m-sharpness step: a closure that evaluates the loss on it and calls <c>backward()</c>, and its number of examples.</summary>
/// <param name="Closure">Evaluates the loss of the micro-batch at the current weights, calls <c>backward()</c> on it and returns it.</param>
/// <param name="Size">The micro-batch's number of examples (its weight in the averaged gradient).</param>
public readonly record struct MicroBatch(Func<Tensor> Closure, long Size);

/// <summary>
/// Sharpness-aware minimization (Foret et al. 2021) and adaptive SAM (Kwon et al. 2021) as a TorchSharp optimizer around any
/// managed base optimizer (SGD, Adam, ...), which takes the step and owns weight decay. Used as in the PyTorch reference
/// implementation: compute the loss at w and call <c>backward()</c>, then either <see cref="step(Func{Tensor})"/> with a
/// closure that re-evaluates the loss and calls <c>backward()</c>, or <see cref="first_step"/>, the closure's work by hand,
/// and <see cref="second_step"/>.
/// <para>
/// <see cref="first_step"/> saves w and ascends to w + ε̂ with ε̂ = ρ g/‖g‖₂ over all parameters (Foret et al. eq. 2;
/// ASAM: ε̂ = ρ T_w² g/‖T_w g‖₂, Kwon et al. eq. 8), and freezes BatchNorm running statistics so that the pass at the
/// perturbed point leaves them as they were. <see cref="second_step"/> restores w exactly from the copies and takes the base
/// optimizer's step with the gradient at w + ε̂. <see cref="step(IReadOnlyList{MicroBatch})"/> is m-sharpness (Foret et al.
/// §4): each micro-batch gets its own ε̂, and the perturbed gradients are averaged weighted by micro-batch size.
/// </para>
/// <para>
/// The parameter groups (learning rates), <c>zero_grad()</c> and the state dictionary are the base optimizer's: SAM keeps no
/// state between steps. The caller owns the base optimizer and disposes it.
/// </para>
/// </summary>
public sealed class SharpnessAwareMinimization : OptimizerHelper
{
    readonly OptimizerHelper _base;
    readonly NormBase[] _norms;
    readonly Models.TorchScriptModel? _archive;
    Tensor[]? _archiveBuffers;
    Parameter[] _params;
    Tensor[]? _copies;
    // Saved between first_step and second_step: BatchNorm momenta and counters (null when not at the perturbed point).
    (double? Momentum, Tensor? Count)[]? _frozen;

    /// <summary>The options (ρ, adaptive, η).</summary>
    public SamOptions Options { get; }

    /// <summary>The optimizer that takes the step with the perturbed gradient.</summary>
    public OptimizerHelper BaseOptimizer => _base;

    /// <summary>
    /// SAM around <paramref name="baseOptimizer"/> (which was made with <paramref name="model"/>'s parameters, or some of
    /// them). The model is needed for its BatchNorm layers only; the perturbed parameters are the base optimizer's.
    /// </summary>
    public SharpnessAwareMinimization(nn.Module model, OptimizerHelper baseOptimizer, SamOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(baseOptimizer);
        options ??= new SamOptions();
        Check.NonNegativeFinite(options.Rho, nameof(options.Rho));
        if (options.Adaptive) Check.NonNegativeFinite(options.Eta, nameof(options.Eta));
        _base = baseOptimizer;
        Options = options;
        _norms = model.modules().OfType<NormBase>().ToArray();
        // A TorchScript archive's BatchNorm momentum is out of reach: its running statistics are put back instead.
        _archive = model as Models.TorchScriptModel;
        // The very groups of the base optimizer, so that a learning rate set through either is seen by both.
        _parameter_groups = baseOptimizer.ParamGroups as IList<ParamGroup> ?? baseOptimizer.ParamGroups.Cast<ParamGroup>().ToList();
        _params = [];
        ShareState();
    }

    /// <summary>The base optimizer's per-parameter state, under this optimizer's keys too (so that <c>to(device)</c> moves it).</summary>
    void ShareState()
    {
        var sd = _base.state_dict();
        int k = 0;
        foreach (var p in _parameter_groups.SelectMany(g => g.Parameters))
            _state[p.Handle] = sd.State[k++];
        _params = _parameter_groups.SelectMany(g => g.Parameters).Where(p => p.requires_grad).ToArray();
        foreach (var c in _copies ?? []) c.Dispose();
        _copies = null;
    }

    /// <summary>Adds a parameter group to the base optimizer (and so to this one).</summary>
    public override void add_param_group(ParamGroup param_group)
    {
        if (_frozen is not null) throw new InvalidOperationException("a parameter group cannot be added between first_step and second_step");
        bool shared = ReferenceEquals(_parameter_groups, _base.ParamGroups);
        _base.add_param_group(param_group);
        if (!shared) _parameter_groups.Add(param_group);
        ShareState();
    }

    /// <summary>The base optimizer's state (SAM keeps none between steps).</summary>
    public override StateDictionary state_dict() => _base.state_dict();

    /// <summary>Loads the base optimizer's state.</summary>
    public override void load_state_dict(StateDictionary state_dict) => _base.load_state_dict(state_dict);

    /// <summary>
    /// Ascends from w to w + ε̂ using the gradients present (those of the loss at w: call <c>backward()</c> first), keeps an
    /// exact copy of w and freezes BatchNorm running statistics until <see cref="second_step"/>.
    /// </summary>
    /// <param name="zero_grad">Zero the gradients afterwards, ready for the backward pass at w + ε̂.</param>
    public void first_step(bool zero_grad = false)
    {
        if (_frozen is not null) throw new InvalidOperationException("first_step was called twice without second_step in between");
        using (NewDisposeScope())
        using (no_grad())
        {
            if (_params.All(p => p.grad is null))
                throw new InvalidOperationException("first_step needs the gradient at the current weights: call backward() on the loss first");
            _copies ??= _params.Select(p => empty_like(p).DetachFromDisposeScope()).ToArray();
            var grads = _params.Select(p => p.grad ?? zeros_like(p)).ToArray();
            if (Options.Adaptive)
            {
                var eps = Ascent(grads);
                for (int i = 0; i < _params.Length; i++) { _copies[i].copy_(_params[i]); _params[i].add_(eps[i]); }
            }
            else
            {
                // Plain SAM: w += ρ g/‖g‖ without materializing ε̂.
                double factor = Options.Rho / (GlobalNorm(grads) + 1e-12);
                for (int i = 0; i < _params.Length; i++) { _copies[i].copy_(_params[i]); _params[i].add_(grads[i], alpha: factor); }
            }
        }
        _frozen = FreezeNorms();
        if (zero_grad) this.zero_grad();
    }

    /// <summary>
    /// Restores w exactly and takes the base optimizer's step with the gradients present (those at w + ε̂).
    /// </summary>
    /// <param name="zero_grad">Zero the gradients after the step.</param>
    public void second_step(bool zero_grad = false)
    {
        RestoreW();
        _base.step();
        if (zero_grad) this.zero_grad();
    }

    /// <summary>
    /// One SAM step, as the reference implementation's <c>step(closure)</c>: the gradients present must be those of the loss
    /// at w; <see cref="first_step"/> (zeroing them), <paramref name="closure"/> at w + ε̂ (it evaluates the loss, calls
    /// <c>backward()</c> and returns the loss), <see cref="second_step"/>. Returns the closure's loss, at w + ε̂.
    /// </summary>
    public override Tensor step(Func<Tensor>? closure = null)
    {
        if (closure is null)
            throw new ArgumentNullException(nameof(closure), "SAM needs a closure that evaluates the loss and calls backward(), for the gradient at the perturbed weights");
        first_step(zero_grad: true);
        Tensor loss;
        try
        {
            using (enable_grad()) loss = closure();
        }
        catch
        {
            RestoreW();
            throw;
        }
        second_step();
        return loss;
    }

    /// <summary>
    /// One m-sharpness step (Foret et al. 2021 §4): for every micro-batch its closure at w (loss and gradient), its own ε̂
    /// and its closure at w + ε̂; then the base step with the perturbed gradients averaged, weighted by micro-batch size.
    /// With ρ = 0 the gradient at w is the perturbed one and each closure runs once. Returns the size-weighted mean loss at w.
    /// One micro-batch gives the same weights, bit for bit, as <c>closure(); step(closure)</c>.
    /// </summary>
    public double step(IReadOnlyList<MicroBatch> microBatches)
    {
        ArgumentNullException.ThrowIfNull(microBatches);
        if (microBatches.Count == 0) throw new ArgumentException("at least one micro-batch is needed", nameof(microBatches));
        if (microBatches.Any(b => b.Closure is null || b.Size < 1))
            throw new ArgumentException("every micro-batch needs a closure and at least one example", nameof(microBatches));
        double total = microBatches.Sum(b => (double)b.Size);
        // With one micro-batch its perturbed gradient is used as it is.
        var sum = microBatches.Count == 1 ? null : _params.Select(p => zeros_like(p).DetachFromDisposeScope()).ToArray();
        double loss = 0;
        try
        {
            foreach (var (closure, size) in microBatches)
            {
                using var scope = NewDisposeScope();
                double weight = size / total;
                zero_grad();
                using (enable_grad()) loss += closure().ToDouble() * weight;
                if (Options.Rho > 0)
                {
                    first_step(zero_grad: true);
                    try
                    {
                        using (enable_grad()) closure();
                    }
                    finally
                    {
                        RestoreW();
                    }
                }
                if (sum is not null)
                    using (no_grad())
                        for (int i = 0; i < sum.Length; i++)
                            if (_params[i].grad is { } g) sum[i].add_(g, alpha: weight);
            }
            if (sum is not null) SetGradients(sum);
            _base.step();
        }
        finally
        {
            foreach (var s in sum ?? []) s.Dispose();
        }
        return loss;
    }

    void SetGradients(Tensor[] values)
    {
        using var _ = no_grad();
        for (int i = 0; i < _params.Length; i++)
        {
            using var g = _params[i].grad;
            if (g is null) _params[i].grad = values[i].clone();
            else g.copy_(values[i]);
        }
    }

    /// <summary>Back from w + ε̂ to w, exactly (from the copies), with BatchNorm running statistics live again.</summary>
    void RestoreW()
    {
        if (_frozen is null) throw new InvalidOperationException("second_step without first_step: the weights are not at a perturbed point");
        using (no_grad())
            for (int i = 0; i < _params.Length; i++) _params[i].copy_(_copies![i]);
        UnfreezeNorms(_frozen);
        _frozen = null;
    }

    static double GlobalNorm(Tensor[] ts) => stack(ts.Select(t => t.norm()).ToArray()).norm().ToDouble();

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
        double factor = Options.Rho / (GlobalNorm(scaled) + 1e-12);
        return grads.Select((g, i) => scale[i] is { } t ? scaled[i].mul(t).mul_(factor) : g.mul(factor)).ToArray();
    }

    (double? Momentum, Tensor? Count)[] FreezeNorms()
    {
        // Momentum 0 keeps the running statistics as they are; the batch counter is put back afterwards.
        var saved = new (double?, Tensor?)[_norms.Length];
        if (_archive is not null)
            using (no_grad())
                _archiveBuffers = _archive.BatchNorms().SelectMany(n => new[] { n.Mean, n.Var, n.Count }).OfType<Tensor>()
                    .Select(b => b.clone().DetachFromDisposeScope()).ToArray();
        for (int i = 0; i < _norms.Length; i++)
        {
            saved[i] = (_norms[i].momentum, _norms[i].num_batches_tracked?.clone().DetachFromDisposeScope());
            _norms[i].momentum = 0.0;
        }
        return saved;
    }

    void UnfreezeNorms((double? Momentum, Tensor? Count)[] saved)
    {
        using var _ = no_grad();
        if (_archive is not null && _archiveBuffers is { } kept)
        {
            var live = _archive.BatchNorms().SelectMany(n => new[] { n.Mean, n.Var, n.Count }).OfType<Tensor>().ToArray();
            for (int i = 0; i < live.Length; i++) { live[i].copy_(kept[i]); kept[i].Dispose(); }
            _archiveBuffers = null;
        }
        for (int i = 0; i < _norms.Length; i++)
        {
            _norms[i].momentum = saved[i].Momentum;
            if (saved[i].Count is { } c)
            {
                _norms[i].num_batches_tracked!.copy_(c);
                c.Dispose();
            }
        }
    }

    /// <summary>Frees the copies of w (the base optimizer is the caller's to dispose).</summary>
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var c in _copies ?? []) c.Dispose();
            _copies = null;
            foreach (var (_, count) in _frozen ?? []) count?.Dispose();
            foreach (var b in _archiveBuffers ?? []) b.Dispose();
            _archiveBuffers = null;
            _frozen = null;
        }
        base.Dispose(disposing);
    }
}
