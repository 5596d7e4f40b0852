using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>What the targets of a data set mean.</summary>
public enum TaskKind
{
    /// <summary>Integer class labels in [0, NumClasses); cross-entropy loss.</summary>
    Classification,
    /// <summary>Real-valued targets; mean squared error.</summary>
    Regression,
}

/// <summary>
/// An in-memory data set: inputs <see cref="X"/> of shape [N, ...] (float32, or float64 when read so) and targets
/// <see cref="Y"/> ([N] int64 labels for classification, [N] or [N, k] floating point for regression, e.g. multi-label targets in [0, 1]).
/// Batches are views (<c>narrow</c>) into these tensors, so batching copies nothing.
/// The data set owns its tensors; dispose it when done.
/// </summary>
public sealed class Dataset : IBatchSource, IDisposable
{
    /// <summary>A name for messages and reports (e.g. "fashion-mnist/train[subset 2048, seed 0]").</summary>
    public string Name { get; }
    /// <summary>Inputs [N, ...], floating point.</summary>
    public Tensor X { get; }
    /// <summary>Targets: [N] int64 class labels, or floating-point regression targets.</summary>
    public Tensor Y { get; }
    /// <summary>What the targets mean.</summary>
    public TaskKind Task { get; }
    /// <summary>Number of classes (classification), or the target width (regression).</summary>
    public int NumClasses { get; }

    /// <summary>Number of examples N.</summary>
    public long Count => X.shape[0];
    /// <summary>Shape of one example, e.g. [1, 28, 28] for images or [d] for feature vectors.</summary>
    public long[] ExampleShape => X.shape.Skip(1).ToArray();
    /// <summary>Number of input features of one example (product of <see cref="ExampleShape"/>).</summary>
    public long Features => ExampleShape.Aggregate(1L, (a, b) => a * b);

    /// <summary>
    /// Most classes a data set may have. A class count sizes the model's output layer and the cross-entropy over it, so a label
    /// such as 2^31 − 1 or 2^32 (a typo, an ID column, a count taken for a label) would ask for billions of outputs per example;
    /// a million is far more than real classification data sets have (ImageNet-21k has about 21,000).
    /// </summary>
    public const int MaxClasses = 1_000_000;

    /// <summary>
    /// Checks the tensors so that bad data gives one line naming the data set here rather than a native exception in LibTorch:
    /// floating-point inputs of shape [N, ...]; for classification, int64 labels of shape [N] in [0, <paramref name="numClasses"/>)
    /// (one min/max reduction); for regression, floating-point targets.
    /// </summary>
    public Dataset(string name, Tensor x, Tensor y, TaskKind task, int numClasses)
    {
        CheckBatch(name, x, y, task, numClasses);
        Name = name;
        X = x;
        Y = y;
        Task = task;
        NumClasses = numClasses;
    }

    /// <summary>
    /// Inputs [N, ...] floating point, targets with N rows: int64 labels in [0, classes) for classification, floating point
    /// for regression. Checked in .NET before LibTorch sees the tensors, whose own errors are long native messages.
    /// </summary>
    internal static void CheckBatch(string name, Tensor x, Tensor y, TaskKind task, int numClasses)
    {
        if (x.shape.Length < 2) throw new ValleyException($"{name}: inputs must have shape [N, ...], got [{string.Join(", ", x.shape)}]");
        if (!x.is_floating_point()) throw new ValleyException($"{name}: inputs must be floating point, got {x.dtype}");
        if (y.shape.Length == 0 || y.shape[0] != x.shape[0]) throw new ValleyException($"{name}: {x.shape[0]} inputs but targets of shape [{string.Join(", ", y.shape)}]");
        if (task == TaskKind.Classification) CheckLabels(name, y, numClasses);
        else if (!y.is_floating_point()) throw new ValleyException($"{name}: regression targets must be floating point, got {y.dtype}");
    }

    static void CheckLabels(string name, Tensor y, int numClasses)
    {
        if (numClasses < 1 || numClasses > MaxClasses) throw new ValleyException($"{name}: {numClasses} classes; expected 1 to {MaxClasses}");
        if (y.dtype != ScalarType.Int64) throw new ValleyException($"{name}: classification labels must be int64 class indices, got {y.dtype}");
        if (y.shape.Length != 1) throw new ValleyException($"{name}: classification labels must have shape [N], got [{string.Join(", ", y.shape)}]");
        if (y.numel() == 0) return;
        var (min, max) = y.aminmax();
        long lo, hi;
        using (min) using (max) (lo, hi) = (min.ToInt64(), max.ToInt64());
        if (lo < 0 || hi >= numClasses) throw new ValleyException($"{name}: label {(lo < 0 ? lo : hi)} is out of range for {numClasses} classes (labels must be in [0, {numClasses}))");
    }

