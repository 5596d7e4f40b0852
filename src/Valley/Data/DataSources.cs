using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>A training set and, where the source has one, a test set.</summary>
public sealed record DataSplit(Dataset Train, Dataset? Test) : IDisposable
{
    /// <summary>Frees both sets' tensors.</summary>
    public void Dispose() { Train.Dispose(); Test?.Dispose(); }
}

/// <summary>
/// Opens data sets from files: MNIST-format IDX folders (Fashion-MNIST by default) and CSV files.
/// Every value is validated in .NET (shapes, label range, finiteness) before a tensor is made, so bad
/// data never reaches LibTorch.
/// </summary>
public static class DataSources
{
    /// <summary>Where Debian's <c>dataset-fashion-mnist</c> package installs the data.</summary>
    public const string FashionMnistFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>
    /// Open a data source by path: null or "fashion-mnist" for the default Fashion-MNIST folder;
    /// a folder with IDX files (<c>train-images*</c>, <c>train-labels*</c>, optional <c>t10k-*</c> or <c>test-*</c>);
    /// a CSV file (training data only); a folder with <c>train.csv</c> and optionally <c>test.csv</c>;
    /// a tensor file, told by its content: NumPy <c>.npz</c>, a PyTorch file of tensors (<c>torch.save({"x": X, "y": Y})</c>) or
    /// <c>.safetensors</c> with arrays <c>x</c>, <c>y</c> (or <c>x_train</c>, <c>y_train</c>, <c>x_test</c>, <c>y_test</c>), or a
    /// <c>.npy</c> file of inputs with a <paramref name="labels"/> file; or a folder with <c>x.npy</c>, <c>y.npy</c> (and
    /// optionally <c>x_test.npy</c>, <c>y_test.npy</c>).
    /// </summary>
    /// <param name="path">The data file or folder.</param>
    /// <param name="classes">Number of classes; 0: inferred from the labels (10 for IDX data).</param>
    /// <param name="labels">A separate file of labels or targets for a tensor file of inputs (e.g. <c>y.npy</c> beside <c>x.npy</c>).</param>
    /// <param name="task">
    /// Classification or regression; null: told by the data (a CSV file's label or target column, integer or floating-point
    /// arrays). Given, it decides for tensor files (whole-number float labels as classes, integer labels as regression targets)
    /// and must agree with a CSV file's or IDX folder's labels.
    /// </param>
    /// <param name="dtype">Floating-point type of the inputs (and regression targets) read from tensor files; null: float32.</param>
    public static DataSplit Open(string? path, int classes = 0, string? labels = null, TaskKind? task = null, ScalarType? dtype = null)
    {
        CheckClassCount(classes);
        var dt = dtype ?? ScalarType.Float32;
        if (dt is not (ScalarType.Float32 or ScalarType.Float64)) throw Check.OutOfRange(nameof(dtype), dt, "must be Float32 or Float64");
        if (string.IsNullOrEmpty(path) || path == "fashion-mnist")
        {
            path = Environment.GetEnvironmentVariable("VALLEY_FASHION_MNIST") ?? FashionMnistFolder;
            if (!Directory.Exists(path))
                throw new DataException(path, "Fashion-MNIST not found; install Debian's 'dataset-fashion-mnist' package (scripts/setup.sh does) or pass --data PATH");
        }
        if (labels is not null && !File.Exists(labels)) throw new DataException(labels, Directory.Exists(labels) ? "is a folder, expected a file of labels" : "file not found");
        var split = OpenPath(path, classes, labels, task, dt);
        if (task is { } t && split.Train.Task != t)
        {
            split.Dispose();
            throw new DataException(path, $"holds {(split.Train.Task == TaskKind.Classification ? "class labels (classification)" : "regression targets")}, not {(t == TaskKind.Classification ? "class labels" : "regression targets")} as asked");
        }
        return split;
    }

