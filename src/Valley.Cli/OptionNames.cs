using System.Globalization;

namespace Valley.Cli;

/// <summary>
/// The library names its arguments as the library spells them (<c>MaxProducts</c>, <c>Rho</c>); the valley command
/// reports them as its own options (<c>--max-products</c>, <c>--rho</c>). A library name becomes its kebab-case option
/// unless a command registers another (<c>Tolerance</c> → <c>--tol</c>).
/// </summary>
public static class OptionNames
{
    static readonly Dictionary<string, IReadOnlyDictionary<string, string>> PerCommand = new(StringComparer.Ordinal);

    /// <summary>The options of <paramref name="command"/> (e.g. "hessian", "landscape 2d") whose names are not the kebab-case of the library's.</summary>
    public static void Register(string command, IReadOnlyDictionary<string, string> libraryToOption)
    {
        lock (PerCommand) PerCommand[command] = libraryToOption;
    }

    /// <summary>
    /// The one-line message for a bad argument the library refused ("--max-products: must be at least 10, got 5"), or null when
    /// the exception did not come from Valley's argument checks (then it is an internal error).
    /// </summary>
    public static string? Translate(ArgumentException e, string command)
    {
        if (e.ParamName is null || e.TargetSite?.DeclaringType?.Assembly.GetName().Name?.StartsWith("Valley", StringComparison.Ordinal) != true) return null;
        string? option = null;
        lock (PerCommand)
            for (var c = command; option is null && c.Length > 0; c = c.Contains(' ') ? c[..c.LastIndexOf(' ')] : "")
                if (PerCommand.TryGetValue(c, out var names)) names.TryGetValue(e.ParamName, out option);
        option ??= "--" + Kebab(e.ParamName);
        var got = e is ArgumentOutOfRangeException { ActualValue: { } v } ? $", got {Format(v)}" : "";
        return $"{option}: {Check.Problem(e)}{got}";
    }

    static string Format(object v) => v is IFormattable f ? f.ToString(null, CultureInfo.InvariantCulture) : v.ToString() ?? "";

    /// <summary>MaxProducts → max-products.</summary>
    static string Kebab(string name) =>
        string.Concat(name.Select((ch, i) => char.IsUpper(ch) ? (i > 0 ? "-" : "") + char.ToLowerInvariant(ch) : ch.ToString()));
}
