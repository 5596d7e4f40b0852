using TorchSharp;
using Valley.Data;
using Valley.Distributed;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>Options of an <see cref="Objective"/>; defaults as in docs/design.md §3.</summary>
public sealed record ObjectiveOptions
{
    /// <summary>Examples per batch. The objective does not depend on it (batches are weighted by size); it only trades memory for speed.</summary>
    public long BatchSize { get; init; } = 1024;

    /// <summary>Evaluate in training mode (BatchNorm batch statistics, dropout on). Default false: eval mode, as PyHessian and docs/design.md §3.</summary>
    public bool TrainMode { get; init; }

    /// <summary>
    /// Compute in this dtype (Float32 or Float64); the model and data are converted, the model for the objective's lifetime
    /// (disposing it converts the model back). Each conversion, here and at Dispose, replaces the model's parameter tensors:
    /// anything that held the old ones (another objective on the same model, an optimizer) cannot use them afterwards.
    /// Null keeps the model's dtype.
    /// </summary>
    public ScalarType? DType { get; init; }

    /// <summary>Restrict to parameters whose names pass this filter (e.g. one layer); null: all trainable parameters.</summary>
    public Func<string, bool>? ParameterFilter { get; init; }

    /// <summary>
    /// Keep each batch's forward pass and graph-building backward pass (its graph-carrying gradient) between Hessian-vector
    /// products at the same weights, so that a product costs one double-backward pass per batch. The weights are checked
    /// before every product (against an exact copy, or a fingerprint for weights too large to copy) and the graphs are
    /// rebuilt when they changed. As many batches are kept as
    /// <see cref="GraphMemoryBytes"/> allows; the rest are recomputed for every product. Default true.
    /// </summary>
    public bool CacheGraph { get; init; } = true;

    /// <summary>
    /// Memory the cached graphs of <see cref="CacheGraph"/> may hold, in bytes; 0 turns caching off. Null (default): a
    /// quarter of the machine's (or container's) memory, and at most half of the memory available when the first graph is
    /// kept. A graph's size is measured once, as the growth of resident memory while the first batch's graph is built
    /// (after freed heap memory is returned to the system), and scaled by batch size for the other batches. Batches are
    /// kept in order until the next would exceed the budget. Only in-memory data sets on the CPU are cached batch by batch;
    /// on another device only a data set that fits in one batch is (its graph's size cannot be measured there).
    /// </summary>
    public long? GraphMemoryBytes { get; init; }

    /// <summary>
    /// Data-parallel ranks: the data set given to the objective is then this rank's shard, and every loss, gradient and
    /// Hessian-vector product is the sum of the ranks' partial results (each batch still weighted by |B|/N with N the
    /// examples of all shards), identical on every rank. Null: this process alone.
    /// </summary>
    public IProcessGroup? Group { get; init; }

    /// <summary>
    /// Let <see cref="Objective.Evaluate(CancellationToken)"/> return a NaN or infinite loss instead of stopping with a <see cref="NonFiniteException"/>:
    /// for loss landscapes, whose far points may overflow and are recorded as they are. Gradients and products are always checked.
    /// </summary>
    public bool AllowNonFiniteLoss { get; init; }

    /// <summary>
    /// How Hessian-vector (and Gauss-Newton) products are computed (docs/design.md §3). Default
    /// <see cref="HessianProductMethod.Auto"/>: by the R-operator propagated layer by layer with explicit matrix products for a
    /// stack of Linear layers and elementwise activations under cross-entropy, MSE or binary cross-entropy (about 1.5× faster
    /// there), by autograd otherwise. Both give the same products up to float rounding;
    /// <see cref="HessianProductMethod.DoubleBackward"/> forces autograd.
    /// </summary>
    public HessianProductMethod HessianProducts { get; init; }
}

/// <summary>
/// Loss and accuracy of a model over a whole data set. Accuracy: the fraction of examples whose largest logit is their label
/// (classification), or, under binary cross-entropy, the fraction of yes/no targets right when a positive logit means yes
/// (target above 0.5); null for other losses on regression targets.
/// </summary>
public sealed record Evaluation(double Loss, double? Accuracy, long Examples);

