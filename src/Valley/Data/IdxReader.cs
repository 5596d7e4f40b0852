using System.Buffers.Binary;
using System.IO.Compression;

namespace Valley.Data;

/// <summary>
/// Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.), gzip-compressed or raw.
/// Header: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian int32.
/// Every malformed file gives a <see cref="DataException"/> naming the file.
/// </summary>
internal static class IdxReader
{
    /// <summary>The content of an IDX file: its dimensions and its values: bytes for uint8 files, floats for every other type.</summary>
    public sealed record IdxArray(int[] Shape, byte[]? Bytes, float[]? Floats)
    {
        public long Count => Shape.Length == 0 ? 0 : Shape[0];
        public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
    }

    const long MaxElements = 1L << 31;

    public static IdxArray Read(string path) => Read(path, AvailableMemory());

    /// <summary>Read with a memory budget in bytes (tests pass a small one; <see cref="Read(string)"/> uses the machine's).</summary>
    internal static IdxArray Read(string path, long memoryBudget)
    {
        if (!File.Exists(path)) throw new DataException(path, Directory.Exists(path) ? "is a folder, expected an IDX file" : "file not found");
        try
        {
            using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
            Span<byte> magic = stackalloc byte[2];
            bool gzip = file.ReadAtLeast(magic, 2, throwOnEndOfStream: false) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
            file.Position = 0;
            if (!gzip) return Read(path, file, file.Length, memoryBudget);
            using var gz = new GZipStream(file, CompressionMode.Decompress);
            return Read(path, gz, null, memoryBudget);
        }
        catch (InvalidDataException e) { throw new DataException(path, $"corrupt gzip data ({e.Message})", e); }
        catch (EndOfStreamException e) { throw new DataException(path, "truncated gzip data", e); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataException(path, $"cannot read: {e.Message}", e); }
    }

    /// <summary>Parse the bytes of an uncompressed IDX file.</summary>
    internal static IdxArray Parse(string path, byte[] raw) => Read(path, new MemoryStream(raw, writable: false), raw.Length, AvailableMemory());

    /// <summary>
    /// What the garbage collector may use on this machine (or under its container's limit). A header's size is checked against
    /// it before anything is allocated, so that a small file declaring gigabytes is refused instead of exhausting memory.
    /// </summary>
    static long AvailableMemory() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes is > 0 and var m ? m : long.MaxValue;