    static DataSplit OpenPath(string path, int classes, string? labels, TaskKind? task, ScalarType dtype)
    {
        if (File.Exists(path))
        {
            if (TensorData.Sniff(path) != TensorData.Kind.None) return TensorData.OpenFile(path, labels, classes, task, dtype);
            if (labels is not null) throw new DataException(path, $"a separate labels file ({labels}) goes with a tensor file of inputs (.npy, .npz, .pt, .safetensors); this is not one");
            if (path.EndsWith(".csv", StringComparison.OrdinalIgnoreCase)) return new DataSplit(OpenCsv(path, classes), null);
            throw new DataException(path, "unknown data file type; expected a .csv file, a tensor file (.npy, .npz, a PyTorch file of tensors, .safetensors) or a folder of IDX or .npy files");
        }
        if (!Directory.Exists(path)) throw new DataException(path, "no such file or folder");
        if (labels is not null) throw new DataException(path, $"a separate labels file ({labels}) goes with a tensor file of inputs, not with a folder");
        if (TensorData.IsNpyFolder(path)) return TensorData.OpenFolder(path, classes, task, dtype);
        var trainCsv = System.IO.Path.Combine(path, "train.csv");
        if (File.Exists(trainCsv))
        {
            var testCsv = System.IO.Path.Combine(path, "test.csv");
            var train = OpenCsv(trainCsv, classes);
            try
            {
                var test = File.Exists(testCsv) ? OpenCsv(testCsv, train.NumClasses, train.Features) : null;
                return new DataSplit(train, test);
            }
            catch { train.Dispose(); throw; }
        }
        return OpenIdxFolder(path, classes);
    }

    /// <summary>Open an MNIST-format IDX folder.</summary>
    public static DataSplit OpenIdxFolder(string folder, int classes = 0)
    {
        CheckClassCount(classes);
        string? Find(params string[] prefixes) =>
            Directory.EnumerateFiles(folder)
                .Where(f => prefixes.Any(p => System.IO.Path.GetFileName(f).StartsWith(p, StringComparison.OrdinalIgnoreCase)))
                .OrderBy(f => f.EndsWith(".gz") ? 1 : 0).FirstOrDefault();
        var trImg = Find("train-images") ?? throw new DataException(folder, "no train-images* IDX file in this folder");
        var trLbl = Find("train-labels") ?? throw new DataException(folder, "no train-labels* IDX file in this folder");
        var train = FromIdx(System.IO.Path.GetFileName(folder.TrimEnd('/')) + "/train", trImg, trLbl, classes);
        var teImg = Find("t10k-images", "test-images");
        var teLbl = Find("t10k-labels", "test-labels");
        if (teImg is null || teLbl is null) return new DataSplit(train, null);
        try
        {
            var test = FromIdx(System.IO.Path.GetFileName(folder.TrimEnd('/')) + "/test", teImg, teLbl, train.NumClasses);
            if (!test.ExampleShape.SequenceEqual(train.ExampleShape))
                throw new DataException(teImg, $"test images are [{string.Join("×", test.ExampleShape)}], training images [{string.Join("×", train.ExampleShape)}]");
            return new DataSplit(train, test);
        }
        catch { train.Dispose(); throw; }
    }

    /// <summary>Read an image file and a label file in IDX format; pixels are scaled by 1/255 into [0, 1].</summary>
    public static Dataset FromIdx(string name, string imagesPath, string labelsPath, int numClasses = 0)
    {
        CheckClassCount(numClasses);
        var images = IdxReader.Read(imagesPath);
        var labels = IdxReader.Read(labelsPath);
        if (images.Shape.Length < 2) throw new DataException(imagesPath, $"expected images of shape [N, H, W] or [N, C, H, W], got [{string.Join("×", images.Shape)}]");
        if (labels.Shape.Length != 1) throw new DataException(labelsPath, $"expected labels of shape [N], got [{string.Join("×", labels.Shape)}]");
        if (labels.Count != images.Count)
            throw new DataException(labelsPath, $"{labels.Count} labels but {imagesPath} has {images.Count} images");
        int k = numClasses > 0 ? numClasses : 10;
        var y = new long[labels.Count];
        for (int i = 0; i < y.Length; i++)
        {
            // Checked as read (a float), before the cast, so that the message shows the value in the file.
            double v = labels.Bytes is { } b ? b[i] : labels.Floats![i];
            if (v < 0 || v != Math.Floor(v)) throw new DataException(labelsPath, $"label {i} is {LabelText(labels, i)}, not a class index");
            if (v >= k) throw new DataException(labelsPath, $"label {i} is {LabelText(labels, i)}, out of range for {k} classes (MNIST-format data has 10; pass --classes for more)");
            y[i] = (long)v;
        }
        var shape = images.Shape.Select(d => (long)d).ToList();
        if (shape.Count == 3) shape.Insert(1, 1); // [N, H, W] -> [N, 1, H, W]
        Tensor x;
        if (images.Bytes is { } bytes)
        {
            using var u8 = OwnedTensor.From(bytes);
            using var scaled = u8.to(ScalarType.Float32).div_(255f);
            x = scaled.reshape(shape.ToArray());
        }
        else x = OwnedTensor.From(images.Floats!, shape.ToArray());
        return new Dataset(name, x, OwnedTensor.From(y), TaskKind.Classification, k);
    }

