using System.IO.Compression;
using TorchSharp;
using TorchSharp.Modules;
using Valley.Runs;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>
/// A PyTorch model exported as a TorchScript archive (<c>torch.jit.script(model).save(path)</c> or <c>torch.jit.trace</c>),
/// as the <c>nn.Module&lt;Tensor, Tensor&gt;</c> every Valley computation takes. Its parameters and buffers carry the archive's
/// own names (those of PyTorch's <c>named_parameters()</c> and <c>state_dict()</c>), so layer filters, weights files and the
/// state_dicts Valley writes use them. The archive's <c>forward</c> must take one tensor and return one tensor (logits or
/// regression outputs). Train and eval mode switch its submodules as in PyTorch (a traced model keeps the mode it was traced in).
/// <para>
/// Loading an archive runs no Python, but it runs the archive's TorchScript code: load only archives you trust.
/// </para>
/// </summary>
public sealed class TorchScriptModel : nn.Module<Tensor, Tensor>
{
    readonly jit.ScriptModule _script;
    bool _disposed;

    /// <summary>The archive file.</summary>
    public string Path { get; }

    /// <summary>Digest of the archive file's bytes (code and weights), for run-input fingerprints.</summary>
    public string Digest { get; }

    TorchScriptModel(jit.ScriptModule script, string path, string digest) : base("TorchScript")
    {
        _script = script;
        Path = path;
        Digest = digest;
    }

    /// <summary>
    /// Whether the file is a TorchScript archive, by content (not by extension): a zip archive with TorchScript code
    /// (<c>&lt;archive&gt;/code/...</c>) and a pickled module (<c>&lt;archive&gt;/data.pkl</c>). Reads only the zip's directory.
    /// </summary>
    public static bool IsArchive(string path)
    {
        if (!File.Exists(path)) return false;
        try
        {
            using var fs = File.OpenRead(path);
            Span<byte> head = stackalloc byte[4];
            if (fs.Read(head) != 4 || !head.SequenceEqual("PK\x03\x04"u8)) return false;
            fs.Position = 0;
            using var zip = new ZipArchive(fs, ZipArchiveMode.Read);
            bool code = false, data = false;
            foreach (var e in zip.Entries)
            {
                var parts = e.FullName.Split('/');
                if (parts.Length >= 3 && parts[1] == "code" && e.FullName.EndsWith(".py", StringComparison.Ordinal)) code = true;
                if (parts.Length == 2 && parts[1] == "data.pkl") data = true;
            }
            return code && data;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException) { return false; }
    }