    /// <summary>
    /// Read the header, check the size it declares, then exactly that many bytes of values, never more: a decompressed
    /// stream can be far longer than its file (<paramref name="fileLength"/> is null then).
    /// </summary>
    static IdxArray Read(string path, Stream s, long? fileLength, long memoryBudget)
    {
        string source = fileLength is null ? "the decompressed data has" : "the file has";
        Span<byte> head = stackalloc byte[4];
        int got = s.ReadAtLeast(head, 4, throwOnEndOfStream: false);
        if (got == 0) throw new DataException(path, "empty file");
        if (got < 4) throw new DataException(path, $"too short for an IDX header ({got} bytes)");
        if (head[0] != 0 || head[1] != 0)
            throw new DataException(path, $"wrong magic number 0x{head[0]:x2}{head[1]:x2}{head[2]:x2}{head[3]:x2}: not an IDX file");
        byte type = head[2];
        int ndim = head[3];
        int elemSize = type switch { 0x08 => 1, 0x09 => 1, 0x0B => 2, 0x0C => 4, 0x0D => 4, 0x0E => 8, _ => 0 };
        if (elemSize == 0) throw new DataException(path, $"unknown IDX element type 0x{type:x2}");
        if (ndim < 1 || ndim > 4) throw new DataException(path, $"unsupported number of dimensions {ndim} (expected 1 to 4)");
        int header = 4 + 4 * ndim;
        Span<byte> dims = stackalloc byte[4 * ndim];
        got = s.ReadAtLeast(dims, dims.Length, throwOnEndOfStream: false);
        if (got < dims.Length) throw new DataException(path, $"truncated header ({4 + got} bytes, need {header})");
        var shape = new int[ndim];
        long count = 1;
        for (int i = 0; i < ndim; i++)
        {
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(dims.Slice(4 * i, 4));
            if (shape[i] <= 0) throw new DataException(path, $"dimension {i} is {shape[i]}, must be positive");
            count *= shape[i]; // at most 2^31 · (2^31 − 1) before the check: no overflow
            if (count > MaxElements) throw new DataException(path, "declares more than 2^31 elements");
        }
        string declared = string.Join("×", shape);
        long bodyBytes = count * elemSize;
        long expected = header + bodyBytes;
        if (fileLength < expected)
            throw new DataException(path, $"truncated: header declares {declared} values ({expected} bytes) but {source} {fileLength} bytes");
        if (fileLength > expected)
            throw new DataException(path, $"{fileLength - expected} bytes of trailing data after the {declared} values declared in the header");
        CheckFits(path, declared, bodyBytes, count, memoryBudget);
        // Not zeroed: the pages of a header that overstates a truncated file are never touched.
        var body = GC.AllocateUninitializedArray<byte>((int)bodyBytes);
        got = s.ReadAtLeast(body, body.Length, throwOnEndOfStream: false);
        if (got < body.Length)
            throw new DataException(path, $"truncated: header declares {declared} values ({expected} bytes) but {source} {header + got} bytes");
        if (s.ReadByte() >= 0) throw new DataException(path, $"trailing data after the {declared} values declared in the header");
        if (type == 0x08) return new IdxArray(shape, body, null);
        var floats = new float[count];
        for (long i = 0; i < count; i++)
        {
            var v = body.AsSpan((int)(i * elemSize), elemSize);
            floats[i] = type switch
            {
                0x09 => (sbyte)v[0],
                0x0B => BinaryPrimitives.ReadInt16BigEndian(v),
                0x0C => BinaryPrimitives.ReadInt32BigEndian(v),
                0x0D => BinaryPrimitives.ReadSingleBigEndian(v),
                _ => (float)BinaryPrimitives.ReadDoubleBigEndian(v),
            };
            if (!float.IsFinite(floats[i])) throw new DataException(path, $"value {i} is not finite ({floats[i]})");
        }
        return new IdxArray(shape, null, floats);
    }

    /// <summary>Refuse a declared size that one .NET array cannot hold or that would not fit in memory once loaded.</summary>
    static void CheckFits(string path, string declared, long bodyBytes, long count, long memoryBudget)
    {
        if (bodyBytes > Array.MaxLength)
            throw new DataException(path, $"header declares {declared} values ({bodyBytes} bytes), more than the {Array.MaxLength} bytes one file can hold here");
        // The raw values and the float32 tensor they become are in memory together.
        long needed = bodyBytes + 4 * count;
        if (needed > memoryBudget)
            throw new DataException(path, $"header declares {declared} values, which need {Size(needed)} to load; {Size(memoryBudget)} of memory is available");
    }

    static string Size(long bytes) => bytes >= 1e9 ? FormattableString.Invariant($"{bytes / 1e9:0.#} GB") : FormattableString.Invariant($"{bytes / 1e6:0.#} MB");

    /// <summary>Write a uint8 IDX file (optionally gzip-compressed); used by tests and tools.</summary>
    public static void WriteBytes(string path, int[] shape, byte[] values, bool gzip)
    {
        using var ms = new MemoryStream();
        ms.Write([0, 0, 0x08, (byte)shape.Length]);
        Span<byte> b = stackalloc byte[4];
        foreach (var d in shape) { BinaryPrimitives.WriteInt32BigEndian(b, d); ms.Write(b); }
        ms.Write(values);
        var bytes = ms.ToArray();
        if (gzip)
        {
            using var outMs = new MemoryStream();
            using (var gz = new GZipStream(outMs, CompressionLevel.Fastest, leaveOpen: true)) gz.Write(bytes);
            bytes = outMs.ToArray();
        }
        File.WriteAllBytes(path, bytes);
    }
}
