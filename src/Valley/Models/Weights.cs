using System.Text;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>Weight file formats Valley reads and writes.</summary>
public enum WeightsFormat
{
    /// <summary>TorchSharp's own format (<c>Module.save</c>), <c>.dat</c>.</summary>
    TorchSharp,
    /// <summary>PyTorch <c>torch.save(model.state_dict())</c>, <c>.pt</c>/<c>.pth</c>/<c>.bin</c> (read by <see cref="PyTorchStateDict"/>, written by TorchSharp.PyBridge).</summary>
    PyTorch,
    /// <summary>Hugging Face <c>.safetensors</c> (via TorchSharp.PyBridge).</summary>
    Safetensors,
}

/// <summary>
/// Loads and saves model weights. Loading reads the whole file into a name → tensor dictionary first and
/// checks it against the model (names, shapes, finite values) before anything is copied, because the
/// underlying loaders accept files whose shapes do not match (docs/design.md §2). PyTorch pickles are read by
/// <see cref="PyTorchStateDict"/>, which builds tensors only; anything else is refused with a clear error.
/// Saving is atomic (temporary file, then rename).
/// </summary>
public static class Weights
{
    /// <summary>The format a weights file's extension names (.dat, .pt/.pth/.bin, .safetensors).</summary>
    public static WeightsFormat FormatOf(string path)
    {
        var ext = System.IO.Path.GetExtension(path).ToLowerInvariant();
        return ext switch
        {
            ".dat" => WeightsFormat.TorchSharp,
            ".pt" or ".pth" or ".bin" => WeightsFormat.PyTorch,
            ".safetensors" => WeightsFormat.Safetensors,
            _ => throw new WeightsException(path, $"unknown weights format '{ext}' (use .dat, .pt/.pth/.bin or .safetensors)"),
        };
    }

    /// <summary>Save the model's state (parameters and buffers) in the format its extension names.</summary>
    public static void Save(nn.Module model, string path)
    {
        var format = FormatOf(path);
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        // AtomicFile's temporary: its first use in a folder also removes what killed processes left there (a run killed while
        // writing a checkpoint would otherwise leave its temporary behind for good).
        var tmp = IO.AtomicFile.Temporary(System.IO.Path.GetFullPath(path));
        try
        {
            using (var fs = File.Create(tmp))
            {
                switch (format)
                {
                    case WeightsFormat.TorchSharp: model.save(fs); break;
                    case WeightsFormat.PyTorch: model.save_py(fs, leaveOpen: true); break;
                    default: model.save_safetensors(fs, leaveOpen: true); break;
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(tmp);
            throw new WeightsException(path, $"cannot write: {e.Message}", e);
        }
    }

    /// <summary>
    /// Load weights into <paramref name="model"/> after checking every name and shape; on any mismatch nothing
    /// is changed and the error lists all mismatches.
    /// </summary>
    public static void Load(nn.Module model, string path)
    {
        var loaded = ReadStateDict(path);
        try
        {
            var target = model.state_dict();
            var problems = new List<string>();
            foreach (var (name, t) in target)
            {
                if (!loaded.TryGetValue(name, out var src))
                {
                    if (!name.EndsWith("num_batches_tracked", StringComparison.Ordinal)) problems.Add($"missing '{name}' [{Shape(t)}]");
                    continue;
                }
                if (!src.shape.SequenceEqual(t.shape)) problems.Add($"'{name}' has shape [{Shape(src)}], the model needs [{Shape(t)}]");
                // copy_ would turn booleans, integers and complex numbers into weights without a word.
                else if (t.is_floating_point() && !src.is_floating_point())
                    problems.Add($"'{name}' holds {src.dtype} values, the model needs floating-point ({t.dtype}) weights");
            }
            foreach (var name in loaded.Keys.Where(k => !target.ContainsKey(k)))
                problems.Add($"unexpected '{name}' [{Shape(loaded[name])}]");
            if (problems.Count > 0)
                throw new WeightsException(path, $"does not match the model ({problems.Count} mismatch{(problems.Count > 1 ? "es" : "")}): {string.Join("; ", problems.Take(12))}{(problems.Count > 12 ? "; ..." : "")}");
            foreach (var (name, src) in loaded)
            {
                if (src.is_floating_point() && !isfinite(src).all().ToBoolean())
                    throw new WeightsException(path, $"'{name}' contains NaN or infinite values");
            }
            using var _ = no_grad();
            foreach (var (name, t) in target)
                if (loaded.TryGetValue(name, out var src)) t.copy_(src.to(t.dtype, t.device));
        }
        finally
        {
            foreach (var t in loaded.Values) t.Dispose();
        }
    }

    /// <summary>Read a weights file into a name → tensor dictionary (the caller disposes the tensors).</summary>
    public static Dictionary<string, Tensor> ReadStateDict(string path)
    {
        // A TorchScript archive's own weights (e.g. the other end of an interpolation), whatever its extension.
        if (TorchScriptModel.IsArchive(path))
        {
            using var archive = TorchScriptModel.Load(path);
            using var _ = no_grad();
            return archive.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().clone());
        }
        var format = FormatOf(path);
        if (!File.Exists(path)) throw new WeightsException(path, "file not found");
        if (new FileInfo(path).Length == 0) throw new WeightsException(path, "empty file");
        try
        {
            return format switch
            {
                WeightsFormat.TorchSharp => ReadDat(path),
                WeightsFormat.PyTorch => PyTorchStateDict.Read(path),
                _ => ReadSafetensors(path),
            };
        }
        catch (ValleyException) { throw; }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var what = format switch
            {
                WeightsFormat.PyTorch => "not a PyTorch state_dict file (Valley loads only tensor dictionaries saved with torch.save(model.state_dict()); pickled code and other objects are refused)",
                WeightsFormat.Safetensors => "not a valid .safetensors file",
                _ => "not a valid TorchSharp .dat weights file",
            };
            throw new WeightsException(path, $"{what}: {FirstLine(e.Message)}", e);
        }
    }

