using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>
/// Examples in batches, for computations that pass over all the data (loss, gradient, Hessian-vector products): an in-memory
/// <see cref="Dataset"/> is one; <see cref="BatchSource.From"/> makes one from any re-enumerable sequence of batches (a
/// loader reading from disk, a generator), so that the data need not sit in memory at once.
/// </summary>
public interface IBatchSource
{
    /// <summary>A name for messages and reports.</summary>
    string Name { get; }
    /// <summary>What the targets mean (class labels or regression targets).</summary>
    TaskKind Task { get; }
    /// <summary>Number of classes (classification), or the target width (regression).</summary>
    int NumClasses { get; }
    /// <summary>Examples in one pass: the N of the full-data loss (1/N) Σ ℓᵢ, known before the pass.</summary>
    long Count { get; }
    /// <summary>
    /// One pass over every example, in batches of at most <paramref name="batchSize"/> examples where the source can choose
    /// (a <see cref="Dataset"/> slices itself; a loader yields its own batches). Each call starts a new pass, in the same
    /// order. The caller disposes nothing: batches are valid until the next one is requested.
    /// </summary>
    IEnumerable<(Tensor X, Tensor Y, long Size)> Batches(long batchSize);
}

/// <summary>Batch sources from sequences of batches.</summary>
public static class BatchSource
{
    /// <summary>
    /// A source whose passes each call <paramref name="pass"/> and yield its (inputs, targets) batches: inputs [B, ...]
    /// floating point, targets [B] int64 labels (classification) or floating-point targets (regression). Every pass must
    /// yield the same <paramref name="count"/> examples in the same order; a pass that yields another number is an error.
    /// Batches the pass allocates are disposed after use.
    /// </summary>
    public static IBatchSource From(string name, TaskKind task, int numClasses, long count, Func<IEnumerable<(Tensor X, Tensor Y)>> pass) =>
        new Streamed(name, task, Check.AtLeast(numClasses, 1, nameof(numClasses)), Check.AtLeast(count, 1, nameof(count)), pass);

    sealed class Streamed(string name, TaskKind task, int numClasses, long count, Func<IEnumerable<(Tensor X, Tensor Y)>> pass) : IBatchSource
    {
        public string Name => name;
        public TaskKind Task => task;
        public int NumClasses => numClasses;
        public long Count => count;

        public IEnumerable<(Tensor X, Tensor Y, long Size)> Batches(long batchSize)
        {
            long seen = 0;
            foreach (var (x, y) in pass())
            {
                try
                {
                    Dataset.CheckBatch(name, x, y, task, numClasses);
                    seen += x.shape[0];
                    if (seen > count) throw new ValleyException($"{name}: a pass yielded more than the {count} examples the source declares");
                    yield return (x, y, x.shape[0]);
                }
                finally
                {
                    x.Dispose();
                    y.Dispose();
                }
            }
            if (seen != count) throw new ValleyException($"{name}: a pass yielded {seen} examples, the source declares {count}");
        }
    }
}
