using Valley.IO;
using System.Globalization;
using System.Text;

namespace Valley.IO;

/// <summary>Small CSV writer (invariant culture, round-trip doubles), written atomically.</summary>
internal static class Csv
{
    public static string Format(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    public static void Write(string path, IReadOnlyList<string> header, IEnumerable<IEnumerable<object>> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine(string.Join(",", header.Select(Escape)));
        foreach (var row in rows)
            sb.AppendLine(string.Join(",", row.Select(c => c switch
            {
                double d => Format(d),
                float f => Format(f),
                IFormattable x => x.ToString(null, CultureInfo.InvariantCulture),
                _ => Escape(c?.ToString() ?? ""),
            })));
        AtomicFile.WriteAllText(path, sb.ToString());
    }

    static string Escape(string s) => s.IndexOfAny([',', '"', '\n']) >= 0 ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;
}