    /// <summary>
    /// Loads a TorchScript archive on the CPU, in eval mode. A file that is not one, or an archive whose forward does not take
    /// one tensor, is a one-line <see cref="ValleyException"/> naming the file.
    /// </summary>
    public static TorchScriptModel Load(string path)
    {
        if (!File.Exists(path)) throw new ValleyException($"{path}: file not found");
        if (!IsArchive(path)) throw new ValleyException($"{path}: {ModelFiles.Describe(path)}");
        jit.ScriptModule script;
        try { script = jit.load(path); }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new ValleyException($"{path}: a TorchScript archive LibTorch cannot load: {LastLine(e.Message)}", e);
        }
        var model = new TorchScriptModel(script, path, RunInputs.FileDigest(path));
        try
        {
            int inputs = script.GetNumberOfInputs();
            if (inputs != 1)
                throw new ValleyException($"{path}: the TorchScript model's forward takes {inputs} arguments; Valley calls forward(x) with one tensor (a batch of examples) and needs one tensor back (logits or regression outputs)");
            if (!model.parameters().Any()) throw new ValleyException($"{path}: the TorchScript model has no parameters");
            model.train(false);
            return model;
        }
        catch { model.Dispose(); throw; }
    }

    /// <summary>
    /// Checks that the model takes examples of <paramref name="exampleShape"/> and gives one tensor of <paramref name="outputs"/>
    /// values per example, by one forward pass of two zero examples in eval mode without gradients (buffers unchanged).
    /// </summary>
    public void CheckInput(long[] exampleShape, int outputs)
    {
        string shape = string.Join("×", exampleShape);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var mode = new ModeScope(this, train: false);
        var p0 = parameters().First();
        var x = zeros([2, .. exampleShape], p0.dtype, p0.device);
        object result;
        try { result = _script.forward(x); }
        catch (Exception e) when (e is not OutOfMemoryException and not ValleyException)
        {
            throw new ValleyException($"{Path}: the TorchScript model fails on examples of shape [{shape}]: {LastLine(e.Message)}", e);
        }
        if (result is not Tensor y)
        {
            if (result is IDisposable d) d.Dispose();
            foreach (var t in (result as System.Collections.IEnumerable)?.OfType<Tensor>() ?? []) t.Dispose();
            throw new ValleyException($"{Path}: the TorchScript model's forward returns {Describe(result)}; Valley needs one tensor (logits or regression outputs)");
        }
        long per = y.dim() >= 1 && y.shape[0] == 2 ? y.numel() / 2 : -1;
        if (y.dim() != 2 || y.shape[0] != 2)
            throw new ValleyException($"{Path}: for 2 examples of shape [{shape}] the TorchScript model returns shape [{string.Join(", ", y.shape)}]; Valley needs [examples, outputs]");
        if (per != outputs)
            throw new ValleyException($"{Path}: the TorchScript model has {per} outputs per example, the data have {outputs} classes/targets" +
                (per > outputs ? $" (if the data lack the highest classes, give the class count: --classes {per})" : ""));
    }

    static string Describe(object? r) => r switch
    {
        null => "nothing",
        System.Runtime.CompilerServices.ITuple t => $"a tuple of {t.Length} values",
        System.Collections.ICollection c => $"a list of {c.Count} values",
        _ => $"a {r.GetType().Name}",
    };

    /// <summary>The archive's forward on a batch.</summary>
    public override Tensor forward(Tensor x)
    {
        object result;
        // An error raised inside the archive's code (a failed check, BatchNorm1d on one example in train mode) comes back as
        // the interpreter's traceback: one line with its reason instead.
        try { result = _script.forward(x); }
        catch (Exception e) when (e is not ValleyException and not OperationCanceledException and not OutOfMemoryException)
        {
            throw new ValleyException($"{Path}: the TorchScript model failed on a batch of {x.shape[0]} example(s) of shape [{string.Join("×", x.shape.Skip(1))}]: {LastLine(e.Message)}", e);
        }
        if (result is Tensor t) return t;
        throw new ValleyException($"{Path}: the TorchScript model's forward returned {Describe(result)}; Valley needs one tensor (logits or regression outputs)");
    }

    /// <summary>The archive's parameters, with its own names.</summary>
    public override IEnumerable<(string name, Parameter parameter)> named_parameters(bool recurse = true) => _disposed ? [] : _script.named_parameters(recurse);

    /// <summary>The archive's parameters.</summary>
    public override IEnumerable<Parameter> parameters(bool recurse = true) => _disposed ? [] : _script.parameters(recurse);

    /// <summary>The archive's buffers (e.g. BatchNorm running statistics), with its own names.</summary>
    public override IEnumerable<(string name, Tensor buffer)> named_buffers(bool recurse = true, bool include_nonpersistent = true) =>
        _disposed ? [] : _script.named_buffers(recurse, include_nonpersistent);

    /// <summary>The archive's buffers.</summary>
    public override IEnumerable<Tensor> buffers(bool recurse = true, bool include_nonpersistent = true) => _disposed ? [] : _script.buffers(recurse, include_nonpersistent);

    /// <summary>The archive's submodules.</summary>
    public override IEnumerable<(string name, nn.Module module)> named_modules() => _disposed ? [] : _script.named_modules();

    /// <summary>The archive's direct submodules.</summary>
    public override IEnumerable<(string name, nn.Module module)> named_children() => _disposed ? [] : _script.named_children();

    /// <summary>Train or eval mode for the archive and all its submodules.</summary>
    public override void train(bool train = true) => _script.train(train);

    /// <summary>Eval mode.</summary>
    public override void eval() => _script.train(false);

    /// <summary>Whether the archive is in train mode.</summary>
    public override bool training => _script.training;

    /// <summary>Clears the parameters' gradients.</summary>
    public override void zero_grad(bool set_to_none = true) => _script.zero_grad(set_to_none);

    /// <summary>Moves and converts the archive's parameters and buffers.</summary>
    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
    {
        _script.to(device, dtype, non_blocking);
        return this;
    }

    /// <summary>Moves the archive's parameters and buffers.</summary>
    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking)
    {
        _script.to(deviceType, deviceIndex, non_blocking);
        return this;
    }

    /// <summary>Converts the archive's parameters and buffers.</summary>
    protected override nn.Module _to(ScalarType dtype, bool non_blocking)
    {
        _script.to(dtype, non_blocking);
        return this;
    }

    /// <summary>
    /// Writes the archive with its current weights and buffers (e.g. after training) as a TorchScript archive PyTorch loads with
    /// <c>torch.jit.load</c>, atomically.
    /// </summary>
    public void SaveArchive(string path)
    {
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var tmp = IO.AtomicFile.Temporary(System.IO.Path.GetFullPath(path)); // and stale temporaries of killed processes removed
        try
        {
            jit.save(_script, tmp);
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Runtime.InteropServices.ExternalException)
        {
            File.Delete(tmp);
            throw new WeightsException(path, $"cannot write the TorchScript archive: {LastLine(e.Message)}", e);
        }
    }

    /// <summary>The archive's BatchNorm layers, found by their buffers: running_mean, running_var (and num_batches_tracked).</summary>
    internal IReadOnlyList<(string Name, Tensor Mean, Tensor Var, Tensor? Count)> BatchNorms()
    {
        var buffers = named_buffers().ToDictionary(b => b.name, b => b.buffer);
        var result = new List<(string, Tensor, Tensor, Tensor?)>();
        foreach (var (name, mean) in buffers)
        {
            if (!name.EndsWith("running_mean", StringComparison.Ordinal)) continue;
            var prefix = name[..^"running_mean".Length];
            if (!buffers.TryGetValue(prefix + "running_var", out var v)) continue;
            buffers.TryGetValue(prefix + "num_batches_tracked", out var c);
            result.Add((prefix.TrimEnd('.'), mean, v, c));
        }
        return result;
    }

    /// <summary>
    /// Recomputes the BatchNorm running statistics as the average of the batches' statistics over the data (what PyTorch's
    /// momentum=None gives), in train mode without gradients. The archive's momentum is not visible from here: each layer's
    /// update r ← (1 − m) r + m s is measured once (from r = 0 and r = 1 on the first batch), and every batch then runs from
    /// r = 0, which leaves m·s.
    /// </summary>
    internal void RecomputeBatchNorm(Data.Dataset data, long batchSize)
    {
        var norms = BatchNorms();
        if (norms.Count == 0 || data.Count == 0) return;
        var p0 = parameters().First();
        var sumMean = norms.Select(n => zeros_like(n.Mean, dtype: ScalarType.Float64)).ToArray();
        var sumVar = norms.Select(n => zeros_like(n.Var, dtype: ScalarType.Float64)).ToArray();
        var momentum = new double[norms.Count];
        long batches = 0;
        try
        {
            using (new ModeScope(this, train: true))
            using (no_grad())
                foreach (var (x, _, _) in data.Batches(batchSize))
                {
                    using var scope = NewDisposeScope();
                    var xb = x.to(p0.dtype, p0.device);
                    if (batches == 0)
                    {
                        foreach (var n in norms) { n.Mean.fill_(1); n.Var.fill_(1); n.Count?.zero_(); }
                        Forward(xb);
                        var ones = norms.Select(n => n.Mean.to(ScalarType.Float64)).ToArray();
                        foreach (var n in norms) { n.Mean.zero_(); n.Var.zero_(); n.Count?.zero_(); }
                        Forward(xb);
                        for (int i = 0; i < norms.Count; i++)
                        {
                            momentum[i] = 1 - (ones[i] - norms[i].Mean.to(ScalarType.Float64)).mean().ToDouble();
                            if (!(momentum[i] > 1e-6))
                                throw new ValleyException($"{Path}: BatchNorm '{norms[i].Name}' does not update its running statistics (momentum 0?), so they cannot be recomputed");
                        }
                    }
                    else
                    {
                        foreach (var n in norms) { n.Mean.zero_(); n.Var.zero_(); n.Count?.zero_(); }
                        Forward(xb);
                    }
                    for (int i = 0; i < norms.Count; i++)
                    {
                        sumMean[i].add_(norms[i].Mean.to(ScalarType.Float64), alpha: 1 / momentum[i]);
                        sumVar[i].add_(norms[i].Var.to(ScalarType.Float64), alpha: 1 / momentum[i]);
                    }
                    batches++;
                }
            using (no_grad())
                for (int i = 0; i < norms.Count; i++)
                {
                    norms[i].Mean.copy_(sumMean[i].div(batches));
                    norms[i].Var.copy_(sumVar[i].div(batches));
                    norms[i].Count?.fill_(batches);
                }
        }
        finally
        {
            foreach (var t in sumMean.Concat(sumVar)) t.Dispose();
        }
    }

    /// <summary>
    /// A train-mode forward for the statistics: LibTorch's refusal (e.g. BatchNorm1d on a batch of one example) becomes one
    /// line naming the archive, instead of LibTorch's multi-line trace.
    /// </summary>
    void Forward(Tensor x)
    {
        try { forward(x).Dispose(); }
        catch (Exception e) when (e is not ValleyException and not OperationCanceledException)
        {
            // The TorchScript interpreter's message is a traceback whose last "SomeError: ..." line says what went wrong.
            var lines = e.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var first = lines.Select(l => System.Text.RegularExpressions.Regex.Match(l, @"^[A-Za-z_][\w.]*(Error|Exception):\s*(.+)$"))
                .LastOrDefault(m => m.Success)?.Groups[2].Value ?? lines.FirstOrDefault() ?? e.GetType().Name;
            throw new ValleyException($"{Path}: recomputing the BatchNorm statistics failed on a batch of {x.shape[0]} example(s): {first}", e);
        }
    }

    /// <summary>Frees the archive.</summary>
    protected override void Dispose(bool disposing)
    {
        // The base class disposes what named_parameters, named_buffers and named_modules list: after the archive, nothing.
        if (disposing && !_disposed)
        {
            _script.Dispose();
            _disposed = true;
        }
        base.Dispose(disposing);
    }

    /// <summary>The last informative line of a LibTorch error (TorchScript errors end with the Python-side exception).</summary>
    internal static string LastLine(string message)
    {
        // TorchScript tracebacks end with "SomeError: reason"; c10 errors start with the reason and go on with C++ frames.
        var lines = message.Split('\n').Select(l => l.Trim())
            .Where(l => l.Length > 0 && !l.StartsWith("frame #", StringComparison.Ordinal) && !l.StartsWith("Exception raised from", StringComparison.Ordinal)).ToArray();
        var error = lines.LastOrDefault(l => l.Contains("Error:", StringComparison.Ordinal) || l.StartsWith("RuntimeError", StringComparison.Ordinal));
        return error ?? lines.FirstOrDefault() ?? message;
    }
}