/// <summary>
/// L(w) = (1/N) Σ_i ℓ(f(x_i; w), y_i) over a whole data set (docs/design.md §3): the model, its loss and the data.
/// Every quantity (loss, gradient, Hessian-vector products) is the full-data value: each batch's mean loss
/// is weighted by |B|/N, so results do not depend on the batch size. The model is in eval mode unless
/// <see cref="ObjectiveOptions.TrainMode"/> is set, and is put back into the mode it had after each call.
/// </summary>
public sealed class Objective : IDisposable
{
    /// <summary>The model f(x; w); its trainable parameters (filtered by <see cref="ObjectiveOptions.ParameterFilter"/>) are w.</summary>
    public nn.Module<Tensor, Tensor> Model { get; }
    /// <summary>The per-batch mean loss ℓ (e.g. <see cref="Losses.CrossEntropy"/>).</summary>
    public LossFunction Loss { get; }

    /// <summary>The examples the objective passes over: an in-memory <see cref="Dataset"/> or a streaming source.</summary>
    public IBatchSource Source { get; }

    /// <summary>
    /// The examples as an in-memory data set, for computations that need random access to single examples (per-example
    /// gradients, seeded subsets). An objective over a streaming source has none and says so.
    /// </summary>
    public Dataset Data => Source as Dataset
        ?? throw new InvalidOperationException($"{Source.Name}: this objective streams its data; this computation needs the examples in memory (a Dataset)");

    /// <summary>The parameters w every product and gradient is taken with respect to.</summary>
    public ParameterSet Parameters { get; }
    /// <summary>The options the objective was made with.</summary>
    public ObjectiveOptions Options { get; }
    /// <summary>The ranks the data are sharded over (the single process unless <see cref="ObjectiveOptions.Group"/> is set).</summary>
    public IProcessGroup Group { get; }
    /// <summary>N: examples over all ranks' shards (<see cref="Data"/> holds this rank's).</summary>
    public long Examples { get; }
    readonly bool _ownsData;
    readonly ScalarType? _convertedFrom;
    readonly HashSet<(IBatchSource Data, long Outputs)> _fits = [];

    /// <summary>The objective of a model and loss over an in-memory data set (converted to the model's dtype when it differs).</summary>
    public Objective(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, ObjectiveOptions? options = null)
        : this(model, loss, (IBatchSource)data, options) { }

    /// <summary>
    /// The objective over any source of batches, e.g. <see cref="BatchSource.From"/> for data that do not fit in memory: each
    /// loss, gradient and Hessian-vector product is one pass over the source, batches weighted by their size.
    /// </summary>
    public Objective(nn.Module<Tensor, Tensor> model, LossFunction loss, IBatchSource data, ObjectiveOptions? options = null)
    {
        Options = options ?? new ObjectiveOptions();
        Check.AtLeast(Options.BatchSize, 1, nameof(Options.BatchSize));
        Group = Options.Group ?? SingleProcess.Instance;
        Examples = Group.Size == 1 ? data.Count : (long)Group.Total(data.Count)[0];
        if (Examples == 0) throw new ValleyException($"{data.Name}: the data set is empty");
        if (data is Dataset targets) Losses.CheckTargets(loss, targets);
        Model = model;
        Loss = loss;
        var p0 = model.parameters().FirstOrDefault() ?? throw new ValleyException("the model has no parameters");
        if (Options.DType is { } dt && dt != p0.dtype)
        {
            if (dt != ScalarType.Float32 && dt != ScalarType.Float64) throw Check.OutOfRange(nameof(Options.DType), dt, "must be Float32 or Float64");
            // Converted for the objective's lifetime only: Dispose converts the model back, so that a caller's model is not
            // changed for good by asking for a float64 computation.
            _convertedFrom = p0.dtype;
            model.to(dt);
            p0 = model.parameters().First();
        }
        var dtype = p0.dtype;
        // The data stay where they are (host memory for a CUDA model) in the model's dtype; each batch moves to the model's
        // device when it is used, so a GPU holds one batch, not the data set.
        if (data is Dataset d && d.X.dtype != dtype)
        {
            Source = d.To(d.X.device, dtype);
            _ownsData = true;
        }
        else Source = data;
        Parameters = ParameterSet.From(model, Options.ParameterFilter);
    }

    /// <summary>Number of parameters the curvature is taken over.</summary>
    public long Size => Parameters.Size;

    /// <summary>Full-data loss, no gradient.</summary>
    public double Value(CancellationToken ct = default) => Evaluate(ct).Loss;

    /// <summary>Full-data loss and accuracy (classification), no gradient.</summary>
    public Evaluation Evaluate(CancellationToken ct = default) => Evaluate(Source, ct);

