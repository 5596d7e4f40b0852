using System.Globalization;

namespace Valley.Data;

/// <summary>
/// Reader for CSV data: a header row, one example per row, a <c>label</c> column (class index,
/// classification) or a <c>target</c> column (regression), every other column a float feature.
/// Errors name the file and the line.
/// </summary>
internal static class CsvReader
{
    public sealed record CsvTable(float[] Features, int Rows, int Columns, long[]? Labels, float[]? Targets, string[] FeatureNames);

    public static CsvTable Read(string path)
    {
        if (!File.Exists(path)) throw new DataException(path, "file not found");
        string[] lines;
        try { lines = File.ReadAllLines(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException(path, $"cannot read: {e.Message}", e); }
        return Parse(path, lines);
    }

    internal static CsvTable Parse(string path, IReadOnlyList<string> lines)
    {
        int first = 0;
        while (first < lines.Count && string.IsNullOrWhiteSpace(lines[first])) first++;
        if (first == lines.Count) throw new DataException(path, "empty file (expected a header row)");
        var header = Split(lines[first]);
        int labelCol = Array.FindIndex(header, h => h.Equals("label", StringComparison.OrdinalIgnoreCase));
        int targetCol = Array.FindIndex(header, h => h.Equals("target", StringComparison.OrdinalIgnoreCase));
        if (labelCol < 0 && targetCol < 0) throw new DataException(path, "line 1: header has neither a 'label' nor a 'target' column");
        if (labelCol >= 0 && targetCol >= 0) throw new DataException(path, "line 1: header has both a 'label' and a 'target' column; keep one");
        int yCol = labelCol >= 0 ? labelCol : targetCol;
        int nf = header.Length - 1;
        if (nf < 1) throw new DataException(path, "line 1: no feature columns besides the label/target");
        var names = header.Where((_, i) => i != yCol).ToArray();
        var feats = new List<float>();
        var labels = new List<long>();
        var targets = new List<float>();
        int rows = 0;
        for (int li = first + 1; li < lines.Count; li++)
        {
            if (string.IsNullOrWhiteSpace(lines[li])) continue;
            var cells = Split(lines[li]);
            if (cells.Length != header.Length)
                throw new DataException(path, $"line {li + 1}: {cells.Length} columns, the header has {header.Length}");
            if (feats.Count > Array.MaxLength - nf)
                throw new DataException(path, $"line {li + 1}: more than {Array.MaxLength} feature values, too many to load");
            for (int c = 0; c < cells.Length; c++)
            {
                if (c == yCol)
                {
                    if (labelCol >= 0) labels.Add(ParseLabel(path, li, cells[c]));
                    else targets.Add(ParseFloat(path, li, header[c], cells[c]));
                }
                else feats.Add(ParseFloat(path, li, header[c], cells[c]));
            }
            rows++;
        }
        if (rows == 0) throw new DataException(path, "no data rows after the header");
        return new CsvTable(feats.ToArray(), rows, nf, labelCol >= 0 ? labels.ToArray() : null, targetCol >= 0 ? targets.ToArray() : null, names);
    }

    static long ParseLabel(string path, int li, string cell)
    {
        bool parsed = long.TryParse(cell, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l);
        bool beyondLong = !parsed && cell.TrimStart('+') is { Length: > 0 } d && d.All(char.IsAsciiDigit);
        if (!parsed && !beyondLong || l < 0)
            throw new DataException(path, $"line {li + 1}: label '{cell}' is not a non-negative integer class index");
        // Checked here, where the line is known: a larger label would overflow the class count (see Dataset.MaxClasses).
        if (beyondLong || l >= Dataset.MaxClasses)
            throw new DataException(path, $"line {li + 1}: label {cell} is too large; at most {Dataset.MaxClasses} classes are supported");
        return l;
    }

    static float ParseFloat(string path, int li, string col, string cell)
    {
        var word = cell.TrimStart('+', '-').ToLowerInvariant();
        if (word is "nan" or "inf" or "infinity" or "∞")
            throw new DataException(path, $"line {li + 1}, column '{col}': value {cell} is not finite");
        if (!float.TryParse(cell, NumberStyles.Float, CultureInfo.InvariantCulture, out var v))
            throw new DataException(path, $"line {li + 1}, column '{col}': '{cell}' is not a number");
        if (!float.IsFinite(v)) throw new DataException(path, $"line {li + 1}, column '{col}': value {cell} is not finite");
        return v;
    }

    static string[] Split(string line) => line.Split(',').Select(s => s.Trim().Trim('"')).ToArray();
}