    /// <summary>
    /// A fixed, seeded subset of <paramref name="n"/> examples (sampled without replacement, order kept
    /// by index so that the subset does not depend on anything but the seed). n ≥ Count returns a copy of all.
    /// </summary>
    public Dataset Subset(long n, long seed)
    {
        if (n <= 0) throw new ValleyException($"--subset: must be a positive number of examples, got {n}");
        if (n >= Count) return new Dataset(Name, X.clone(), Y.clone(), Task, NumClasses);
        using var scope = NewDisposeScope();
        var gen = new Generator((ulong)seed);
        var idx = randperm(Count, generator: gen).narrow(0, 0, n).sort().Values;
        var x = X.index_select(0, idx).MoveToOuterDisposeScope();
        var y = Y.index_select(0, idx).MoveToOuterDisposeScope();
        return new Dataset($"{Name}[subset {n}, seed {seed}]", x, y, Task, NumClasses);
    }

    /// <summary>
    /// This rank's contiguous share of the examples (a copy; the first Count mod size ranks hold one more), so that the ranks
    /// together hold every example once, in order.
    /// </summary>
    public Dataset Shard(Distributed.IProcessGroup group)
    {
        if (Count < group.Size) throw new ValleyException($"{Name}: {Count} examples cannot be shared by {group.Size} ranks");
        var (start, count) = Distributed.ProcessGroups.Share(Count, group.Rank, group.Size);
        return new Dataset($"{Name}[shard {group.Rank + 1}/{group.Size}]", X.narrow(0, start, count).clone(), Y.narrow(0, start, count).clone(), Task, NumClasses);
    }

    /// <summary>Examples [start, start + count) as a view.</summary>
    public Dataset Slice(long start, long count) =>
        new(Name, X.narrow(0, start, count), Y.narrow(0, start, count), Task, NumClasses);

    /// <summary>
    /// Batches of at most <paramref name="batchSize"/> examples as views, in order.
    /// The last batch may be smaller; objectives weight every batch by its size. Each batch's views are disposed when the
    /// next batch is requested or the pass ends (<see cref="IBatchSource.Batches"/>: valid until then), so that a pass
    /// leaves no tensor handles behind for the finalizer; keep a view of your own (e.g. <c>x.alias()</c>) to hold one longer.
    /// </summary>
    public IEnumerable<(Tensor X, Tensor Y, long Size)> Batches(long batchSize)
    {
        if (batchSize <= 0) throw new ValleyException($"--batch-size: must be positive, got {batchSize}");
        for (long start = 0; start < Count; start += batchSize)
        {
            long size = Math.Min(batchSize, Count - start);
            var (x, y) = (X.narrow(0, start, size), Y.narrow(0, start, size));
            try { yield return (x, y, size); }
            finally
            {
                x.Dispose();
                y.Dispose();
            }
        }
    }

    /// <summary>
    /// Standardize inputs with the given per-feature statistics (computed on the training set and
    /// reused for the test set). Returns a new data set.
    /// </summary>
    public Dataset Normalize(double mean, double std)
    {
        if (!(std > 0)) throw new ValleyException($"normalization: standard deviation must be positive, got {std}");
        return new Dataset(Name, (X - mean) / std, Y.clone(), Task, NumClasses);
    }

    /// <summary>Move to a device and/or dtype (inputs and regression targets); labels stay int64.</summary>
    public Dataset To(Device device, ScalarType dtype)
    {
        var x = X.to(dtype, device);
        var y = Task == TaskKind.Regression ? Y.to(dtype, device) : Y.to(device);
        return new Dataset(Name, x, y, Task, NumClasses);
    }

    /// <summary>Frees the inputs' and targets' tensors.</summary>
    public void Dispose()
    {
        X.Dispose();
        Y.Dispose();
    }

    /// <summary>The name, the number of examples, their shape and the classes, for messages.</summary>
    public override string ToString() =>
        $"{Name}: {Count} examples of shape [{string.Join("×", ExampleShape)}], " +
        (Task == TaskKind.Classification ? $"{NumClasses} classes" : $"regression ({NumClasses} targets)");
}
