namespace Valley;

/// <summary>Summaries of repeated random estimates (probes, samples, batches): every estimate carries its uncertainty.</summary>
internal static class Statistics
{
    /// <summary>
    /// The sample mean and its standard error s/√m (s the sample standard deviation, m − 1 in the denominator). With fewer
    /// than two values the error is unknown: NaN, never zero, and never infinity (which JSON cannot hold).
    /// </summary>
    public static (double Mean, double StandardError) MeanAndStandardError(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return (double.NaN, double.NaN);
        double mean = values.Average();
        if (values.Count < 2) return (mean, double.NaN);
        double ss = 0;
        foreach (var v in values) ss += (v - mean) * (v - mean);
        return (mean, Math.Sqrt(ss / (values.Count - 1) / values.Count));
    }
}
