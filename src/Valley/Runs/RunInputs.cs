using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Serialization;
using Valley.Data;
using Valley.Distributed;
using static TorchSharp.torch;

namespace Valley.Runs;

/// <summary>
/// What a run computed its numbers from, by content: digests of the data's values and of the model's weights and buffers,
/// digests of any other input file, and every option that changes a number. A rerun into an output folder reuses earlier
/// results only when its inputs have the same <see cref="Fingerprint"/>; the names of files and folders play no part, so a
/// changed file under the same name is a different input, and a renamed one is the same.
/// </summary>
public sealed record RunInputs
{
    /// <summary>Input name (e.g. "data", "weights", "--seed") → its value or content digest, in ordinal order.</summary>
    public SortedDictionary<string, string> Items { get; init; } = new(StringComparer.Ordinal);

    /// <summary>SHA-256 over every item, in hexadecimal: equal for equal inputs, different (with overwhelming probability) otherwise.</summary>
    public string Fingerprint
    {
        get
        {
            var text = new StringBuilder();
            foreach (var (k, v) in Items) text.Append(k.Length.ToString(CultureInfo.InvariantCulture)).Append(':').Append(k).Append('=').Append(v).Append('\n');
            return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
        }
    }

    /// <summary>These inputs and one more (a null value is recorded as "null", so that "absent" and "not given" are inputs too).</summary>
    public RunInputs With(string name, object? value)
    {
        var items = new SortedDictionary<string, string>(Items, StringComparer.Ordinal) { [name] = Format(value) };
        return this with { Items = items };
    }

    /// <summary>Whether earlier results were computed from these inputs.</summary>
    public bool SameAs(RunInputs? earlier) => earlier is not null && earlier.Fingerprint == Fingerprint;

    /// <summary>
    /// The result file of an earlier run at <paramref name="path"/>, as JSON, when it exists, parses as a
    /// <typeparamref name="T"/>, is <paramref name="usable"/> and was computed from these inputs; empty otherwise, and then
    /// <paramref name="replaced"/> says what differs when a file was there (a file of another version counts as other inputs).
    /// </summary>
    internal byte[] ReadEarlier<T>(string path, Func<T, RunInputs?> inputsOf, Func<T, bool> usable, out string? replaced) where T : class
    {
        replaced = null;
        if (!File.Exists(path)) return [];
        T? earlier = null;
        try { earlier = System.Text.Json.JsonSerializer.Deserialize<T>(File.ReadAllBytes(path), IO.AtomicFile.Json); }
        catch (System.Text.Json.JsonException) { /* not a result file of this version: start afresh */ }
        if (earlier is not null && usable(earlier) && SameAs(inputsOf(earlier)))
            return System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(earlier, IO.AtomicFile.Json);
        replaced = DifferencesFrom(earlier is null ? null : inputsOf(earlier));
        return [];
    }

    /// <summary>
    /// What differs from an earlier run, for messages: e.g. "data contents, --seed (0 → 1)". Digests are not shown, only that
    /// the content differs.
    /// </summary>
    public string DifferencesFrom(RunInputs? earlier)
    {
        if (earlier is null) return "the earlier run's inputs are unknown";
        var names = Items.Keys.Union(earlier.Items.Keys, StringComparer.Ordinal).Order(StringComparer.Ordinal)
            .Where(k => Items.GetValueOrDefault(k) != earlier.Items.GetValueOrDefault(k)).ToList();
        if (names.Count == 0) return "nothing (same inputs)";
        string Describe(string k)
        {
            var (was, now) = (earlier.Items.GetValueOrDefault(k), Items.GetValueOrDefault(k));
            if (IsDigest(was) || IsDigest(now)) return $"{k} contents";
            return $"{k} ({was ?? "absent"} → {now ?? "absent"})";
        }
        var shown = names.Take(4).Select(Describe).ToList();
        return string.Join(", ", shown) + (names.Count > shown.Count ? $" and {names.Count - shown.Count} more" : "");
    }

    const string DigestPrefix = "sha256:";
    static bool IsDigest(string? v) => v is not null && v.StartsWith(DigestPrefix, StringComparison.Ordinal);

    static string Format(object? v) => v switch
    {
        null => "null",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        float f => f.ToString("R", CultureInfo.InvariantCulture),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "null",
    };

    /// <summary>Digest of a data set: its inputs' and targets' dtypes, shapes and bytes, its task and class count.</summary>
    public static string Digest(Dataset data)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        AppendText(h, $"{data.Task}:{data.NumClasses}\n");
        Append(h, data.X);
        Append(h, data.Y);
        return Finish(h);
    }

    /// <summary>Digest of a module's state: every parameter and buffer, with its name, dtype, shape and bytes, in state_dict order.</summary>
    public static string Digest(nn.Module model)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, t) in model.state_dict())
        {
            AppendText(h, name + "\n");
            Append(h, t);
        }
        return Finish(h);
    }

    /// <summary>Digest of one tensor's dtype, shape and values.</summary>
    public static string Digest(Tensor t)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Append(h, t);
        return Finish(h);
    }

    /// <summary>Digest of a file's bytes; "missing" when there is no such file (the run then fails on its own, with its own message).</summary>
    public static string FileDigest(string path)
    {
        if (!File.Exists(path)) return "missing";
        using var s = File.OpenRead(path);
        return DigestPrefix + Convert.ToHexStringLower(SHA256.HashData(s));
    }

    /// <summary>
    /// One digest for data sharded over ranks: the digests of all ranks' shards, in rank order. Every rank must call it.
    /// A digest is sent as its 32 bytes, one per double (exact).
    /// </summary>
    public static string AcrossRanks(IProcessGroup group, string digest)
    {
        if (group.Size == 1) return digest;
        var bytes = Convert.FromHexString(digest[DigestPrefix.Length..]);
        var all = group.AllGather(bytes.Select(b => (double)b).ToArray());
        return DigestPrefix + Convert.ToHexStringLower(SHA256.HashData(all.Select(d => (byte)d).ToArray()));
    }

    static void AppendText(IncrementalHash h, string s) => h.AppendData(Encoding.UTF8.GetBytes(s));

    static void Append(IncrementalHash h, Tensor t)
    {
        AppendText(h, $"{t.dtype}[{string.Join(",", t.shape)}]\n");
        using var scope = NewDisposeScope();
        var flat = t.detach().cpu().contiguous().reshape(-1);
        // In chunks of elements: a span holds at most 2^31 − 1 bytes.
        long chunk = (1L << 30) / Math.Max(1, flat.element_size());
        for (long start = 0; start < flat.shape[0]; start += chunk)
            h.AppendData(flat.narrow(0, start, Math.Min(chunk, flat.shape[0] - start)).bytes);
    }

    static string Finish(IncrementalHash h) => DigestPrefix + Convert.ToHexStringLower(h.GetHashAndReset());
}
