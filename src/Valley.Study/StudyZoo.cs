using System.Globalization;
using System.Text;
using Valley.Data;
using Valley.Models;
using Valley.Runs;

namespace Valley.Study;

/// <summary>
/// A model zoo: models trained elsewhere, listed in <c>DIR/models.csv</c> (<c>valley study --models DIR</c>, the PGDL setting).
/// Columns: <c>name</c> and <c>weights</c> (a state_dict <c>.pt</c>/<c>.pth</c>/<c>.bin</c>, <c>.safetensors</c>, <c>.dat</c>, or a
/// TorchScript archive; paths relative to DIR) are required; <c>model</c> (a built-in spec or an archive; else the study's
/// model, or the weights file itself when it is an archive), <c>init</c> (the weights training started from) and
/// <c>steps</c> (optimization steps) are optional; every further column is a hyperparameter of the model (e.g. <c>seed</c>,
/// which also seeds its measures). The study loads and measures them; it trains nothing.
/// </summary>
public static class StudyZoo
{
    /// <summary>The file a zoo folder holds.</summary>
    public const string FileName = "models.csv";

    static readonly string[] Reserved = ["name", "weights", "model", "init", "steps"];

    /// <summary>
    /// Reads <c>models.csv</c> of <paramref name="folder"/>: one <see cref="StudyModel"/> per row (with <see cref="StudyModel.Weights"/>),
    /// architecture <paramref name="model"/> unless the row names one. With <paramref name="data"/>, every row's weights are
    /// loaded into its architecture to check them against it and the data. A bad row throws a one-line
    /// <see cref="ValleyException"/> naming models.csv, the row and the column.
    /// </summary>
    public static List<StudyModel> Read(string folder, string model, Dataset? data = null)
    {
        var path = Path.Combine(folder, FileName);
        if (!Directory.Exists(folder)) throw new ValleyException($"{folder}: no such folder (a model zoo is a folder with {FileName})");
        if (!File.Exists(path)) throw new ValleyException($"{path}: not found (a model zoo lists its models in {FileName}: name, weights[, model, init, steps, hyperparameters...])");
        var lines = File.ReadAllLines(path).Select((l, i) => (Line: l, Number: i + 1)).Where(x => x.Line.Trim().Length > 0).ToList();
        if (lines.Count == 0) throw new ValleyException($"{path}: empty (the first line names the columns: name, weights, ...)");
        var header = Split(lines[0].Line, path, lines[0].Number).Select(h => h.Trim()).ToList();
        for (int i = 0; i < header.Count; i++)
        {
            if (header[i].Length == 0) throw new ValleyException($"{path}: column {i + 1} has no name");
            if (header.IndexOf(header[i]) != i) throw new ValleyException($"{path}: column '{header[i]}' appears twice");
        }
        foreach (var required in new[] { "name", "weights" })
            if (!header.Contains(required)) throw new ValleyException($"{path}: no '{required}' column (columns: {string.Join(", ", header)}; needed: name, weights)");
        var models = new List<StudyModel>();
        var names = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int r = 1; r < lines.Count; r++)
        {
            var (line, number) = lines[r];
            string Where(string column) => $"{path}: row {r} (line {number}), column {column}";
            var fields = Split(line, path, number);
            if (fields.Count != header.Count) throw new ValleyException($"{path}: row {r} (line {number}) has {fields.Count} fields, the header {header.Count}");
            var row = header.Zip(fields, (h, f) => (h, f.Trim())).ToDictionary(x => x.h, x => x.Item2);
            var name = row["name"];
            if (!SpecReader.IsSafeName(name))
                throw new ValleyException($"{Where("name")}: must be letters, digits, '.', '_' or '-' (it names a folder), got '{name}'");
            if (names.TryGetValue(name, out var earlier)) throw new ValleyException($"{Where("name")}: '{name}' again (also row {earlier})");
            names[name] = r;
            string File_(string column, bool required)
            {
                var v = row.GetValueOrDefault(column, "");
                if (v.Length == 0)
                    return required ? throw new ValleyException($"{Where(column)}: empty (the path of the model's weights, relative to {folder})") : "";
                var full = Path.GetFullPath(Path.Combine(folder, v));
                if (!File.Exists(full)) throw new ValleyException($"{Where(column)}: file not found: {v}");
                if (!TorchScriptModel.IsArchive(full))
                    try { Weights.FormatOf(full); }
                    catch (WeightsException) { throw new ValleyException($"{Where(column)}: {v}: not a weights file (.pt, .pth, .bin, .safetensors, .dat) nor a TorchScript archive"); }
                return full;
            }
            var weights = File_("weights", true);
            var init = File_("init", false);
            string arch = model;
            if (row.GetValueOrDefault("model", "") is { Length: > 0 } m)
            {
                var local = Path.Combine(folder, m);
                arch = File.Exists(local) ? Path.GetFullPath(local) : m;
                try { new ModelSource(arch).Validate(); }
                catch (ValleyException e) { throw new ValleyException($"{Where("model")}: {e.Message.Replace("--model ", "", StringComparison.Ordinal)}", e); }
            }
            else if (TorchScriptModel.IsArchive(weights)) arch = weights;
            long? steps = null;
            if (row.GetValueOrDefault("steps", "") is { Length: > 0 } st)
                steps = long.TryParse(st, NumberStyles.None, CultureInfo.InvariantCulture, out var s) ? s
                    : throw new ValleyException($"{Where("steps")}: must be a non-negative integer, got '{st}'");
            var hyper = header.Where(h => !Reserved.Contains(h) && row[h].Length > 0).ToDictionary(h => h, h => row[h]);
            long seed = 0;
            if (hyper.TryGetValue("seed", out var seedText) && !long.TryParse(seedText, NumberStyles.Integer, CultureInfo.InvariantCulture, out seed))
                throw new ValleyException($"{Where("seed")}: must be an integer (it also seeds the model's measures), got '{seedText}'");
            var sm = new StudyModel(name, hyper.GetValueOrDefault("optimizer", ""), 0, 0, seed)
            {
                Architecture = arch, Weights = weights, Initialization = init.Length > 0 ? init : null, Steps = steps, Hyperparameters = hyper,
            };
            if (data is not null)
            {
                Check(sm, data, Where("weights"));
                if (sm.Initialization is not null) Check(sm with { Weights = sm.Initialization }, data, Where("init"));
            }
            models.Add(sm);
        }
        if (models.Count < 2) throw new ValleyException($"{path}: {models.Count} model{(models.Count == 1 ? "" : "s")}; a study needs at least two");
        return models;
    }

    /// <summary>Loads a row's weights into its architecture for these data (and drops the model), naming the row on failure.</summary>
    static void Check(StudyModel m, Dataset data, string where)
    {
        try
        {
            using var built = new ModelSource(m.Architecture!, m.Weights).Build(data);
        }
        catch (ValleyException e) { throw new ValleyException($"{where}: {e.Message}", e); }
    }

    /// <summary>The zoo by content, for a study folder's fingerprint: every model's name, architecture, hyperparameters and the digests of its files.</summary>
    public static string Digest(IEnumerable<StudyModel> models)
    {
        var text = new StringBuilder();
        foreach (var m in models)
        {
            text.Append(m.Name).Append('|').Append(new ModelSource(m.Architecture ?? "").IsFile ? RunInputs.FileDigest(m.Architecture!) : m.Architecture).Append('|')
                .Append(m.Weights is null ? "" : RunInputs.FileDigest(m.Weights)).Append('|').Append(m.Initialization is null ? "" : RunInputs.FileDigest(m.Initialization))
                .Append('|').Append(m.Steps?.ToString(CultureInfo.InvariantCulture)).Append('|')
                .Append(string.Join(",", m.Hyperparameters.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"))).Append('\n');
        }
        return "sha256:" + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>One CSV line's fields (double quotes around a field that holds commas; "" inside them for a quote).</summary>
    static List<string> Split(string line, string path, int number)
    {
        var fields = new List<string>();
        var cur = new StringBuilder();
        bool quoted = false;
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < line.Length && line[i + 1] == '"') { cur.Append('"'); i++; }
                else if (c == '"') quoted = false;
                else cur.Append(c);
            }
            else if (c == '"') quoted = true;
            else if (c == ',') { fields.Add(cur.ToString()); cur.Clear(); }
            else cur.Append(c);
        }
        if (quoted) throw new ValleyException($"{path}: line {number}: a quote is not closed");
        fields.Add(cur.ToString());
        return fields;
    }
}
