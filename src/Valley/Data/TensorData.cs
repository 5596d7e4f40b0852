using TorchSharp;
using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>
/// Data sets from files of named arrays: NumPy .npy/.npz, a PyTorch file of tensors (<c>torch.save({"x": X, "y": Y})</c>,
/// read by the restricted <see cref="PyTorchStateDict"/> reader, which never runs pickled code) and .safetensors. The format
/// is told by content, not by extension. Inputs are arrays <c>x</c> (or <c>x_train</c>/<c>x_test</c>) of shape [N, ...],
/// targets <c>y</c> (<c>y_train</c>/<c>y_test</c>): integer labels for classification, floating-point targets for regression.
/// Every check (dtypes, counts, finiteness, label range) is made here, before a data set is built.
/// </summary>
internal static class TensorData
{
    /// <summary>The kinds of tensor file, as told by their first bytes and, for zip archives, their entries.</summary>
    public enum Kind { None, Npy, Npz, PyTorch, Safetensors }

    /// <summary>What kind of tensor file <paramref name="path"/> holds, or <see cref="Kind.None"/>.</summary>
    public static Kind Sniff(string path)
    {
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            Span<byte> head = stackalloc byte[9];
            int n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
            head = head[..n];
            if (NumPyFile.IsNpy(head)) return Kind.Npy;
            if (n >= 4 && head[..4].SequenceEqual("PK\x03\x04"u8))
            {
                fs.Position = 0;
                ZipArchive zip;
                // A damaged zip archive: the NumPy reader says what is wrong with it.
                try { zip = new ZipArchive(fs, ZipArchiveMode.Read, leaveOpen: true); }
                catch (InvalidDataException) { return Kind.Npz; }
                using var _ = zip;
                if (zip.Entries.Any(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal))) return Kind.PyTorch;
                if (zip.Entries.Any(e => e.FullName.EndsWith(".npy", StringComparison.Ordinal))) return Kind.Npz;
                return Kind.None;
            }
            // safetensors: an 8-byte little-endian header length, then a JSON object.
            if (n == 9 && head[8] == (byte)'{' && BinaryPrimitives.ReadUInt64LittleEndian(head) is var len && len > 1 && (long)len <= fs.Length - 8)
                return Kind.Safetensors;
            return Kind.None;
        }
        catch (InvalidDataException) { return Kind.None; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException(path, $"cannot read: {e.Message}", e); }
    }

    /// <summary>Whether a folder holds NumPy data (<c>x.npy</c> and <c>y.npy</c>).</summary>
    public static bool IsNpyFolder(string folder) =>
        File.Exists(System.IO.Path.Combine(folder, "x.npy")) && File.Exists(System.IO.Path.Combine(folder, "y.npy"));

    /// <summary>The named arrays of a tensor file (the caller disposes them); errors name the file.</summary>
    public static Dictionary<string, Tensor> ReadArrays(string path)
    {
        var kind = Sniff(path);
        switch (kind)
        {
            case Kind.Npy or Kind.Npz: return NumPyFile.Read(path);
            case Kind.PyTorch:
            case Kind.Safetensors:
                try { return kind == Kind.PyTorch ? PyTorchStateDict.Read(path) : Weights.ReadSafetensors(path); }
                catch (WeightsException e)
                {
                    // The shared readers speak of state_dicts; here the file holds data.
                    var problem = e.Message.StartsWith(path + ": ", StringComparison.Ordinal) ? e.Message[(path.Length + 2)..] : e.Message;
                    problem = problem.Replace("PyTorch state_dict file", "PyTorch file of tensors", StringComparison.Ordinal)
                        .Replace("only dictionaries of name → tensor are loaded", "only dictionaries of name → tensor are read", StringComparison.Ordinal);
                    throw new DataException(path, problem, e);
                }
                catch (ValleyException) { throw; }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    throw new DataException(path, $"not a valid {(kind == Kind.PyTorch ? "PyTorch file of tensors" : ".safetensors file")}: {e.Message.Split('\n')[0].Trim()}", e);
                }
            default:
                throw new DataException(path, "not a tensor file Valley reads (.npy, .npz, a PyTorch file of tensors or .safetensors)");
        }
    }

    /// <summary>
    /// A data file (and optionally a separate labels file): arrays x, y or x_train, y_train[, x_test, y_test]; with a labels
    /// file, the data file's single array (or its x) and the labels file's single array (or its y).
    /// </summary>
    public static DataSplit OpenFile(string path, string? labelsPath, int classes, TaskKind? task, ScalarType dtype)
    {
        if (labelsPath is null && Sniff(path) == Kind.Npy)
            throw new DataException(path, "a .npy file holds one array; give its labels or targets as a second file (--labels y.npy), or use a .npz file or a folder with x.npy and y.npy");
        var arrays = ReadArrays(path);
        Dictionary<string, Tensor>? labels = null;
        try
        {
            if (labelsPath is not null)
            {
                labels = ReadArrays(labelsPath);
                var x = Single(path, arrays, "x", "inputs");
                var y = Single(labelsPath, labels, "y", "labels");
                return new DataSplit(Build(System.IO.Path.GetFileName(path), path, labelsPath, x, y, classes, task, dtype), null);
            }
            string name = System.IO.Path.GetFileName(path);
            if (arrays.ContainsKey("x_train") || arrays.ContainsKey("y_train"))
            {
                var xTrain = Need(path, arrays, "x_train");
                var yTrain = Need(path, arrays, "y_train");
                bool hasX = arrays.TryGetValue("x_test", out var xTest), hasY = arrays.TryGetValue("y_test", out var yTest);
                if (hasX != hasY) throw new DataException(path, $"holds '{(hasX ? "x_test" : "y_test")}' but not '{(hasX ? "y_test" : "x_test")}'; {Holds(arrays)}");
                var train = Build(name + "/train", path, path, xTrain, yTrain, classes, task, dtype, "x_train", "y_train");
                if (!hasX) return new DataSplit(train, null);
                try { return new DataSplit(train, BuildTest(name + "/test", path, path, xTest!, yTest!, train, dtype, "x_test", "y_test")); }
                catch { train.Dispose(); throw; }
            }
            return new DataSplit(Build(name, path, path, Need(path, arrays, "x"), Need(path, arrays, "y"), classes, task, dtype), null);
        }
        finally
        {
            foreach (var t in arrays.Values) t.Dispose();
            if (labels is not null) foreach (var t in labels.Values) t.Dispose();
        }
    }

    /// <summary>A folder with x.npy, y.npy and optionally x_test.npy, y_test.npy.</summary>
    public static DataSplit OpenFolder(string folder, int classes, TaskKind? task, ScalarType dtype)
    {
        string P(string f) => System.IO.Path.Combine(folder, f);
        string name = System.IO.Path.GetFileName(folder.TrimEnd('/'));
        var train = OpenFile(P("x.npy"), P("y.npy"), classes, task, dtype).Train;
        try
        {
            bool hasX = File.Exists(P("x_test.npy")), hasY = File.Exists(P("y_test.npy"));
            if (hasX != hasY) throw new DataException(folder, $"holds {(hasX ? "x_test.npy" : "y_test.npy")} but not {(hasX ? "y_test.npy" : "x_test.npy")}");
            var renamed = new Dataset(name + "/train", train.X, train.Y, train.Task, train.NumClasses);
            if (!hasX) return new DataSplit(renamed, null);
            var xs = NumPyFile.Read(P("x_test.npy"));
            var ys = NumPyFile.Read(P("y_test.npy"));
            try
            {
                return new DataSplit(renamed, BuildTest(name + "/test", P("x_test.npy"), P("y_test.npy"), xs.Values.Single(), ys.Values.Single(), train, dtype, "x_test", "y_test"));
            }
            finally
            {
                foreach (var t in xs.Values.Concat(ys.Values)) t.Dispose();
            }
        }
        catch { train.Dispose(); throw; }
    }

    static Tensor Single(string path, Dictionary<string, Tensor> arrays, string key, string what) =>
        arrays.Count == 1 ? arrays.Values.Single()
        : arrays.TryGetValue(key, out var t) ? t
        : throw new DataException(path, $"holds {arrays.Count} arrays and none named '{key}' to use as the {what}; {Holds(arrays)}");

    static Tensor Need(string path, Dictionary<string, Tensor> arrays, string key) =>
        arrays.TryGetValue(key, out var t) ? t
        : throw new DataException(path, $"no array '{key}': expected arrays 'x' and 'y', or 'x_train', 'y_train' (and optionally 'x_test', 'y_test'); {Holds(arrays)}"
            + (arrays.Keys.Any(k => k.EndsWith(".weight", StringComparison.Ordinal)) ? " (model weights? pass them as --weights)" : ""));

    static string Holds(Dictionary<string, Tensor> arrays) =>
        arrays.Count == 0 ? "the file holds no arrays"
        : "the file holds " + string.Join(", ", arrays.OrderBy(a => a.Key, StringComparer.Ordinal).Select(a => $"'{a.Key}' [{string.Join("×", a.Value.shape)}] {DTypeName(a.Value.dtype)}"));

    internal static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float16 => "float16", ScalarType.Float32 => "float32", ScalarType.Float64 => "float64", ScalarType.BFloat16 => "bfloat16",
        ScalarType.Int8 => "int8", ScalarType.Int16 => "int16", ScalarType.Int32 => "int32", ScalarType.Int64 => "int64",
        ScalarType.Byte => "uint8", ScalarType.Bool => "bool", _ => t.ToString().ToLowerInvariant(),
    };

    static bool IsInteger(ScalarType t) => t is ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 or ScalarType.Byte;

    /// <summary>The test split, with the training set's task, class count and example shape.</summary>
    static Dataset BuildTest(string name, string xPath, string yPath, Tensor x, Tensor y, Dataset train, ScalarType dtype, string xKey, string yKey)
    {
        var test = Build(name, xPath, yPath, x, y, train.Task == TaskKind.Classification ? train.NumClasses : 0, train.Task, dtype, xKey, yKey);
        if (!test.ExampleShape.SequenceEqual(train.ExampleShape))
        {
            // The message is made before the test set is disposed: its shape is read from the tensors.
            var message = $"'{xKey}' examples have shape [{string.Join("×", test.ExampleShape)}], the training examples [{string.Join("×", train.ExampleShape)}]";
            test.Dispose();
            throw new DataException(xPath, message);
        }
        if (train.Task == TaskKind.Regression && !test.Y.shape.Skip(1).SequenceEqual(train.Y.shape.Skip(1)))
        {
            var message = $"'{yKey}' targets have shape [{string.Join("×", test.Y.shape)}], unlike the training targets [{string.Join("×", train.Y.shape)}]";
            test.Dispose();
            throw new DataException(yPath, message);
        }
        return test;
    }

    /// <summary>
    /// A data set from arrays x and y after every check: floating-point x of shape [N, ...] with finite values, y with N rows;
    /// integer labels (classification: [N] or [N, 1], non-negative, below the class count) or floating-point targets
    /// (regression, finite). <paramref name="task"/> decides when given (whole-number float labels may be classes, integer
    /// labels regression targets). The tensors are copies; the caller still owns x and y.
    /// </summary>
    internal static Dataset Build(string name, string xPath, string yPath, Tensor x, Tensor y, int classes, TaskKind? task, ScalarType dtype, string xKey = "x", string yKey = "y")
    {
        if (!x.is_floating_point() || x.dtype == ScalarType.BFloat16)
            throw new DataException(xPath, $"'{xKey}' holds {DTypeName(x.dtype)} values; inputs must be float16, float32 or float64 (e.g. x.astype('float32') / 255 for pixels)");
        if (x.dim() < 2)
            throw new DataException(xPath, $"'{xKey}' has shape [{string.Join("×", x.shape)}]; inputs need a first dimension of examples and at least one more: [N, ...] (x.reshape(-1, 1) for one feature)");
        if (x.shape[0] == 0) throw new DataException(xPath, $"'{xKey}' holds no examples");
        if (y.dim() == 0 || y.shape[0] != x.shape[0])
            throw new DataException(yPath, $"'{yKey}' has shape [{string.Join("×", y.shape)}] but '{xKey}' holds {x.shape[0]} examples; they must have the same first dimension");
        if (y.dtype is ScalarType.ComplexFloat32 or ScalarType.ComplexFloat64 or ScalarType.BFloat16)
            throw new DataException(yPath, $"'{yKey}' holds {DTypeName(y.dtype)} values; labels must be integers, targets float16/32/64");
        CheckFinite(xPath, xKey, x);

        bool integer = IsInteger(y.dtype) || y.dtype == ScalarType.Bool;
        var kind = task ?? (integer ? TaskKind.Classification : TaskKind.Regression);
        Tensor? xs = null;
        try
        {
            xs = x.to(dtype);
            if (kind == TaskKind.Classification)
            {
                var labels = Labels(yPath, yKey, y, integer);
                try
                {
                    long max = labels.numel() == 0 ? -1 : labels.max().ToInt64();
                    if (max >= Dataset.MaxClasses)
                        throw new DataException(yPath, $"'{yKey}' holds label {max}; at most {Dataset.MaxClasses} classes are supported");
                    int k = classes > 0 ? classes : (int)(max + 1);
                    if (max >= k)
                    {
                        long at = (labels >= k).nonzero()[0, 0].ToInt64();
                        throw new DataException(yPath, $"'{yKey}' label {at} is {labels[at].ToInt64()}, out of range for {k} classes");
                    }
                    var result = new Dataset(name, xs, labels, TaskKind.Classification, Math.Max(k, 2));
                    xs = null;
                    return result;
                }
                catch { labels.Dispose(); throw; }
            }
            if (!integer) CheckFinite(yPath, yKey, y);
            var targets = y.to(dtype);
            var data = new Dataset(name, xs, targets, TaskKind.Regression, (int)Math.Min(int.MaxValue, y.dim() == 1 ? 1 : y.shape.Skip(1).Aggregate(1L, (a, b) => a * b)));
            xs = null;
            return data;
        }
        finally { xs?.Dispose(); }
    }

    /// <summary>int64 class labels [N] from integer (or, when asked for, whole-number float) labels [N] or [N, 1].</summary>
    static Tensor Labels(string path, string key, Tensor y, bool integer)
    {
        if (y.dim() != 1 && !(y.dim() == 2 && y.shape[1] == 1))
            throw new DataException(path, $"'{key}' has shape [{string.Join("×", y.shape)}]; class labels need shape [N] (float targets of shape [N, K], e.g. multi-label, are regression targets)");
        if (!integer)
        {
            CheckFinite(path, key, y);
            using var frac = y.frac().ne(0);
            if (frac.any().ToBoolean())
            {
                long at = frac.nonzero()[0, 0].ToInt64();
                throw new DataException(path, $"'{key}' value {at} is {y[at].ToDouble()}, not a class label (integer labels for classification; float targets are for regression)");
            }
        }
        Tensor labels;
        using (var flat = y.reshape(y.shape[0])) labels = flat.to(ScalarType.Int64);
        if (labels.numel() > 0 && labels.min().ToInt64() < 0)
        {
            long at = (labels < 0).nonzero()[0, 0].ToInt64();
            long v = labels[at].ToInt64();
            labels.Dispose();
            throw new DataException(path, $"'{key}' label {at} is {v}, not a class index (labels must be 0 or more)");
        }
        return labels;
    }

    static void CheckFinite(string path, string key, Tensor t)
    {
        if (!t.is_floating_point() || t.numel() == 0) return;
        using var scope = NewDisposeScope();
        var bad = isfinite(t).logical_not();
        if (!bad.any().ToBoolean()) return;
        long example = bad.reshape(t.shape[0], -1).any(1).nonzero()[0, 0].ToInt64();
        throw new DataException(path, $"'{key}' example {example} holds NaN or infinite values");
    }
}
