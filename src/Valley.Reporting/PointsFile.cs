using System.Globalization;
using System.Text;
using Valley.Landscape;

namespace Valley.Reporting;

/// <summary>
/// A landscape's points.csv: one line per finished grid point, appended as it finishes, so that a killed run resumes
/// from the points it wrote. Only lines ended by a newline count; a line torn by a kill is cut off before appending.
/// </summary>
internal static class PointsFile
{
    /// <summary>The header line of points.csv.</summary>
    public const string Header = "i,j,x,y,train_loss,train_accuracy,test_loss,test_accuracy";

    /// <summary>The finished points in a file's text (the grid's own coordinates are kept, by index).</summary>
    public static Dictionary<(int I, int J), GridPoint> Parse(string text, GridSpec spec, string path)
    {
        var result = new Dictionary<(int, int), GridPoint>();
        if (text.Length == 0) return result;
        var lines = text.Split('\n');
        if (lines[0].TrimEnd('\r') != Header && lines[0].Length > 0)
            throw new ValleyException($"{path}: not a landscape points file (header '{lines[0]}'); remove it or choose another --out");
        // The last element follows the last newline: a torn line, or empty.
        for (int k = 1; k < lines.Length - 1; k++)
        {
            var c = lines[k].TrimEnd('\r').Split(',');
            if (c.Length != 8 || !int.TryParse(c[0], CultureInfo.InvariantCulture, out int i) || !int.TryParse(c[1], CultureInfo.InvariantCulture, out int j)) continue;
            if (i < 0 || i >= spec.Xs.Length || j < 0 || j >= (spec.Ys?.Length ?? 1)) continue;
            static double? D(string s) => s.Length == 0 ? null : double.Parse(s, CultureInfo.InvariantCulture);
            try { result[(i, j)] = new GridPoint(i, j, spec.Xs[i], spec.Ys?[j] ?? 0, D(c[4])!.Value, D(c[5]), D(c[6]), D(c[7])); }
            catch (FormatException) { /* a damaged line: the point is evaluated again */ }
        }
        return result;
    }

    /// <summary>The finished points in a file (none when it does not exist).</summary>
    public static Dictionary<(int I, int J), GridPoint> Read(string path, GridSpec spec) =>
        File.Exists(path) ? Parse(File.ReadAllText(path), spec, path) : [];

    /// <summary>
    /// A writer that appends to the file whose earlier content is <paramref name="earlier"/>: a torn last line is cut off
    /// first, and a new or empty file gets the header.
    /// </summary>
    public static StreamWriter OpenForAppend(string path, ReadOnlySpan<byte> earlier)
    {
        var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.Write, FileShare.Read);
        stream.SetLength(earlier.LastIndexOf((byte)'\n') + 1);
        stream.Seek(0, SeekOrigin.End);
        var writer = new StreamWriter(stream, new UTF8Encoding(false));
        if (stream.Length == 0) { writer.WriteLine(Header); writer.Flush(); }
        return writer;
    }

    /// <summary>One point as a line of points.csv (without its newline), round-trip exact.</summary>
    public static string Format(GridPoint p) => $"{p.I},{p.J},{F(p.X)},{F(p.Y)},{F(p.TrainLoss)},{F(p.TrainAccuracy)},{F(p.TestLoss)},{F(p.TestAccuracy)}";

    static string F(double? v) => v is { } d ? d.ToString("R", CultureInfo.InvariantCulture) : "";
}
