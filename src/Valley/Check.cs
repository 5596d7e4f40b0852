using System.Globalization;

namespace Valley;

/// <summary>
/// Argument checks in library terms: a bad value throws <see cref="ArgumentOutOfRangeException"/> whose
/// <see cref="ArgumentException.ParamName"/> is the option's name as the library spells it (e.g. "MaxProducts" of
/// <c>LanczosOptions</c>) and whose message says what is wrong in plain words ("must be at least 10"). Front ends such as
/// the valley command translate the name into their own (<c>--max-products</c>).
/// </summary>
internal static class Check
{
    public static ArgumentOutOfRangeException OutOfRange(string name, object? value, string problem) =>
        new(name, value, problem);

    public static double PositiveFinite(double value, string name) =>
        value > 0 && double.IsFinite(value) ? value : throw OutOfRange(name, value, "must be a positive finite number");

    public static double NonNegativeFinite(double value, string name) =>
        value >= 0 && double.IsFinite(value) ? value : throw OutOfRange(name, value, "must be a non-negative finite number");

    public static long AtLeast(long value, long min, string name) =>
        value >= min ? value : throw OutOfRange(name, value, $"must be at least {min.ToString(CultureInfo.InvariantCulture)}");

    public static int AtLeast(int value, int min, string name) =>
        value >= min ? value : throw OutOfRange(name, value, $"must be at least {min.ToString(CultureInfo.InvariantCulture)}");

    /// <summary>A value in the open interval (lo, hi).</summary>
    public static double Between(double value, double lo, double hi, string name) =>
        value > lo && value < hi ? value
            : throw OutOfRange(name, value, $"must be in ({lo.ToString(CultureInfo.InvariantCulture)}, {hi.ToString(CultureInfo.InvariantCulture)})");

    /// <summary>
    /// The problem text of an argument exception without the parameter name and value .NET appends to its message
    /// ("must be at least 10 (Parameter 'MaxProducts') Actual value was 5."), for front ends that print their own names.
    /// </summary>
    public static string Problem(ArgumentException e)
    {
        var m = e.Message;
        int cut = e.ParamName is null ? -1 : m.IndexOf($" (Parameter '{e.ParamName}')", StringComparison.Ordinal);
        return (cut >= 0 ? m[..cut] : m).Split('\n')[0].Trim();
    }
}
