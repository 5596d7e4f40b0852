namespace Valley;

/// <summary>
/// Seeds derived from tuples of integers, e.g. (seed, rank, batch) for one batch's sampled labels. A linear formula such as
/// seed·1000003 + rank·7919 + batch maps different tuples to one seed (rank 0, batch 7919 and rank 1, batch 0), so two
/// batches would draw the same labels; a hash of the tuple does not.
/// </summary>
internal static class Seeds
{
    /// <summary>
    /// SplitMix64's output function (Steele, Lea &amp; Flood 2014, "Fast splittable pseudorandom number generators"): a bijection
    /// of 64-bit words after which every output bit depends on every input bit.
    /// </summary>
    public static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>
    /// A seed for the tuple <paramref name="parts"/>: SplitMix64 chained over its length and its parts. Each step is a
    /// bijection of the running state for a given part, so tuples of the same length that differ in one part always get
    /// different seeds, and tuples that differ in several collide only by chance (about 2⁻⁶⁴ per pair).
    /// </summary>
    public static ulong Derive(params ReadOnlySpan<long> parts)
    {
        ulong h = Mix((ulong)parts.Length);
        foreach (long p in parts) h = Mix(h ^ (ulong)p);
        return h;
    }

    /// <summary>The generator of the tuple <paramref name="parts"/> (<see cref="Derive"/>).</summary>
    public static TorchSharp.torch.Generator Generator(params ReadOnlySpan<long> parts) => new(Derive(parts));
}