    /// <summary>
    /// Checks a .safetensors file's layout before PyBridge reads it: an 8-byte little-endian header length, a JSON header
    /// within the file, and every tensor's byte range inside the data, matching its dtype and shape, and not overlapping
    /// another's. A corrupt header would otherwise ask for gigabytes of memory.
    /// </summary>
    internal static Dictionary<string, Tensor> ReadSafetensors(string path)
    {
        long fileLength = new FileInfo(path).Length;
        using (var fs = File.OpenRead(path))
        {
            var lenBytes = new byte[8];
            if (fs.Read(lenBytes, 0, 8) != 8) throw new WeightsException(path, "truncated .safetensors header");
            ulong n = BitConverter.ToUInt64(lenBytes);
            if (n == 0 || n > 100_000_000 || 8 + (long)n > fileLength) throw new WeightsException(path, $"corrupt .safetensors header length {n} for a file of {fileLength} bytes");
            var header = new byte[n];
            fs.ReadExactly(header);
            long dataLength = fileLength - 8 - (long)n;
            System.Text.Json.JsonDocument doc;
            try { doc = System.Text.Json.JsonDocument.Parse(header); }
            catch (System.Text.Json.JsonException e) { throw new WeightsException(path, "corrupt .safetensors header (not JSON)", e); }
            using var _ = doc;
            if (doc.RootElement.ValueKind != System.Text.Json.JsonValueKind.Object) throw new WeightsException(path, "corrupt .safetensors header (not an object)");
            var ranges = new List<(long Start, long End, string Name)>();
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__") continue;
                var v = entry.Value;
                try
                {
                    int size = v.GetProperty("dtype").GetString() switch
                    {
                        "F64" or "I64" or "U64" => 8, "F32" or "I32" or "U32" => 4, "F16" or "BF16" or "I16" or "U16" => 2, "I8" or "U8" or "BOOL" => 1,
                        var t => throw new WeightsException(path, $"tensor '{entry.Name}': unsupported dtype '{t}'"),
                    };
                    long numel = 1;
                    foreach (var d in v.GetProperty("shape").EnumerateArray())
                    {
                        long dim = d.GetInt64();
                        if (dim < 0 || dim > dataLength) throw new WeightsException(path, $"tensor '{entry.Name}': corrupt shape");
                        numel *= dim;
                        if (numel > dataLength) throw new WeightsException(path, $"tensor '{entry.Name}': shape larger than the file");
                    }
                    var offsets = v.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt64()).ToArray();
                    if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataLength || offsets[1] - offsets[0] != numel * size)
                        throw new WeightsException(path, $"tensor '{entry.Name}': data offsets do not match its shape or lie outside the file");
                    if (offsets[1] > offsets[0]) ranges.Add((offsets[0], offsets[1], entry.Name));
                }
                catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException)
                {
                    throw new WeightsException(path, $"tensor '{entry.Name}': corrupt .safetensors entry", e);
                }
            }
            // Overlapping ranges would make one tensor silently read another's bytes.
            ranges.Sort();
            for (int i = 1; i < ranges.Count; i++)
                if (ranges[i].Start < ranges[i - 1].End)
                    throw new WeightsException(path, $"tensors '{ranges[i - 1].Name}' (bytes {ranges[i - 1].Start}–{ranges[i - 1].End}) and '{ranges[i].Name}' (bytes {ranges[i].Start}–{ranges[i].End}) overlap in the data");
        }
        return Safetensors.LoadStateDict(path);
    }

    /// <summary>
    /// TorchSharp's .dat layout: LEB128 count, then per entry a length-prefixed UTF-8 name, LEB128 dtype,
    /// LEB128 rank, LEB128 dims, raw little-endian data. Parsed here with bounds checks so that a corrupt
    /// file gives an error instead of a huge allocation or a native fault.
    /// </summary>
    static Dictionary<string, Tensor> ReadDat(string path)
    {
        var bytes = File.ReadAllBytes(path);
        using var reader = new BinaryReader(new MemoryStream(bytes), Encoding.UTF8);
        var result = new Dictionary<string, Tensor>();
        try
        {
            long count = Leb(reader, path);
            if (count < 0 || count > 1_000_000) throw new WeightsException(path, $"corrupt header (entry count {count})");
            for (long i = 0; i < count; i++)
            {
                string name = reader.ReadString();
                var dtype = (ScalarType)Leb(reader, path);
                int elem = dtype switch
                {
                    ScalarType.Float32 or ScalarType.Int32 => 4,
                    ScalarType.Float64 or ScalarType.Int64 => 8,
                    ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
                    ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
                    _ => throw new WeightsException(path, $"entry '{name}': unsupported dtype code {(int)dtype}"),
                };
                long rank = Leb(reader, path);
                if (rank > 8) throw new WeightsException(path, $"entry '{name}': corrupt rank {rank}");
                var shape = new long[rank];
                long numel = 1;
                for (int d = 0; d < rank; d++)
                {
                    shape[d] = Leb(reader, path);
                    numel *= shape[d];
                    if (shape[d] < 0 || numel * elem > bytes.Length) throw new WeightsException(path, $"entry '{name}': shape larger than the file (truncated or corrupt)");
                }
                var data = reader.ReadBytes((int)(numel * elem));
                if (data.Length != numel * elem) throw new WeightsException(path, $"entry '{name}': truncated data");
                var t = empty(shape, dtype);
                data.AsSpan().CopyTo(t.bytes);
                result[name] = t;
            }
            if (reader.BaseStream.Position != bytes.Length)
                throw new WeightsException(path, $"{bytes.Length - reader.BaseStream.Position} bytes of trailing data (corrupt file)");
            return result;
        }
        catch (Exception e) when (e is EndOfStreamException or FormatException or DecoderFallbackException)
        {
            foreach (var v in result.Values) v.Dispose();
            throw new WeightsException(path, "truncated or corrupt TorchSharp .dat file", e);
        }
        catch
        {
            foreach (var v in result.Values) v.Dispose();
            throw;
        }
    }

    static long Leb(BinaryReader r, string path)
    {
        long result = 0;
        for (int i = 0; ; i++)
        {
            if (i > 9) throw new WeightsException(path, "corrupt variable-length integer");
            long b = r.ReadByte();
            result |= (b & 0x7f) << (7 * i);
            if ((b & 0x80) == 0) return result;
        }
    }

    static string Shape(Tensor t) => string.Join("×", t.shape);
    static string FirstLine(string s) => s.Split('\n')[0].Trim();
}
