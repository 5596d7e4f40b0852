using Valley.Data;
using Valley.Runs;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>
/// Where a model comes from: a built-in architecture spec (<c>mlp:784-128-64-10</c>, <c>lenet</c>, <c>resnet</c>) or the path of
/// a TorchScript archive (recognized by content), optional weights that replace the model's own, and the initialization seed
/// (of built-in specs; an archive brings its own weights). The CLI, the study and library users pass this one thing around.
/// </summary>
/// <param name="Spec">A built-in architecture spec, or the path of a TorchScript archive.</param>
/// <param name="WeightsPath">Weights that replace the model's own (.dat, .pt/.pth/.bin state_dict, .safetensors, or an archive); null = none.</param>
/// <param name="Seed">Seed of a built-in spec's initialization (an archive ignores it).</param>
public sealed record ModelSource(string Spec, string? WeightsPath = null, long Seed = 0)
{
    /// <summary>Whether <see cref="Spec"/> is a model file (an existing file, or text that reads as a path) rather than a built-in spec.</summary>
    public bool IsFile => File.Exists(Spec) || LooksLikePath(Spec);

    /// <summary>Whether <see cref="Spec"/> names a TorchScript archive (by its content).</summary>
    public bool IsArchive => TorchScriptModel.IsArchive(Spec);

    /// <summary>
    /// Build the model for this data and load the weights (checked against the model): a built-in spec initialized with
    /// <see cref="Seed"/>, or a fresh copy of the archive's model with its own weights. The data's example shape and
    /// classes are checked against the model first.
    /// </summary>
    public nn.Module<Tensor, Tensor> Build(Dataset data) => Build(data.ExampleShape, data.NumClasses);

    /// <summary>Build the model for examples of this shape and this many classes (or targets), then load the weights.</summary>
    public nn.Module<Tensor, Tensor> Build(long[] exampleShape, int outputs)
    {
        var model = Initialization(exampleShape, outputs);
        try
        {
            if (WeightsPath is not null) Weights.Load(model, WeightsPath);
            return model;
        }
        catch { model.Dispose(); throw; }
    }

    /// <summary>
    /// The model before <see cref="WeightsPath"/> is loaded: a built-in spec's initialization with <see cref="Seed"/>, or an
    /// archive's own weights (an archive has no seeded initialization: measures that compare with the initialization, such as
    /// the PAC-Bayes bounds' distance to it, use the weights the archive was exported with).
    /// </summary>
    public nn.Module<Tensor, Tensor> Initialization(Dataset data) => Initialization(data.ExampleShape, data.NumClasses);

    /// <summary>The model before <see cref="WeightsPath"/> is loaded, for examples of this shape and this many outputs.</summary>
    public nn.Module<Tensor, Tensor> Initialization(long[] exampleShape, int outputs)
    {
        if (!IsFile) return ModelSpec.Parse(Spec).Build(exampleShape, outputs, Seed);
        Validate();
        var archive = TorchScriptModel.Load(Spec);
        try
        {
            archive.CheckInput(exampleShape, outputs);
            return archive;
        }
        catch { archive.Dispose(); throw; }
    }

    /// <summary>Throws a one-line error when the data cannot go through the model (loads an archive to try it).</summary>
    public void CheckInput(long[] exampleShape, int outputs)
    {
        if (!IsFile) { ModelSpec.Parse(Spec).CheckInput(exampleShape, outputs); return; }
        using var m = Initialization(exampleShape, outputs);
    }

    /// <summary>Throws a one-line error when <see cref="Spec"/> is neither a valid built-in spec nor a TorchScript archive (without building anything).</summary>
    public void Validate()
    {
        if (!IsFile) { ModelSpec.Parse(Spec); return; }
        if (!File.Exists(Spec)) throw new ValleyException($"--model {Spec}: file not found (a model is a built-in spec such as mlp:784-128-64-10, or a TorchScript archive)");
        if (!IsArchive) throw new ValleyException($"{Spec}: {ModelFiles.Describe(Spec)}");
    }

    /// <summary>
    /// The model's name in logs and run records: the spec, or the archive's file name with the digest of its content (a run
    /// resumes only with the same name, so an archive changed under the same path is another model).
    /// </summary>
    public string Name => IsFile ? $"{System.IO.Path.GetFileName(Spec)} (TorchScript {RunInputs.FileDigest(Spec)})" : Spec;

    /// <summary>What the model is, by content, for run-input fingerprints: the spec text, or the archive's digest.</summary>
    public string Digest => IsFile ? RunInputs.FileDigest(Spec) : Spec;

    static bool LooksLikePath(string s) =>
        s.Contains('/') || s.Contains('\\') || System.IO.Path.HasExtension(s) && !s.Contains(':');
}

/// <summary>What a model file given as a model is, when it is not a TorchScript archive: said in one line with the way out.</summary>
internal static class ModelFiles
{
    const string Export = "export your model with torch.jit.script(model).save(\"model.pt\") (or torch.jit.trace(model, example).save(...)) and pass that file as --model";

    /// <summary>One line saying what the file is and how to make a TorchScript archive of the model, or use the file as weights.</summary>
    public static string Describe(string path)
    {
        try
        {
            var tensors = PyTorchStateDict.Read(path);
            int n = tensors.Count;
            foreach (var t in tensors.Values) t.Dispose();
            return $"a PyTorch state_dict ({n} tensors), not a model: pass it as --weights with a built-in spec (--model mlp:..., lenet, resnet), or {Export}";
        }
        catch (WeightsException e) when (e.Message.Contains("it calls ", StringComparison.Ordinal) || e.Message.Contains("nn.Parameter", StringComparison.Ordinal)
                                         || e.Message.Contains("the pickled object is", StringComparison.Ordinal))
        {
            return $"a pickled Python object (torch.save(model) of a whole module?), which Valley never unpickles: {Export}; or save model.state_dict() and pass it as --weights with a built-in spec";
        }
        catch (WeightsException e) when (e.Message.Contains("legacy format", StringComparison.Ordinal))
        {
            return $"a PyTorch file in the legacy (pre-1.6) torch.save format, not a TorchScript archive: {Export}";
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Whatever else the restricted reader finds (a corrupt pickle, a truncated zip), the file is not a model Valley can use.
            return $"not a TorchScript archive (no TorchScript code in it) nor a readable PyTorch file: {Export}";
        }
    }
}