    /// <summary>Loss and accuracy of the model on another data set (e.g. the test set), same options; with a group, this rank's shard of it.</summary>
    public Evaluation Evaluate(IBatchSource data, CancellationToken ct = default)
    {
        if (data is Dataset targets && !ReferenceEquals(data, Source)) Losses.CheckTargets(Loss, targets);
        using var mode = new ModeScope(Model, Options.TrainMode);
        using var _ = no_grad();
        double loss = 0, correct = 0;
        bool classification = data.Task == TaskKind.Classification;
        // Binary cross-entropy: the fraction of yes/no labels right, deciding yes where the logit is positive.
        bool binary = ReferenceEquals(Loss, Losses.BinaryCrossEntropy);
        long start = 0;
        foreach (var (x, y, size) in data.Batches(Options.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var (xb, yb) = ToModel(x, y, data.Task);
            var output = Model.call(xb);
            CheckOutputs(output, yb, data);
            double batchLoss = Loss(output, yb).ToDouble();
            if (!Options.AllowNonFiniteLoss) CheckFinite(batchLoss, data, start, size);
            loss += batchLoss * size;
            start += size;
            if (classification) correct += output.argmax(1).eq(yb).sum().ToInt64();
            else if (binary)
            {
                var o = output.dim() == 2 && output.shape[1] == 1 && yb.dim() == 1 ? output.squeeze(1) : output;
                correct += o.gt(0).eq(yb.gt(0.5)).to(ScalarType.Float64).mean().ToDouble() * size;
            }
        }
        var (sumLoss, sumCorrect, count) = (loss, correct, (double)data.Count);
        if (Group.Size > 1)
        {
            var totals = Group.Total(loss, correct, data.Count);
            (sumLoss, sumCorrect, count) = (totals[0], totals[1], totals[2]);
        }
        if (count == 0) throw new ValleyException($"{data.Name}: the data set is empty");
        return new Evaluation(sumLoss / count, classification || binary ? sumCorrect / count : null, (long)count);
    }

    /// <summary>Full-data loss and gradient ∇L(w) as a flat vector.</summary>
    public (double Loss, Tensor Gradient) LossAndGradient(CancellationToken ct = default)
    {
        using var mode = new ModeScope(Model, Options.TrainMode);
        var grad = Parameters.Zeros();
        var views = Parameters.Unflatten(grad);
        double loss = 0;
        long n = Examples, start = 0;
        foreach (var (x, y, size) in Source.Batches(Options.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var l = BatchLoss(x, y);
            double batchLoss = l.ToDouble();
            CheckFinite(batchLoss, Source, start, size);
            var g = Grad(l, createGraph: false, retainGraph: false);
            for (int i = 0; i < g.Length; i++) views[i].add_(g[i], alpha: (double)size / n);
            loss += batchLoss * size;
            start += size;
        }
        foreach (var v in views) v.Dispose();
        if (!isfinite(grad).all().ToBoolean())
        {
            grad.Dispose();
            throw new NonFiniteException($"{Source.Name}: the gradient has NaN or infinite entries at these weights although the loss is finite (an overflow in the backward pass; compute in float64)");
        }
        if (Group.Size > 1)
        {
            // One collective for the gradient and the loss together.
            using var scope = NewDisposeScope();
            var packed = cat([grad.to(ScalarType.Float64), OwnedTensor.From(new[] { loss })]);
            var total = Group.Sum(packed);
            grad.copy_(total.narrow(0, 0, grad.shape[0]));
            loss = total[grad.shape[0]].ToDouble();
        }
        return (loss / n, grad);
    }

    /// <summary>Full-data Hessian-vector product H v by double backward (docs/design.md §3).</summary>
    public Tensor HessianVectorProduct(Tensor v, CancellationToken ct = default)
    {
        using var scope = NewDisposeScope();
        return HessianBlockProduct(v.unsqueeze(1), ct).squeeze(1).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Full-data Hessian times a block of vectors V [n, k]. Each batch's forward pass and first
    /// (graph-building) backward pass are shared by the k double-backward passes.
    /// </summary>
    public Tensor HessianBlockProduct(Tensor V, CancellationToken ct = default)
    {
        if (V.shape.Length != 2 || V.shape[0] != Size)
            throw new ValleyException($"Hessian of size {Size} applied to a block of shape [{string.Join(", ", V.shape)}]");
        if (LayerStack is { } stack) return StackBlockProduct(stack, V, ct);
        using var mode = new ModeScope(Model, Options.TrainMode);
        int k = (int)V.shape[1];
        long n = Examples;
        // Rows of `result` are the k products, so each product's per-parameter views are contiguous.
        var result = zeros([k, Size], dtype: Parameters.DType, device: Parameters.Device);
        using (var outer = NewDisposeScope())
        {
            var Vt = V.to(Parameters.DType, Parameters.Device).t().contiguous();
            var vs = new Tensor[k][];
            var outs = new Tensor[k][];
            for (int j = 0; j < k; j++)
            {
                vs[j] = Parameters.Unflatten(Vt[j]);
                outs[j] = Parameters.Unflatten(result[j]);
            }
            var cache = GraphCacheForProduct();
            int b = -1;
            foreach (var (x, y, size) in Source.Batches(Options.BatchSize))
            {
                ct.ThrowIfCancellationRequested();
                b++;
                using var scope = NewDisposeScope();
                var g = cache?.Get(b);
                bool kept = g is not null;
                if (g is null)
                {
                    long before = cache is not null && cache.NeedsMeasurement ? GraphCache.ResidentBytes(trim: true) : 0;
                    g = Grad(BatchLoss(x, y), createGraph: true, retainGraph: true);
                    bool measuring = cache is not null && cache.NeedsMeasurement;
                    kept = cache is not null && cache.TryKeep(b, g, size, before, Parameters.Size * Parameters.DType.ElementSize() + x.numel() * x.dtype.ElementSize());
                    if (measuring) RememberGraphSize(cache);
                }
                double weight = (double)size / n;
                for (int j = 0; j < k; j++)
                {
                    using var inner = NewDisposeScope();
                    // g·v as a sum of per-tensor dots: no flattening of the graph-carrying gradient.
                    Tensor dot = (g[0] * vs[j][0]).sum();
                    for (int i = 1; i < g.Length; i++) dot = dot.add((g[i] * vs[j][i]).sum());
                    var hv = Grad(dot, createGraph: false, retainGraph: kept || j < k - 1);
                    for (int i = 0; i < hv.Length; i++) outs[j][i].add_(hv[i], alpha: weight);
                }
            }
        }
        return SummedBlock(result);
    }

    LinearStack? _stack;
    bool _stackChecked;
    long _stackChunkRows;

    /// <summary>How this objective computes Hessian-vector products, in words: "R-operator over the Linear layers" or "double backward".</summary>
    public string ProductMethodDescription => LayerStack is null ? "autograd (double backward; the GGN by the double-vjp trick)" : "R-operator over the Linear layers (explicit forward and backward R-passes)";

    /// <summary>The model as a stack of Linear layers whose products are propagated explicitly, or null (double backward).</summary>
    internal LinearStack? LayerStack
    {
        get
        {
            if (!_stackChecked)
            {
                _stack = Options.HessianProducts == HessianProductMethod.Auto ? LinearStack.TryCreate(this) : null;
                _stackChecked = true;
            }
            return _stack;
        }
    }

    /// <summary>
    /// <see cref="HessianBlockProduct"/> by <see cref="LinearStack"/>: the data pass in chunks (<see cref="LinearStack.ChunkRows"/>),
    /// each chunk's forward and backward quantities are kept in the graph cache under the same budget and weights check
    /// (their size is exact, no measurement needed), and a product is one forward and one backward R-pass per chunk.
    /// </summary>
    internal Tensor StackBlockProduct(LinearStack stack, Tensor V, CancellationToken ct, bool gaussNewton = false)
    {
        int k = (int)V.shape[1];
        int group = 0;
        var result = zeros([k, Size], dtype: Parameters.DType, device: Parameters.Device);
        using (var outer = NewDisposeScope())
        {
            var Vt = V.to(Parameters.DType, Parameters.Device).t().contiguous();
            ForEachStackChunk(stack, ct, (batch, rows) =>
            {
                if (group == 0) group = stack.VectorsPerPass(rows, Parameters.DType.ElementSize());
                for (int j = 0; j < k; j += group)
                {
                    // Each group's temporaries go when it is done (it writes into `result` in place), so that a block costs
                    // one group's memory, not k vectors'.
                    using var pass = NewDisposeScope();
                    int g = Math.Min(group, k - j);
                    stack.AddProduct(batch, g == k ? Vt : Vt.narrow(0, j, g), Parameters, g == k ? result : result.narrow(0, j, g), gaussNewton);
                }
            });
        }
        return SummedBlock(result);
    }

    /// <summary>
    /// The exact diagonal of the Hessian (or, with <paramref name="gaussNewton"/>, the GGN) of a stack of Linear layers, [n]
    /// in float64 (<see cref="LinearStack.AddDiagonal"/>): one pass over the same kept chunks as the products, summed over
    /// the ranks. Null when it would cost more than <see cref="LinearStack.MaxDiagonalProducts"/> products (deep and wide
    /// stacks, many classes): the estimators are cheaper there.
    /// </summary>
    internal Tensor? StackDiagonal(LinearStack stack, CancellationToken ct, bool gaussNewton = false)
    {
        if (stack.DiagonalCostInProducts(gaussNewton) > LinearStack.MaxDiagonalProducts) return null;
        var result = zeros(Size, dtype: Parameters.DType, device: Parameters.Device);
        ForEachStackChunk(stack, ct, (batch, _) => stack.AddDiagonal(batch, Parameters, result, gaussNewton));
        OutputPasses.AllReduce(this, result);
        using (result) return result.to(ScalarType.Float64);
    }

    /// <summary>
    /// The data pass of <see cref="LinearStack"/>: in chunks (<see cref="LinearStack.ChunkRows"/>), each chunk's forward and
    /// backward quantities kept in the graph cache under the same budget and weights check (their size is exact, no
    /// measurement needed), <paramref name="body"/> called with each chunk and the chunk size inside its own dispose scope.
    /// </summary>
    void ForEachStackChunk(LinearStack stack, CancellationToken ct, Action<LinearStack.Batch, long> body)
    {
        long n = Examples;
        var cache = GraphCacheForProduct();
        long rows = stack.ChunkRows(Options.BatchSize, Parameters.DType.ElementSize(), cache is { Unbounded: false } ? cache.Budget : null);
        // Kept chunks are known by their index: chunks of another size (a changed limit) are other rows.
        if (rows != _stackChunkRows)
        {
            cache?.Clear();
            _stackChunkRows = rows;
        }
        int b = -1;
        foreach (var (x, y, size) in Source.Batches(rows))
        {
            ct.ThrowIfCancellationRequested();
            b++;
            using var scope = NewDisposeScope();
            if (cache?.Payload(b) is not LinearStack.Batch batch)
            {
                var (xb, yb) = ToModel(x, y, Source.Task);
                // The loss's own checks (label range, output and target shapes) before any derivative is formed.
                batch = stack.Prepare(xb, yb, (double)size / n, f => { CheckOutputs(f, yb, Source); Loss(f, yb).Dispose(); });
                cache?.TryKeep(b, batch.Tensors(), batch.Bytes(), batch);
            }
            body(batch, rows);
        }
    }

    /// <summary>Products as rows [k, n], summed over the ranks, as the block [n, k] the product methods return.</summary>
    Tensor SummedBlock(Tensor rows)
    {
        OutputPasses.AllReduce(this, rows);
        var block = rows.t();
        rows.Dispose();
        return block;
    }

    /// <summary>A NaN or infinite loss stops the computation here, naming the examples, rather than flowing into gradients and estimators.</summary>
    static void CheckFinite(double batchLoss, IBatchSource data, long start, long size)
    {
        if (double.IsFinite(batchLoss)) return;
        throw new NonFiniteException($"{data.Name}: the loss is {batchLoss} on examples {start}–{start + size - 1} at these weights; " +
                                     "the model's outputs overflow (rescale very large inputs, e.g. standardize them, or compute in float64)");
    }

    GraphCache? _graphCache;
    long _weightsVersionAtCache = -1;

    /// <summary>How often a cache was emptied because the weights changed (its first filling included), for tests.</summary>
    internal int CacheResets { get; private set; }
    Tensor[]? _fingerprintProbe;
    // The weights check: a counter that moves whenever the weights differ from those of the last check, against an exact
    // copy of them (or, when a copy would take more than an eighth of the cache's budget, their probe fingerprint).
    long _weightsVersion;
    Tensor[]? _weightsSnapshot;
    double[]? _weightsFingerprint;

    /// <summary>Batches whose graph-carrying gradient is cached at the current weights (0 when caching is off or nothing is cached yet).</summary>
    public int CachedBatches => _graphCache?.Count ?? 0;

    /// <summary>Bytes the cached graphs are estimated to hold (see <see cref="ObjectiveOptions.GraphMemoryBytes"/>).</summary>
    public long CachedGraphBytes => _graphCache?.Bytes ?? 0;

    /// <summary>Batches whose output graphs (for the GGN and Fisher operators) are cached at the current weights.</summary>
    internal int CachedOutputBatches => _outputCache?.Count ?? 0;

    /// <summary>Bytes the cached output graphs are estimated to hold.</summary>
    internal long CachedOutputBytes => _outputCache?.Bytes ?? 0;

    /// <summary>The measured size of one example's share of an output graph, in bytes; null until one was measured.</summary>
    internal double? OutputGraphBytesPerExample
    {
        get => _outputCache?.BytesPerExample;
        set => (_outputCache ??= NewGraphCache("outputs")).BytesPerExample = value;
    }

    /// <summary>
    /// Frees the cached graphs now (they are otherwise kept until the weights change and the next product, or until the
    /// objective is disposed), e.g. before a memory-hungry computation that needs no Hessian-vector products.
    /// </summary>
    public void ReleaseGraphs()
    {
        _graphCache?.Clear();
        _outputCache?.Clear();
        // And what the weights check keeps (the next product takes it again and, as the caches are empty, rebuilds them).
        if (_weightsSnapshot is not null) foreach (var t in _weightsSnapshot) t.Dispose();
        if (_fingerprintProbe is not null) foreach (var t in _fingerprintProbe) t.Dispose();
        (_weightsSnapshot, _fingerprintProbe, _weightsFingerprint) = (null, null, null);
    }

    /// <summary>The measured size of one example's share of a graph, in bytes; null until a graph was measured.</summary>
    internal double? GraphBytesPerExample
    {
        get => _graphCache?.BytesPerExample;
        set => (_graphCache ??= NewGraphCache()).BytesPerExample = value;
    }

    /// <summary>
    /// The graph cache for this product, emptied when the weights changed since its graphs were built (<see cref="WeightsVersion"/>);
    /// null when caching is off for this objective.
    /// </summary>
    GraphCache? GraphCacheForProduct() => CacheForProduct(ref _graphCache, ref _weightsVersionAtCache, _outputCache, "gradient");

    GraphCache? _outputCache;
    long _weightsVersionAtOutputCache = -1;

    /// <summary>
    /// The cache of the Gauss-Newton-type operators' per-batch output graphs (the outputs and the graph of Jᵀu, see
    /// <see cref="OutputBatch"/>), under the same budget and weights check as the gradient graphs. Only one of the two
    /// caches holds graphs at a time: filling one empties the other, so together they stay within the budget.
    /// </summary>
    internal GraphCache? OutputGraphCacheForProduct() => CacheForProduct(ref _outputCache, ref _weightsVersionAtOutputCache, _graphCache, "outputs");

    GraphCache? CacheForProduct(ref GraphCache? cache, ref long versionAtCache, GraphCache? other, string kind)
    {
        if (!Options.CacheGraph || Options.GraphMemoryBytes == 0 || Source is not Dataset { Count: > 0 } inMemory) return null;
        // Off the CPU a graph's size cannot be measured: only the single-batch case, as it always was.
        bool cpu = Parameters.Device.type == DeviceType.CPU;
        if (!cpu && inMemory.Count > Options.BatchSize) return null;
        cache ??= NewGraphCache(kind);
        if (!cpu) cache.Unbounded = true;
        long version = WeightsVersion(cache.Unbounded ? 0 : cache.Budget / 8);
        if (versionAtCache != version)
        {
            cache.Clear();
            versionAtCache = version;
            CacheResets++;
        }
        if (cache.Count == 0) other?.Clear();
        return cache;
    }

    GraphCache NewGraphCache(string kind = "gradient")
    {
        var cache = new GraphCache(Options.GraphMemoryBytes ?? GraphCache.DefaultBudget());
        if (MeasuredGraphSizes.TryGetValue(Model, out var sizes) && sizes.TryGetValue(GraphSizeKey(kind), out var bytes)) cache.BytesPerExample = bytes;
        return cache;
    }

    /// <summary>
    /// A graph's measured size per example, kept per model and configuration for the life of the process: the measurement
    /// (two trimmed readings of resident memory, about 25 ms) is then paid once, not by every objective on the same model
    /// (the study and the benchmarks build many).
    /// </summary>
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<nn.Module, System.Collections.Concurrent.ConcurrentDictionary<string, double>> MeasuredGraphSizes = new();

    /// <summary>What a graph's size per example depends on: the selected parameters by name and size (two selections of
    /// equal sizes keep different tensors for the backward pass), dtype, device, mode, loss, input shape and batch size (a
    /// graph's fixed part is spread over the batch's examples).</summary>
    internal string GraphSizeKey(string kind) => $"{kind}|{Parameters.DType}|{Parameters.Device}|{Options.TrainMode}|{Loss.Method.DeclaringType?.FullName}.{Loss.Method.Name}|" +
                          $"{string.Join(',', Parameters.Names.Zip(Parameters.Tensors, (name, t) => $"{name}:{t.numel()}"))}|{Options.BatchSize}|" +
                          (Source is Dataset d ? string.Join('x', d.X.shape.Skip(1)) : "");

    internal void RememberGraphSize(GraphCache? cache, string kind = "gradient")
    {
        if (cache?.BytesPerExample is not { } bytes) return;
        MeasuredGraphSizes.GetOrCreateValue(Model)[GraphSizeKey(kind)] = bytes;
    }

    /// <summary>
    /// Every weight of the model, not only the selected ones (a frozen part that changes changes the curvature of the
    /// selected part too), and in eval mode its buffers (BatchNorm's running statistics are part of the function then; in
    /// train mode the batch statistics are, and every forward pass moves the running ones).
    /// </summary>
    List<Tensor> Weights() => Model.parameters().Select(p => (Tensor)p).Concat(Options.TrainMode ? [] : Model.buffers().Select(b => (Tensor)b)).ToList();

    /// <summary>
    /// A number that changes whenever the weights changed since the last call; caches filled at another number are stale.
    /// Every product checks it. The weights are compared exactly with a copy of them taken at the last change (one read of
    /// each and of its copy: 0.23 ms against the float64 probe fingerprint's 0.63 ms on mlp:784-128-64-10)
    /// when the copy takes at most <paramref name="snapshotBytes"/>; otherwise by <see cref="Fingerprint"/>.
    /// </summary>
    internal long WeightsVersion(long snapshotBytes)
    {
        using var _ = no_grad();
        var tensors = Weights();
        bool copy = tensors.Sum(t => t.numel() * t.element_size()) <= snapshotBytes && tensors.All(t => t.device_type == DeviceType.CPU);
        if (copy)
        {
            // Same dtype, shape and device first: torch.equal compares values only then.
            var s = _weightsSnapshot;
            bool same = s is not null && s.Length == tensors.Count && tensors.Select((t, i) => t.dtype == s[i].dtype && t.shape.SequenceEqual(s[i].shape) && t.Equals(s[i])).All(x => x);
            if (!same)
            {
                if (s is not null) foreach (var t in s) t.Dispose();
                _weightsSnapshot = tensors.Select(t => t.clone().DetachFromDisposeScope()).ToArray(); // under no_grad: no graph
                _weightsFingerprint = null;
                _weightsVersion++;
            }
        }
        else
        {
            var fp = Fingerprint();
            if (_weightsFingerprint is null || !_weightsFingerprint.SequenceEqual(fp))
            {
                if (_weightsSnapshot is not null) foreach (var t in _weightsSnapshot) t.Dispose();
                _weightsSnapshot = null;
                _weightsFingerprint = fp;
                _weightsVersion++;
            }
        }
        return _weightsVersion;
    }

    internal double[] Fingerprint()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var tensors = Weights();
        if (_fingerprintProbe is null || _fingerprintProbe.Length != tensors.Count ||
            _fingerprintProbe.Where((probe, i) => probe.numel() != tensors[i].numel() || probe.device_type != tensors[i].device_type || probe.device_index != tensors[i].device_index).Any())
        {
            if (_fingerprintProbe is not null) foreach (var t in _fingerprintProbe) t.Dispose();
            _fingerprintProbe = tensors.Select((p, i) => randn(p.shape, dtype: ScalarType.Float64, generator: new Generator(9173 + (ulong)i)).to(p.device).DetachFromDisposeScope()).ToArray();
        }
        // One fused float64 dot with a fixed Gaussian probe per tensor (any change of the weights moves it, with probability
        // one) and one copy to the CPU (each dot is brought there first: a model's tensors may sit on several devices).
        var parts = new Tensor[tensors.Count];
        for (int i = 0; i < tensors.Count; i++)
            parts[i] = tensors[i].to(ScalarType.Float64).reshape(-1).dot(_fingerprintProbe[i].reshape(-1));
        return parts.Length == 0 ? [] : stack(parts.Select(p => p.cpu()).ToArray()).data<double>().ToArray();
    }

    Tensor BatchLoss(Tensor x, Tensor y)
    {
        var (xb, yb) = ToModel(x, y, Source.Task);
        var output = Model.call(xb);
        CheckOutputs(output, yb, Source);
        return Loss(output, yb);
    }

    /// <summary>
    /// Checks that a model's outputs fit a data set's labels under cross-entropy (one forward pass of one example, in eval
    /// mode), for computations such as training that call the loss themselves.
    /// </summary>
    internal static void CheckModelFits(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data)
    {
        Losses.CheckTargets(loss, data);
        if (data.Task != TaskKind.Classification || !ReferenceEquals(loss, Losses.CrossEntropy) || data.Count == 0) return;
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var mode = new ModeScope(model, train: false);
        var p0 = model.parameters().First();
        var output = model.call(data.X.narrow(0, 0, 1).to(p0.dtype, p0.device));
        if (output.dim() != 2)
            throw new ValleyException($"{data.Name}: the model's output has shape [{string.Join(", ", output.shape)}]; cross-entropy needs logits of shape [examples, classes]");
        long maxLabel = data.Y.max().ToInt64();
        if (maxLabel >= output.shape[1])
            throw new ValleyException($"{data.Name}: labels go up to {maxLabel}, but the model has {output.shape[1]} outputs; it needs at least {maxLabel + 1}");
    }

    /// <summary>
    /// Before each cross-entropy: the model must give [N, K] logits with K above every label of the batch, or LibTorch fails
    /// deep inside the loss with a long native message. One reduction per batch.
    /// </summary>
    void CheckOutputs(Tensor output, Tensor labels, IBatchSource data)
    {
        if (data.Task != TaskKind.Classification || !ReferenceEquals(Loss, Losses.CrossEntropy) || labels.numel() == 0) return;
        if (output.dim() != 2)
            throw new ValleyException($"{data.Name}: the model's output has shape [{string.Join(", ", output.shape)}]; cross-entropy needs logits of shape [examples, classes]");
        if (_fits.Contains((data, output.shape[1]))) return;
        long maxLabel = labels.max().ToInt64();
        if (maxLabel >= output.shape[1])
            throw new ValleyException($"{data.Name}: labels go up to {maxLabel}, but the model has {output.shape[1]} outputs; it needs at least {maxLabel + 1}");
        // Once a whole in-memory data set is known to fit, its later batches need no check.
        if (data is Dataset all && all.Y.max().ToInt64() < output.shape[1]) _fits.Add((data, output.shape[1]));
    }

    /// <summary>A batch in the dtype and on the device of the objective's parameters (labels stay int64).</summary>
    internal (Tensor X, Tensor Y) ToModel(Tensor x, Tensor y, TaskKind task)
    {
        var p = Parameters.Tensors[0];
        bool xThere = Same(x.device, p.device), yThere = Same(y.device, p.device);
        if (x.dtype != p.dtype || !xThere) x = x.to(p.dtype, p.device);
        if (task == TaskKind.Regression && (y.dtype != p.dtype || !yThere)) y = y.to(p.dtype, p.device);
        else if (!yThere) y = y.to(p.device);
        return (x, y);
    }

    // TorchSharp's Device has no value equality.
    static bool Same(Device a, Device b) => a.type == b.type && (a.type == DeviceType.CPU || a.index == b.index);

    /// <summary>
    /// Gradient of a scalar with respect to the selected parameters. TorchSharp does not turn errors inside
    /// autograd.grad into exceptions (the process aborts), so every precondition is checked first, and
    /// unused inputs are allowed and replaced by zeros (TorchSharp returns invalid tensors for them).
    /// </summary>
    Tensor[] Grad(Tensor scalar, bool createGraph, bool retainGraph, bool allowUnusedZeroFill = true)
    {
        if (!scalar.requires_grad)
            throw new ValleyException("the loss does not depend on any selected parameter (does the model use them, and is autograd enabled?)");
        if (scalar.numel() != 1) throw new ValleyException($"the loss must be a scalar, got shape [{string.Join(", ", scalar.shape)}]");
        var inputs = Parameters.Tensors.Cast<Tensor>().ToList();
        // retain_graph must be passed explicitly together with create_graph (docs/design.md §2).
        var grads = autograd.grad([scalar], inputs, retain_graph: retainGraph || createGraph, create_graph: createGraph, allow_unused: allowUnusedZeroFill);
        var result = new Tensor[grads.Count];
        for (int i = 0; i < result.Length; i++)
            result[i] = IsDefined(grads[i]) ? grads[i] : zeros_like(Parameters.Tensors[i]);
        return result;
    }

    static bool IsDefined(Tensor t)
    {
        try { return t.Handle != IntPtr.Zero && t.numel() >= 0; }
        catch (Exception) { return false; }
    }

    /// <summary>Gives the model back its dtype and releases the data the objective owns (a converted or standardized copy).</summary>
    public void Dispose()
    {
        _graphCache?.Dispose();
        _outputCache?.Dispose();
        if (_convertedFrom is { } original) Model.to(original);
        if (_fingerprintProbe is not null) foreach (var t in _fingerprintProbe) t.Dispose();
        if (_weightsSnapshot is not null) foreach (var t in _weightsSnapshot) t.Dispose();
        if (_ownsData) ((Dataset)Source).Dispose();
    }
}