    static string LabelText(IdxReader.IdxArray labels, int i) =>
        labels.Bytes is { } b ? b[i].ToString(CultureInfo.InvariantCulture) : labels.Floats![i].ToString(CultureInfo.InvariantCulture);

    /// <summary>The problem with a class count (0 means: infer it from the labels), or null if there is none.</summary>
    public static string? ClassCountProblem(int classes) =>
        classes < 0 ? $"--classes: must be positive (omit it to infer the count from the labels), got {classes}"
        : classes > Dataset.MaxClasses ? $"--classes: at most {Dataset.MaxClasses}, got {classes}"
        : null;

    static void CheckClassCount(int classes)
    {
        if (ClassCountProblem(classes) is { } problem) throw new ValleyException(problem);
    }

    /// <summary>Read a CSV file (see <see cref="CsvReader"/>).</summary>
    public static Dataset OpenCsv(string path, int numClasses = 0, long expectFeatures = 0)
    {
        CheckClassCount(numClasses);
        var t = CsvReader.Read(path);
        if (expectFeatures > 0 && t.Columns != expectFeatures)
            throw new DataException(path, $"{t.Columns} feature columns, the training data has {expectFeatures}");
        var name = System.IO.Path.GetFileName(path);
        if (t.Labels is { } l)
        {
            // The reader refuses labels of Dataset.MaxClasses or more, so the inferred count fits an int.
            int k = numClasses > 0 ? numClasses : (int)(l.Max() + 1);
            var bad = Array.FindIndex(l, v => v >= k);
            if (bad >= 0) throw new DataException(path, $"row {bad + 1}: label {l[bad]} out of range for {k} classes");
            return new Dataset(name, OwnedTensor.From(t.Features, t.Rows, t.Columns), OwnedTensor.From(l), TaskKind.Classification, Math.Max(k, 2));
        }
        return new Dataset(name, OwnedTensor.From(t.Features, t.Rows, t.Columns), OwnedTensor.From(t.Targets!), TaskKind.Regression, 1);
    }

    /// <summary>
    /// Standardize inputs with the training set's mean and standard deviation (scalars over all features),
    /// applied to both splits. Disposes the input split.
    /// </summary>
    public static DataSplit Standardize(DataSplit split)
    {
        double mean = split.Train.X.mean().ToDouble();
        double std = split.Train.X.std().ToDouble();
        var result = new DataSplit(split.Train.Normalize(mean, std), split.Test?.Normalize(mean, std));
        split.Dispose();
        return result;
    }

    /// <summary>
    /// Mean and standard deviation (scalars over all features) of all ranks' training shards together: the numbers one
    /// process holding every shard would standardize with.
    /// </summary>
    public static (double Mean, double Std) Statistics(Dataset train, Distributed.IProcessGroup group)
    {
        using var x = train.X.to(ScalarType.Float64);
        var first = Distributed.ProcessGroups.Total(group, x.sum().ToDouble(), x.numel());
        double mean = first[0] / first[1];
        // Second pass about the global mean: Σ(x − mean)² without the cancellation of Σx² − n·mean².
        double ss = Distributed.ProcessGroups.Total(group, (x - mean).pow(2).sum().ToDouble())[0];
        double std = Math.Sqrt(ss / (first[1] - 1));
        if (!(std > 0)) throw new ValleyException($"{train.Name}: the inputs are constant; cannot standardize");
        return (mean, std);
    }

    /// <summary>Hold out a seeded random fraction of a data set as a test set.</summary>
    public static DataSplit HoldOut(Dataset all, double testFraction, long seed)
    {
        if (!(testFraction > 0 && testFraction < 1)) throw new ValleyException($"--test-fraction: must be in (0, 1), got {testFraction}");
        using var scope = NewDisposeScope();
        var perm = randperm(all.Count, generator: new Generator((ulong)seed));
        long nTest = Math.Max(1, (long)Math.Round(all.Count * testFraction));
        var te = perm.narrow(0, 0, nTest).sort().Values;
        var tr = perm.narrow(0, nTest, all.Count - nTest).sort().Values;
        var train = new Dataset(all.Name + "/train", all.X.index_select(0, tr).MoveToOuterDisposeScope(), all.Y.index_select(0, tr).MoveToOuterDisposeScope(), all.Task, all.NumClasses);
        var test = new Dataset(all.Name + "/test", all.X.index_select(0, te).MoveToOuterDisposeScope(), all.Y.index_select(0, te).MoveToOuterDisposeScope(), all.Task, all.NumClasses);
        return new DataSplit(train, test);
    }
}
