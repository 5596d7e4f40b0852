using System.Globalization;
using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The graph-carrying gradients of an objective's first batches at one set of weights (<see cref="ObjectiveOptions.CacheGraph"/>),
/// within a memory budget. Batches are kept in order; once one does not fit, the cache is closed and the later batches are
/// recomputed for every product, until the weights change and the cache starts again.
/// </summary>
internal sealed class GraphCache(long budget) : IDisposable
{
    readonly List<Tensor[]> _graphs = [];
    readonly List<object?> _payloads = [];

    /// <summary>The budget in bytes.</summary>
    public long Budget { get; } = budget;

    /// <summary>Keep every graph whatever its size (off the CPU, where a graph cannot be measured: the single-batch case only).</summary>
    public bool Unbounded { get; set; }

    /// <summary>A batch did not fit: no more are kept at these weights.</summary>
    public bool Closed { get; private set; }

    /// <summary>Graphs kept.</summary>
    public int Count => _graphs.Count;

    /// <summary>Estimated bytes the kept graphs hold.</summary>
    public long Bytes { get; private set; }

    /// <summary>Measured bytes of one example's share of a graph (the first measured batch's growth of resident memory ÷ its examples).</summary>
    public double? BytesPerExample { get; set; }

    /// <summary>The next graph built should be measured (its size is not known yet and it may be kept).</summary>
    public bool NeedsMeasurement => BytesPerExample is null && !Unbounded && !Closed;

    /// <summary>The kept graph of batch <paramref name="batch"/>, or null.</summary>
    public Tensor[]? Get(int batch) => batch < _graphs.Count ? _graphs[batch] : null;

    /// <summary>The object kept with batch <paramref name="batch"/>'s tensors (e.g. the <see cref="OutputBatch"/> that uses them), or null.</summary>
    public object? Payload(int batch) => batch < _payloads.Count ? _payloads[batch] : null;

    /// <summary>
    /// Keeps batch <paramref name="batch"/>'s graph-carrying gradient when it is the next in order and fits the budget, taking
    /// it out of its dispose scope. The first graph is measured: resident memory now minus <paramref name="residentBefore"/>
    /// (taken before it was built), at least <paramref name="floor"/> (the gradient and the batch's inputs, which it holds).
    /// </summary>
    public bool TryKeep(int batch, Tensor[] gradient, long examples, long residentBefore, long floor, object? payload = null)
    {
        if (Closed || batch != _graphs.Count) return false;
        if (BytesPerExample is null && !Unbounded)
            BytesPerExample = Math.Max(ResidentBytes(trim: true) - residentBefore, floor) / (double)examples;
        return Keep(gradient, Unbounded ? 0 : (long)Math.Ceiling(BytesPerExample!.Value * examples), payload);
    }

    /// <summary>Keeps batch <paramref name="batch"/>'s tensors of a known size (<paramref name="bytes"/>) when it is the next in order and fits.</summary>
    public bool TryKeep(int batch, Tensor[] tensors, long bytes, object? payload)
    {
        if (Closed || batch != _graphs.Count) return false;
        return Keep(tensors, Unbounded ? 0 : bytes, payload);
    }

    bool Keep(Tensor[] gradient, long bytes, object? payload)
    {
        if (!Unbounded && Bytes + bytes > Budget)
        {
            Closed = true;
            return false;
        }
        foreach (var t in gradient) t.DetachFromDisposeScope();
        _graphs.Add(gradient);
        _payloads.Add(payload);
        Bytes += bytes;
        return true;
    }

    /// <summary>Drops every graph (the weights changed) and opens the cache again; the measured size is kept.</summary>
    public void Clear()
    {
        foreach (var g in _graphs)
            foreach (var t in g) t.Dispose();
        _graphs.Clear();
        _payloads.Clear();
        Bytes = 0;
        Closed = false;
    }

    /// <inheritdoc/>
    public void Dispose() => Clear();

    /// <summary>
    /// The default budget: a quarter of the memory this process may use (<see cref="MachineLimits.MemoryBytes"/>), and at most
    /// half of what the system has available now (MemAvailable on Linux).
    /// </summary>
    public static long DefaultBudget()
    {
        long quarter = MachineLimits.MemoryBytes / 4;
        return AvailableBytes() is { } free ? Math.Min(quarter, free / 2) : quarter;
    }

    static long? AvailableBytes()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemAvailable:", StringComparison.Ordinal));
            var kb = line?.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1];
            return kb is null ? null : long.Parse(kb, CultureInfo.InvariantCulture) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return null; }
    }

    [DllImport("libc", EntryPoint = "malloc_trim")]
    static extern int MallocTrim(nuint pad);

    static bool _noTrim;

    /// <summary>
    /// Resident memory of the process. With <paramref name="trim"/>, freed heap memory is first returned to the system
    /// (glibc's malloc_trim), so that the growth between two readings is memory still in use, not freed memory the
    /// allocator kept.
    /// </summary>
    public static long ResidentBytes(bool trim)
    {
        if (OperatingSystem.IsLinux())
        {
            if (trim && !_noTrim)
                try { MallocTrim(0); }
                catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _noTrim = true; }
            try
            {
                var fields = File.ReadAllText("/proc/self/statm").Split(' ');
                return long.Parse(fields[1], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        }
        using var p = System.Diagnostics.Process.GetCurrentProcess();
        return p.WorkingSet64;
    }
}
