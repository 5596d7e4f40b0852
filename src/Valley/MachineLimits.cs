using System.Globalization;

namespace Valley;

/// <summary>
/// What this machine can do, so that a request it cannot hold is refused up front with one line, rather than taking all the
/// memory until the kernel kills the process (or a native library aborts it).
/// </summary>
public static class MachineLimits
{
    /// <summary>Physical memory this process may use: the machine's, or its container's limit where there is one.</summary>
    public static long MemoryBytes
    {
        get
        {
            long gc = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            return gc > 0 ? gc : MemTotal() ?? long.MaxValue;
        }
    }

    /// <summary>
    /// Thread counts above this are refused: four per core. More threads than that only slow LibTorch down, and OpenMP
    /// aborts the process for absurd counts.
    /// </summary>
    public static int MaxThreads => 4 * Environment.ProcessorCount;

    /// <summary>Throws a <see cref="ValleyException"/> naming <paramref name="what"/> when it needs more memory than the machine has.</summary>
    /// <param name="bytes">Estimated bytes (a double, so that estimates of absurd requests do not overflow).</param>
    /// <param name="what">The request, as the user gave it, e.g. "--points 100000x100000: the grid".</param>
    public static void EnsureMemory(double bytes, string what)
    {
        long have = MemoryBytes;
        if (bytes > have) throw new ValleyException($"{what} needs about {Format(bytes)} of memory; this machine has {Format(have)}");
    }

    /// <summary>Bytes as "12.3 GB", for messages.</summary>
    public static string Format(double bytes) => bytes switch
    {
        >= 1e12 => (bytes / 1e12).ToString("0.#", CultureInfo.InvariantCulture) + " TB",
        >= 1e9 => (bytes / 1e9).ToString("0.#", CultureInfo.InvariantCulture) + " GB",
        _ => (bytes / 1e6).ToString("0.#", CultureInfo.InvariantCulture) + " MB",
    };

    static long? MemTotal()
    {
        try
        {
            var line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            var kb = line?.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1];
            return kb is null ? null : long.Parse(kb, CultureInfo.InvariantCulture) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { return null; }
    }
}
