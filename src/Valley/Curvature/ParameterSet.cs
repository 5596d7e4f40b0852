using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The parameters a curvature computation is taken over, in a fixed order, and the mapping between
/// them and one flat vector. Vectors over parameters are always flat tensors of length <see cref="Size"/>
/// (docs/design.md §1): dot, axpy and norm are plain tensor ops, and <see cref="Unflatten"/> gives per-tensor views.
/// </summary>
public sealed class ParameterSet
{
    /// <summary>The parameters' names, as the module names them ("0.weight").</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>The parameters themselves.</summary>
    public IReadOnlyList<Parameter> Tensors { get; }

    /// <summary>Their shapes.</summary>
    public IReadOnlyList<long[]> Shapes { get; }

    /// <summary>Where each parameter starts in a flat vector.</summary>
    public IReadOnlyList<long> Offsets { get; }

    /// <summary>Total number of parameters: the length of a flat vector.</summary>
    public long Size { get; }

    /// <param name="parameters">Named parameters, in the order of the flat vector.</param>
    public ParameterSet(IEnumerable<(string Name, Parameter Param)> parameters)
    {
        var list = parameters.ToList();
        if (list.Count == 0) throw new ValleyException("no parameters selected (check --layer)");
        Names = list.Select(p => p.Name).ToArray();
        Tensors = list.Select(p => p.Param).ToArray();
        Shapes = Tensors.Select(t => t.shape).ToArray();
        var offsets = new long[list.Count];
        long size = 0;
        for (int i = 0; i < list.Count; i++) { offsets[i] = size; size += Tensors[i].numel(); }
        Offsets = offsets;
        Size = size;
    }

    /// <summary>
    /// The trainable parameters of <paramref name="model"/> whose names pass <paramref name="filter"/>
    /// (all of them when null), in the module's registration order (the order of PyTorch's state_dict).
    /// </summary>
    public static ParameterSet From(nn.Module model, Func<string, bool>? filter = null)
    {
        var chosen = model.named_parameters().Where(p => p.parameter.requires_grad && (filter?.Invoke(p.name) ?? true)).ToList();
        if (chosen.Count == 0)
        {
            var all = string.Join(", ", model.named_parameters().Select(p => p.name));
            throw new ValleyException($"--layer: no trainable parameter matches; the model has: {all}");
        }
        return new ParameterSet(chosen.Select(p => (p.name, p.parameter)));
    }

    /// <summary>
    /// A filter from a comma-separated list of parameter-name prefixes, e.g. "4" or "4.weight,2": a parameter
    /// is selected when its name equals a prefix or starts with the prefix followed by '.'.
    /// </summary>
    public static Func<string, bool>? PrefixFilter(string? spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) return null;
        var prefixes = spec.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return name => prefixes.Any(p => name == p || name.StartsWith(p + ".", StringComparison.Ordinal));
    }

    /// <summary>The parameters' dtype (that of the first).</summary>
    public ScalarType DType => Tensors[0].dtype;

    /// <summary>The parameters' device (that of the first).</summary>
    public Device Device => Tensors[0].device;

    /// <summary>Concatenate per-parameter tensors (same shapes as the parameters) into one flat vector.</summary>
    public Tensor Flatten(IEnumerable<Tensor> perParameter)
    {
        using var scope = NewDisposeScope();
        return cat(perParameter.Select(t => t.reshape(-1)).ToArray()).MoveToOuterDisposeScope();
    }

    /// <summary>Views of a flat vector, one per parameter, with the parameters' shapes.</summary>
    public Tensor[] Unflatten(Tensor flat)
    {
        if (flat.shape.Length != 1 || flat.shape[0] != Size)
            throw new ValleyException($"vector has shape [{string.Join(", ", flat.shape)}], expected [{Size}]");
        var views = new Tensor[Tensors.Count];
        for (int i = 0; i < views.Length; i++)
            views[i] = flat.narrow(0, Offsets[i], Tensors[i].numel()).view(Shapes[i]);
        return views;
    }

    /// <summary>A detached copy of the current parameter values as one flat vector.</summary>
    public Tensor GetFlat()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        // detach + clone: never an alias of a parameter (cat of a single tensor may not copy).
        return Flatten(Tensors.Select(t => t.detach())).clone().MoveToOuterDisposeScope();
    }

    /// <summary>Overwrite the parameters in place with the values of a flat vector.</summary>
    public void SetFlat(Tensor flat)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var views = Unflatten(flat);
        for (int i = 0; i < views.Length; i++) Tensors[i].copy_(views[i]);
    }

    /// <summary>w ← w + alpha·d in place (a weight perturbation; undo it with a <see cref="WeightSnapshot"/>).</summary>
    public void AddInPlace(Tensor direction, double alpha = 1.0)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var views = Unflatten(direction);
        for (int i = 0; i < views.Length; i++) Tensors[i].add_(views[i], alpha);
    }

    /// <summary>Exact copies of the current values, to restore bit-identically after a perturbation.</summary>
    public WeightSnapshot Snapshot() => new(this);

    /// <summary>Zeros of size <see cref="Size"/> in the parameters' dtype and device.</summary>
    public Tensor Zeros() => zeros(Size, dtype: DType, device: Device);

    /// <summary>"3 tensors, 51 parameters".</summary>
    public override string ToString() => $"{Tensors.Count} tensors, {Size} parameters";
}

/// <summary>
/// Exact copies of parameter values. <see cref="Restore"/> copies them back, so weights after a
/// perturbation are bit-identical to before (subtracting the perturbation would not be).
/// </summary>
public sealed class WeightSnapshot : IDisposable
{
    readonly ParameterSet _set;
    readonly Tensor[] _copies;

    internal WeightSnapshot(ParameterSet set)
    {
        _set = set;
        using var _ = no_grad();
        _copies = set.Tensors.Select(t => t.detach().clone().DetachFromDisposeScope()).ToArray();
    }

    /// <summary>Copies the saved values back into the parameters.</summary>
    public void Restore()
    {
        using var _ = no_grad();
        for (int i = 0; i < _copies.Length; i++) _set.Tensors[i].copy_(_copies[i]);
    }

    /// <summary>Frees the copies.</summary>
    public void Dispose()
    {
        foreach (var c in _copies) c.Dispose();
    }
}
