namespace Valley;

/// <summary>
/// Seeds derived from tuples of integers, e.g. (seed, example, sample, component) for one sampled label's variate. A linear
/// formula such as seed·1000003 + example·7919 + sample maps different tuples to one value (example 0, sample 7919 and
/// example 1, sample 0), so two labels would be drawn alike; a hash of the tuple does not.
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
}
